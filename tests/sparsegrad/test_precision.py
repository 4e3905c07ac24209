"""Mixed precision and low-precision weights: every method under bf16 autocast (the path a GPU worker runs,
emulated on CPU), bf16 base weights that lose no update, `.to()` round trips, deltas across dtypes.

Each test runs on CPU and, with the `gpu` marker, on CUDA where one is present (`pytest -m gpu`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import sparsegrad as sg
from tests.sparsegrad.test_minilm_energy import SST2, _minilm_dir
from tests.sparsegrad.tiny import tiny_batches, tiny_model

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")],
)
DEVICES = ["cpu", CUDA]
METHODS = ["sparsegrad", "sparsegrad-fixed", "sparsegrad-adam", "meprop", "lora", "full"]


def _on(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _prepare(
    model: nn.Module, method: str, batches: list[dict[str, Any]], lr: float, device: str
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """`model` (already on `device`) with `method` applied, and its optimizer."""
    if method == "full":
        return model, torch.optim.AdamW(sg.enable_full_finetuning(model), lr=lr)
    if method == "lora":
        peft_model = sg.apply_lora(model, rank=2)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        return peft_model, torch.optim.AdamW(trainable, lr=lr)
    cfg = sg.SparseGradConfig(
        density=0.05,
        basis_steps=2,
        support="fixed" if method == "sparsegrad-fixed" else "dynamic",
        selection="adam" if method == "sparsegrad-adam" else "gradient",
    )
    if method == "meprop":
        sg.apply_meprop(model, cfg)
    else:
        with torch.autocast(device, dtype=torch.bfloat16):
            basis = sg.compute_basis(model, [_on(b, device) for b in batches[:2]], cfg)
        sg.inject(model, cfg, basis)
    return model, sg.make_optimizer(model, lr=lr)


def _train_steps(
    model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, Any], device: str, steps: int
) -> list[float]:
    losses = []
    for _ in range(steps):
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(**_on(batch, device)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_every_method_trains_under_bf16_autocast(kind: str, method: str, device: str) -> None:
    batches = tiny_batches(kind, 3)
    model, opt = _prepare(tiny_model(kind).to(device), method, batches, 1e-3, device)
    losses = _train_steps(model, opt, batches[2], device, 10)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


@pytest.mark.realmodel
@pytest.mark.skipif(_minilm_dir() is None or not SST2.is_file(), reason="needs all-MiniLM-L6-v2, SST-2")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_minilm_under_bf16_autocast(method: str, device: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    path = _minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).to(device)
    with SST2.open() as fh:
        rows = [json.loads(next(fh)) for _ in range(24)]
    batches = []
    for i in range(0, 24, 8):
        texts = [r["text"] for r in rows[i : i + 8]]
        enc = tok(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
        batches.append({**enc, "labels": torch.tensor([r["label"] for r in rows[i : i + 8]])})
    lr = 1e-4 if method == "full" else 1e-3
    model, opt = _prepare(model, method, batches, lr, device)
    model.eval()  # dropout off: the loss on one batch must fall
    losses = _train_steps(model, opt, batches[2], device, 10)
    assert losses[-1] < losses[0], losses


def _bf16_trained(
    support: str, lr: float, device: str
) -> tuple[nn.Module, dict[str, torch.Tensor], list[dict[str, Any]], sg.SparseGradAdamW]:
    model = tiny_model("llama").to(device, torch.bfloat16)
    batches = tiny_batches("llama", 6)
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=2, support=support)  # type: ignore[arg-type]
    with torch.autocast(device, dtype=torch.bfloat16):
        basis = sg.compute_basis(model, [_on(b, device) for b in batches[:2]], cfg)
    sg.inject(model, cfg, basis)
    base = {n: m.weight.detach().clone() for n, m in sg.sparse_layers(model).items()}
    opt = sg.make_optimizer(model, lr=lr)
    for i in range(10):
        _train_steps(model, opt, batches[i % 4], device, 1)
    return model, base, batches, opt  # type: ignore[return-value]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("support", ["dynamic", "fixed"])
@pytest.mark.parametrize("lr", [2e-5, 1e-4])
@pytest.mark.parametrize("value_dtype", ["float32", "bfloat16"])
def test_bf16_weights_lose_no_update(
    value_dtype: str, lr: float, support: str, device: str, tmp_path: Path
) -> None:
    """A bf16 base trained at a realistic rate: the frozen weight never changes (ΔW runs beside it), and the
    trained model merged equals the base plus the saved delta merged once, within 1% of the update's norm
    (bit for bit here); its evaluation during training matches that merged model. With a bf16 delta, after
    round_delta (what the engine does before evaluating) through the side path."""
    model, base, batches, opt = _bf16_trained(support, lr, device)
    if value_dtype == "bfloat16":
        opt.round_delta(torch.bfloat16)
        for layer in sg.sparse_layers(model).values():
            assert torch.equal(layer.delta()[1], layer.delta()[1].bfloat16().float())
    layers = sg.sparse_layers(model)
    for name, layer in layers.items():
        assert layer.weight.dtype == torch.bfloat16 and torch.equal(layer.weight, base[name]), name
        assert layer.P is not None and layer.P.dtype == torch.float32
    update = torch.stack([m.get_delta_weight().norm() for m in layers.values()]).norm()
    assert update > 0
    model.eval()
    held_out = _on(batches[5], device)
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        trained_loss = float(model(**held_out).loss)
    sg.save_delta(model, tmp_path / "delta", value_dtype=value_dtype)
    merged = sg.merge(model)
    fresh = sg.load_delta(tiny_model("llama").to(device, torch.bfloat16), tmp_path / "delta")
    weights = [(merged.get_submodule(n).weight, fresh.get_submodule(n).weight) for n in base]
    gap = torch.stack([(a.float() - b.float()).norm() for a, b in weights]).norm()
    assert gap <= 0.01 * update
    # the merged model moved by the update, as far as one bf16 rounding lets it
    moved = torch.stack([(fresh.get_submodule(n).weight.float() - w.float()).norm() for n, w in base.items()])
    assert moved.norm() > 0
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        merged_loss = float(fresh.eval()(**held_out).loss)
    assert merged_loss == pytest.approx(trained_loss, rel=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_injected_model_survives_to_round_trips(device: str) -> None:
    model = tiny_model("llama")
    batches = tiny_batches("llama", 5)
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=2)
    sg.inject(model, cfg, sg.compute_basis(model, batches[:2], cfg))
    opt = sg.make_optimizer(model, lr=1e-3)
    _train_steps(model, opt, batches[2], "cpu", 3)
    model.eval()
    with torch.no_grad():
        reference = model(**batches[4]).logits
    layer = model.model.layers[0].mlp.up_proj
    delta = layer.get_delta_weight().clone()

    model.to(torch.float64)
    assert layer.coef.stride() == (0, 0) and layer.coef.dtype == torch.float64  # still a placeholder
    assert layer.P is not None and layer.P.dtype == torch.float64
    assert layer.P is model.model.layers[1].mlp.up_proj.P  # bases stay shared
    model.to(device, torch.bfloat16)
    assert layer.coef.stride() == (0, 0) and layer.coef.untyped_storage().nbytes() <= 8
    assert layer.P.dtype == torch.float32 and layer.weight.dtype == torch.bfloat16
    assert layer.side is not None  # ΔW left the bf16 weight for the side path
    torch.testing.assert_close(layer.get_delta_weight().cpu(), delta.float(), rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        low = model(**_on(batches[4], device)).logits.float().cpu()
    torch.testing.assert_close(low, reference.float(), atol=0.05, rtol=0.05)
    model.train()
    opt = sg.make_optimizer(model, lr=1e-3)
    _train_steps(model, opt, batches[3], device, 2)  # the optimizer works on the bf16 model
    model.to("cpu", torch.float32)
    assert layer.side is None and layer.weight.dtype == torch.float32 and layer.coef.stride() == (0, 0)


def test_delta_loads_into_the_same_base_in_another_dtype(tmp_path: Path) -> None:
    model = tiny_model("llama")
    batches = tiny_batches("llama", 3)
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=2)
    sg.inject(model, cfg, sg.compute_basis(model, batches[:2], cfg))
    _train_steps(model, sg.make_optimizer(model, lr=1e-3), batches[2], "cpu", 2)
    sg.save_delta(model, tmp_path)
    into_bf16 = sg.load_delta(tiny_model("llama").to(torch.bfloat16), tmp_path)
    merged = sg.merge(model)
    name = "model.layers.0.mlp.up_proj.weight"
    # base rounded to bf16, plus ΔW, rounded once more: within two bf16 roundings of the float32 result
    torch.testing.assert_close(
        into_bf16.get_parameter(name).float(), merged.get_parameter(name), rtol=2**-7, atol=1e-4
    )
    other = tiny_model("llama", seed=1).to(torch.bfloat16)
    with pytest.raises(sg.DeltaMismatch, match=r"made on float32 weights, these are bfloat16"):
        sg.load_delta(other, tmp_path)
