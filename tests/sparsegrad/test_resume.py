"""Exact resume: a run interrupted and restored from state dicts ends bit-identical to a straight one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsegrad as sg
from sparsegrad import layer as layer_module
from tests.sparsegrad.tiny import tiny_batches, tiny_model


def _fresh(cfg: sg.SparseGradConfig, basis: sg.Basis) -> tuple[nn.Module, sg.SparseGradAdamW]:
    model = sg.inject(tiny_model("bert"), cfg, basis)
    return model, sg.make_optimizer(model, lr=1e-2, weight_decay=0.1)


def _steps(model: nn.Module, opt: torch.optim.Optimizer, batches: list[dict]) -> None:
    model.train()
    for batch in batches:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("support", ["dynamic", "fixed"])
def test_interrupted_run_resumes_bit_identical(
    support: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # compact the ΔC log every 2 steps: the interrupted run then compacts at other steps than the straight one
    monkeypatch.setattr(layer_module, "_COMPACT_EVERY", 2)
    refresh = 2 if support == "fixed" else None
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=2, support=support, support_refresh_every=refresh)  # type: ignore[arg-type]
    batches = tiny_batches("bert", 8)
    basis = sg.compute_basis(tiny_model("bert"), batches[:2], cfg)
    basis.save(tmp_path / "basis.safetensors")

    straight, opt = _fresh(cfg, basis)
    _steps(straight, opt, batches[2:8])

    first, opt1 = _fresh(cfg, basis)
    _steps(first, opt1, batches[2:5])
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    resumed, opt2 = _fresh(cfg, sg.Basis.load(tmp_path / "basis.safetensors"))
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    assert all(st["index"].dtype == torch.int64 for st in opt2.state.values() if "index" in st)
    _steps(resumed, opt2, batches[5:8])

    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for p_a, p_b in zip(opt.state.values(), opt2.state.values(), strict=True):
        for key in p_a:
            assert torch.equal(p_a[key], p_b[key]), key


def test_checkpoint_without_the_step_counter_resumes_at_its_entries_count() -> None:
    # State saved before `global_step` existed: on a fixed support every entry is updated every step,
    # so the most-updated entry's count is the optimizer's and the resumed run matches a straight one.
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=2, support="fixed")
    batches = tiny_batches("bert", 8)
    basis = sg.compute_basis(tiny_model("bert"), batches[:2], cfg)
    straight, opt = _fresh(cfg, basis)
    _steps(straight, opt, batches[2:8])
    first, opt1 = _fresh(cfg, basis)
    _steps(first, opt1, batches[2:5])
    saved = opt1.state_dict()
    for st in saved["state"].values():
        assert st.pop("global_step", None) is not None or "index" not in st
    resumed, opt2 = _fresh(cfg, basis)
    resumed.load_state_dict(first.state_dict())
    opt2.load_state_dict(saved)
    _steps(resumed, opt2, batches[5:8])
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
