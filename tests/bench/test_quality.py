"""The quality benchmark's paired comparison and target verdict (pure functions, no training)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.quality import paired, verdict


def rows(**acc: list[float]) -> list[dict[str, Any]]:
    return [
        {"method": m, "seed": seed, "accuracy": a / 100}
        for m, values in acc.items()
        for seed, a in enumerate(values)
    ]


def test_paired_differences_use_only_shared_seeds() -> None:
    got = paired(rows(sparsegrad=[82.0, 81.0, 83.0], lora=[81.0, 82.0]), "sparsegrad", "lora")
    assert got is not None
    assert got["seeds"] == [0, 1] and got["wins"] == 1
    assert got["mean"] == pytest.approx(0.0) and got["sem"] == pytest.approx(1.0)
    assert paired(rows(sparsegrad=[82.0]), "sparsegrad", "lora") is None


def test_verdict_needs_both_comparisons_and_both_margins() -> None:
    met = rows(sparsegrad=[82.0, 82.2], lora=[81.9, 82.2], full=[82.4, 82.6])
    assert verdict(met).endswith("target (sparsegrad >= lora, within 0.5 of full): met\n")
    below_full = rows(sparsegrad=[82.0, 82.2], lora=[81.9, 82.2], full=[82.6, 82.7])
    assert verdict(below_full).endswith(": missed\n")
    below_lora = rows(sparsegrad=[82.0, 82.2], lora=[82.1, 82.2], full=[82.0, 82.2])
    assert verdict(below_lora).endswith(": missed\n")
    only_lora = verdict(rows(sparsegrad=[82.0], lora=[81.0]))
    assert "sparsegrad - lora: +1.00" in only_lora and "met" not in only_lora and "missed" not in only_lora
