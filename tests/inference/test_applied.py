"""Fine-tunes applied in place on a shared base (training.serving.applied): each equals its merged copy, the
base comes back bit for bit, requests of two fine-tunes interleaved across threads each get their own
model, and a request never overtakes an earlier one of another model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from tests.inference.test_shared_base import chat_deltas, merged_logits, models_dir  # noqa: F401 (fixtures)
from training.models import load_model, registry_entry
from training.serving.adapters import read_adapter
from training.serving.applied import AppliedBase, exact_copy
from training.serving.models import ModelCache

IDS = torch.tensor([[3, 7, 11, 19, 23, 5, 9]])


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("form", ["own", "shared"])
def test_an_applied_fine_tune_equals_its_merged_copy_and_the_base_comes_back_bit_for_bit(
    models_dir: Path,  # noqa: F811
    chat_deltas: list[Path],  # noqa: F811
    form: str,
) -> None:
    model = load_model(registry_entry("tiny-llama", models_dir), "causal_lm", None, False).eval()
    pristine = _state(model)
    base = AppliedBase(model)
    adapters = [read_adapter(d, f"ft:{i}", form=form) for i, d in enumerate(chat_deltas)]
    for adapter in adapters:
        base.attach(adapter)
    base_logits = merged_logits(models_dir, None, IDS)
    for _ in range(2):  # a -> b -> base -> a -> b -> base: every swap exact
        for adapter, delta in zip(adapters, chat_deltas, strict=True):
            with torch.no_grad(), base.use(adapter):
                applied = model(input_ids=IDS).logits
            reference = merged_logits(models_dir, delta, IDS)
            assert not torch.allclose(reference, base_logits, atol=1e-4)  # the fine-tune changed the model
            torch.testing.assert_close(applied, reference, atol=1e-5, rtol=1e-5)
        with torch.no_grad(), base.use(None):
            torch.testing.assert_close(model(input_ids=IDS).logits, base_logits, atol=0, rtol=0)
            after = model.state_dict()
            assert all(torch.equal(after[k], v) for k, v in pristine.items())
    assert base.swaps == 6


def test_the_pristine_copy_is_narrow_only_when_exact() -> None:
    exact = torch.tensor([1.0, -0.5, 0.0, 2.0**100])  # bf16 values stored in float32
    assert exact_copy(exact).dtype == torch.bfloat16
    inexact = torch.tensor([1.0, 1.0 + 2**-20])
    assert exact_copy(inexact).dtype == torch.float32
    assert torch.equal(exact_copy(inexact), inexact)


def test_interleaved_requests_of_two_fine_tunes_and_the_base_each_get_their_own_model(
    models_dir: Path,  # noqa: F811
    chat_deltas: list[Path],  # noqa: F811
) -> None:
    cache = ModelCache(models_dir, budget=1 << 30)
    served = [cache.serve_base("tiny-llama", "causal_lm")] + [
        cache.serve_delta(f"ft:{i}", "tiny-llama", "causal_lm", d) for i, d in enumerate(chat_deltas)
    ]
    references = [merged_logits(models_dir, d, IDS) for d in [None, *chat_deltas]]
    results: dict[int, list[torch.Tensor]] = {i: [] for i in range(9)}
    start = threading.Barrier(9)

    def request(i: int) -> None:
        s = served[i % 3]
        start.wait()
        for _ in range(3):
            with torch.no_grad(), s.use():
                results[i].append(s.model(input_ids=IDS).logits)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)  # no deadlock
    for i, outs in results.items():
        assert len(outs) == 3
        for out in outs:
            torch.testing.assert_close(out, references[i % 3], atol=1e-5, rtol=1e-5)
    base = served[0].base
    assert isinstance(base, AppliedBase) and base.swaps >= 2


def test_a_request_waits_for_the_running_model_and_is_not_overtaken(
    models_dir: Path,  # noqa: F811
    chat_deltas: list[Path],  # noqa: F811
) -> None:
    """A runs fine-tune 0; B asks for fine-tune 1 and waits; C asks for fine-tune 0 after B: C must not
    join A's model ahead of B. Then B runs alone, and C after it."""
    cache = ModelCache(models_dir, budget=1 << 30)
    a, b = (cache.serve_delta(f"ft:{i}", "tiny-llama", "causal_lm", d) for i, d in enumerate(chat_deltas))
    base = a.base
    assert isinstance(base, AppliedBase)
    order: list[str] = []
    release = threading.Event()

    def run(name: str, s: object, hold: bool) -> None:
        with s.use():  # type: ignore[attr-defined]
            order.append(name)
            if hold:
                release.wait(60)

    def queued(n: int) -> None:  # until n requests wait (a condition, polled; no timing asserted)
        for _ in range(10_000):
            if len(base._queue) == n:
                return
            threading.Event().wait(0.001)
        raise AssertionError(f"{n} requests never queued")

    ta = threading.Thread(target=run, args=("A", a, True))
    ta.start()
    while not order:
        threading.Event().wait(0.001)
    tb = threading.Thread(target=run, args=("B", b, False))
    tb.start()
    queued(1)
    tc = threading.Thread(target=run, args=("C", a, False))
    tc.start()
    queued(2)
    assert order == ["A"]
    release.set()
    for t in (ta, tb, tc):
        t.join(timeout=60)
    assert order == ["A", "B", "C"]
    assert base.applied is a.adapter


def test_a_bf16_base_takes_the_fine_tune_rounded_once_and_comes_back_bit_for_bit(
    models_dir: Path,  # noqa: F811
    chat_deltas: list[Path],  # noqa: F811
) -> None:
    """The path for weights that are not float32: pristine + ΔW summed in float32, rounded once to bf16,
    as `sparsegrad.load_delta` merges into a bf16 model."""
    import sparsegrad as sg

    def bf16_model() -> torch.nn.Module:
        entry = registry_entry("tiny-llama", models_dir)
        return load_model(entry, "causal_lm", None, False).to(torch.bfloat16).eval()

    model = bf16_model()
    pristine = _state(model)
    base = AppliedBase(model)
    adapter = read_adapter(chat_deltas[0], "ft:0")
    base.attach(adapter)
    merged = sg.load_delta(bf16_model(), chat_deltas[0])
    with torch.no_grad(), base.use(adapter):
        weights = model.state_dict()
        for name, value in merged.state_dict().items():  # each weight within one bf16 rounding step
            torch.testing.assert_close(weights[name], value, atol=0, rtol=2**-7)
        changed = [k for k, v in pristine.items() if not torch.equal(weights[k], v)]
        assert changed
    with torch.no_grad(), base.use(None):
        after = model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in pristine.items())
