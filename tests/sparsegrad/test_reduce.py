"""The `reduce` hook that multi-process training plugs a collective into: simulated here with two "ranks" in
one process, each holding the other's tensors."""

from __future__ import annotations

import copy

import torch

import sparsegrad as sg
from tests.sparsegrad.tiny import tiny_batches, tiny_model


def test_summed_gram_sums_equal_one_process_on_all_batches() -> None:
    """Two ranks on one basis batch each, their Gram sums (and summed gradients) reduced, hold what one
    process computes from both batches."""
    a, b = tiny_batches("llama", 2)
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=2, support="fixed")

    def recorder(out: list[torch.Tensor]) -> sg.basis.Reduce:
        return lambda t: out.append(t.clone())

    single: list[torch.Tensor] = []
    sg.compute_basis(tiny_model("llama"), [a, b], cfg, reduce=recorder(single))
    other: list[torch.Tensor] = []
    sg.compute_basis(tiny_model("llama"), [b], cfg, reduce=recorder(other))
    pending = iter(other)
    reduced: list[torch.Tensor] = []

    def add_other(t: torch.Tensor) -> None:
        t.add_(next(pending))
        reduced.append(t.clone())

    sg.compute_basis(tiny_model("llama"), [a], cfg, reduce=add_other)
    assert len(reduced) == len(single) > 0
    for got, want in zip(reduced, single, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_averaged_coefficient_gradients_step_like_the_whole_batch() -> None:
    """Two ranks on the halves of each batch, dL/dC averaged through the hook before selection: both take the
    step one process takes on the whole batch (same support, same state, same weights)."""
    batches = tiny_batches("llama", 4, batch=4)
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=1)
    base = tiny_model("llama")
    basis = sg.compute_basis(copy.deepcopy(base), batches[:1], cfg)
    whole = sg.inject(copy.deepcopy(base), cfg, basis)
    ranks = [sg.inject(copy.deepcopy(base), cfg, basis) for _ in range(2)]
    snapshot: list[dict[str, torch.Tensor]] = [{}, {}]

    def averaging(rank: int) -> sg.basis.Reduce:
        def reduce(t: torch.Tensor) -> None:
            layers = sg.sparse_layers(ranks[rank])
            name = next(n for n, m in layers.items() if m.coef.grad is t)
            t.copy_((snapshot[0][name] + snapshot[1][name]) / 2)

        return reduce

    opt_whole = sg.make_optimizer(whole, lr=1e-3)
    opts = [sg.make_optimizer(m, lr=1e-3, reduce=averaging(r)) for r, m in enumerate(ranks)]
    for batch in batches[1:]:
        whole(**batch).loss.backward()
        opt_whole.step()
        opt_whole.zero_grad()
        for r, model in enumerate(ranks):
            half = {k: v[2 * r : 2 * r + 2] for k, v in batch.items()}
            model(**half).loss.backward()
            snapshot[r] = {n: m.coef.grad.clone() for n, m in sg.sparse_layers(model).items()}  # type: ignore[union-attr]
        for opt in opts:
            opt.step()
            opt.zero_grad()
    for name, layer in sg.sparse_layers(whole).items():
        r0, r1 = (sg.sparse_layers(m)[name] for m in ranks)
        assert torch.equal(r0.weight, r1.weight) and torch.equal(r0.delta()[0], r1.delta()[0])
        assert torch.equal(r0.delta()[0], layer.delta()[0]), name  # the same entries moved
        torch.testing.assert_close(r0.weight, layer.weight, rtol=1e-4, atol=1e-6)
