"""max_delta_density: the optimizer keeps each layer's delta (its updated entries) within the cap."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sparsegrad as sg
from sparsegrad.memory import k_of
from tests.sparsegrad.tiny import tiny_batches, tiny_model


def _train(
    steps: int, repeat: bool = False, kind: str = "bert", **cfg_kwargs: object
) -> tuple[torch.nn.Module, list[float]]:
    model = tiny_model(kind)
    batches = tiny_batches(kind, steps + 2)
    if repeat:  # one batch over and over: a loss that can fall
        batches = batches[:2] + [batches[2]] * steps
    cfg = sg.SparseGradConfig(density=0.02, basis_steps=2, train_head=False, **cfg_kwargs)  # type: ignore[arg-type]
    sg.inject(model, cfg, sg.compute_basis(model, batches[:2], cfg))
    opt = sg.make_optimizer(model, lr=1e-3)
    model.train()
    losses = []
    for batch in batches[2:]:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize(
    "extra",
    [{}, {"selection": "adam"}, {"support_block": 4.0}, {"selection": "adam", "support_block": 4.0}],
)
def test_max_delta_density_bounds_each_layers_delta(extra: dict[str, object], tmp_path: Path) -> None:
    free, _ = _train(12, **extra)
    capped, _ = _train(12, max_delta_density=0.03, **extra)
    for name, layer in sg.sparse_layers(capped).items():
        cap = k_of(layer.d_out, layer.d_in, 0.03)
        unbounded = sg.sparse_layers(free)[name].delta()[0].numel()
        assert unbounded > cap, (name, unbounded, cap)  # without the cap this run outgrows it
        assert layer.delta()[0].numel() == cap, name  # filled to the cap, then frozen
    size = sg.delta_size(capped)
    assert size.nnz == sum(k_of(m.d_out, m.d_in, 0.03) for m in sg.sparse_layers(capped).values())
    sg.save_delta(capped, tmp_path)
    assert size.bytes < (tmp_path / "sparsegrad_delta.safetensors").stat().st_size  # plus the header


def test_a_frozen_support_still_trains() -> None:
    # a causal LM (no head trains): only the MLP coefficients move; the cap (4%) is reached within two
    # steps of 2%: the later steps move only those entries, and the loss on the batch still falls
    model, losses = _train(20, repeat=True, kind="llama", max_delta_density=0.04)
    assert all(m.delta()[0].numel() <= k_of(m.d_out, m.d_in, 0.04) for m in sg.sparse_layers(model).values())
    assert losses[-1] < losses[3] - 0.005, losses  # measured: 4.582 -> 4.572


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_delta_density": 0.01}, "must be >= density"),
        ({"max_delta_density": 1.5}, "in \\(0, 1\\]"),
        ({"max_delta_density": 0.1, "support": "fixed"}, "dynamic' only"),
    ],
)
def test_bad_max_delta_density_is_refused(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        sg.SparseGradConfig(density=0.02, **kwargs)  # type: ignore[arg-type]
