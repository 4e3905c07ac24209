"""The page's chart and metric routing, run as the browser runs them (ES modules in Chromium)."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.browser


@pytest.fixture()
def page(browser: Any, page_only_url: str) -> Any:
    page = browser.new_page(viewport={"width": 800, "height": 600})
    page.goto(page_only_url + "/")
    page.get_by_test_id("signin-button").wait_for()
    yield page
    page.close()


def test_ticks_are_round_and_cover_the_range(page: Any) -> None:
    got = page.evaluate(
        """async () => { const {ticks} = await import('/static/js/chart.js');
        return [ticks(0, 1), ticks(0.53, 0.71), ticks(0.13, 0.75, 3), ticks(0, 1000, 4), ticks(2, 2)]; }"""
    )
    assert got[0] == [0, 0.2, 0.4, 0.6, 0.8, 1]
    assert got[1] == [0.55, 0.6, 0.65, 0.7]
    assert got[2] == [0.2, 0.4, 0.6]  # 0.2 * 3 steps must not round up to a single 0.5 tick
    assert got[3] == [0, 500, 1000]  # steps of 1, 2 or 5 x 10^k only
    assert got[4] == [2]


def test_chart_counts_points_and_replaces_a_relogged_step(page: Any) -> None:
    got = page.evaluate(
        """async () => { const {LineChart} = await import('/static/js/chart.js');
        const c = document.createElement('canvas'); c.style.width = '400px'; c.style.height = '200px';
        document.body.append(c);
        const chart = new LineChart(c);
        const empty = c.dataset.points;
        chart.add('train_loss', 1, 0.7); chart.add('train_loss', 2, 0.6); chart.add('valid_loss', 2, 0.65);
        chart.add('train_loss', 2, 0.55);   // a resumed job logs step 2 again: replaced, not doubled
        chart.add('train_loss', 3, NaN);    // not a number: ignored
        chart.draw();
        const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const ink = pixels.some((v, i) => i % 4 === 3 && v);
        return [empty, c.dataset.points, c.dataset.series, chart.series.get('train_loss').points, ink]; }"""
    )
    assert got == ["0", "3", "train_loss,valid_loss", [[1, 0.7], [2, 0.55]], True]


def test_metrics_keys_go_to_the_right_chart(page: Any) -> None:
    got = page.evaluate(
        """async () => { const {chartOf} = await import('/static/js/job.js');
        return ['train_loss', 'valid_loss', 'accuracy', 'valid_f1', 'token_accuracy', 'step', 'lr', 'epoch']
          .map(chartOf); }"""
    )
    assert got == ["loss", "loss", "metric", "metric", "metric", None, None, None]


def test_train_loss_is_drawn_smoothed_over_the_faint_raw_curve(page: Any) -> None:
    got = page.evaluate(
        """async () => { const {LineChart, ema} = await import('/static/js/chart.js');
        const c = document.createElement('canvas'); c.style.width = '400px'; c.style.height = '200px';
        document.body.append(c);
        const chart = new LineChart(c, { smooth: { alpha: 0.5, match: /^train/ } });
        [[1, 1], [2, 3], [3, 1], [4, 3]].forEach(([x, y]) => chart.add('train_loss', x, y));
        chart.add('valid_loss', 2, 2); chart.add('valid_loss', 4, 2); chart.add('valid_loss', 6, 2);
        chart.draw();
        return [ema([[1, 1], [2, 3], [3, 1], [4, 3]], 0.5), c.dataset.smoothed,
                chart.series.get('train_loss').points.length]; }"""
    )
    assert got == [[[1, 1], [2, 2], [3, 1.5], [4, 2.25]], "train_loss", 4]  # raw points kept
