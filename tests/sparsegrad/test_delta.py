"""save_delta / load_delta / merge round trips, and refusal of a mismatched base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

import sparsegrad as sg
from tests.sparsegrad.tiny import tiny_batches, tiny_model


def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def _trained(kind: str, method: str = "sparsegrad", **cfg_kwargs: object) -> nn.Module:
    model = tiny_model(kind)
    batches = tiny_batches(kind, 6)
    cfg = sg.SparseGradConfig(
        density=0.05,
        basis_steps=2,
        base_model_id=f"tiny-{kind}",
        labels=["a", "b", "c"],
        **cfg_kwargs,  # type: ignore[arg-type]
    )
    if method == "meprop":
        sg.apply_meprop(model, cfg)
    else:
        sg.inject(model, cfg, sg.compute_basis(model, batches[:2], cfg))
    opt = sg.make_optimizer(model, lr=1e-2)
    model.train()
    for batch in batches[2:]:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model


@pytest.mark.parametrize(
    ("kind", "method"),
    [("bert", "sparsegrad"), ("llama", "sparsegrad"), ("gpt2", "sparsegrad"), ("bert", "meprop")],
)
def test_save_load_merge_round_trip(kind: str, method: str, tmp_path: Path) -> None:
    extra = {"train_head": True, "train_bias": True} if kind == "gpt2" else {}
    model = _trained(kind, method, **extra)
    batch = tiny_batches(kind, 1, seed=9)[0]
    tuned = _logits(model, batch)
    base_out = _logits(tiny_model(kind), batch)
    assert (tuned - base_out).abs().max() > 1e-3  # training did change the model
    sg.save_delta(model, tmp_path, encoding="coo")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["format"] == "sparsegrad" and config["version"] == 3
    assert config["base_model_id"] == f"tiny-{kind}" and len(config["base_fingerprint"]) == 64
    assert config["target_modules"] == [t.name for t in sg.get_info(model).targets]
    assert config["labels"] == ["a", "b", "c"] and config["support"] == "dynamic"
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as f:
        first = config["target_modules"][0]
        assert f.get_tensor(f"{first}.indices").dtype == torch.int32
    loaded = sg.load_delta(tiny_model(kind), tmp_path)
    assert not any(isinstance(m, sg.SparseGradLinear) for m in loaded.modules())
    assert (_logits(loaded, batch) - tuned).abs().max().item() < 1e-4
    sg.save_delta(model, tmp_path / "dense", encoding="dense")  # ΔW per layer instead of COO + basis
    loaded = sg.load_delta(tiny_model(kind), tmp_path / "dense")
    assert (_logits(loaded, batch) - tuned).abs().max().item() < 1e-4
    merged = sg.merge(model)
    assert not any(isinstance(m, sg.SparseGradLinear) for m in merged.modules())
    assert (_logits(merged, batch) - tuned).abs().max().item() < 1e-4
    if kind == "gpt2":  # trained biases of the targets are saved under their plain names
        assert "transformer.h.0.mlp.c_fc.bias" in config["dense_params"]


def test_delta_stores_only_used_basis_columns(tmp_path: Path) -> None:
    model = _trained("bert")
    sg.save_delta(model, tmp_path, encoding="coo")
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        p_keys = sorted(k for k in keys if k.endswith(".p"))
        assert len(p_keys) == 2  # one per group (up, down), not per layer
        for key in p_keys:
            cols = f.get_tensor(key[:-2] + ".p_cols")
            assert f.get_tensor(key).shape[1] == cols.numel()


@pytest.mark.parametrize(("method", "form"), [("sparsegrad", "dense"), ("meprop", "coo")])
def test_auto_encoding_stores_the_smaller_form(method: str, form: str, tmp_path: Path) -> None:
    # tiny SparseGrad: the basis columns alone outweigh ΔW, so the group goes dense; MeProp (no basis, 5%
    # of the entries per step, three steps) stays COO
    model = _trained("bert", method)
    sizes = {}
    for encoding in ("coo", "dense", "auto"):
        sg.save_delta(model, tmp_path / encoding, encoding=encoding)
        sizes[encoding] = (tmp_path / encoding / "adapter_model.safetensors").stat().st_size
    assert sizes["auto"] == sizes[form] == min(sizes["coo"], sizes["dense"])
    with safe_open(str(tmp_path / "auto" / "adapter_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    for name in sg.sparse_layers(model):
        assert (f"{name}.weight_delta" in keys) == (form == "dense") != (f"{name}.indices" in keys)
    with pytest.raises(ValueError, match="encoding must be"):
        sg.save_delta(model, tmp_path / "x", encoding="zip")


def test_mismatched_base_is_refused(tmp_path: Path) -> None:
    sg.save_delta(_trained("bert"), tmp_path)
    other = tiny_model("bert", seed=123)
    with pytest.raises(sg.DeltaMismatch, match=r"bert\.encoder\.layer\.0\.intermediate\.dense.*sha256"):
        sg.load_delta(other, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    config["layers"]["bert.encoder.layer.1.output.dense"]["shape"] = [32, 65]
    (tmp_path / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(sg.DeltaMismatch, match=r"layer 'bert\.encoder\.layer\.1\.output\.dense'.*\[32, 64\]"):
        sg.load_delta(tiny_model("bert"), tmp_path)
    with pytest.raises(sg.DeltaMismatch, match="no linear layer"):
        sg.load_delta(tiny_model("llama"), tmp_path)


def test_save_delta_needs_an_injected_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inject"):
        sg.save_delta(tiny_model("bert"), tmp_path)
