"""save_delta / load_delta / merge round trips, and refusal of a mismatched base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import sparsegrad as sg
from sparsegrad.delta_codec import decode, encode, pack_bits, unpack_bits
from sparsegrad.memory import layer_encoding_bytes
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


def _tensor_bytes(folder: Path) -> int:
    with safe_open(str(folder / "sparsegrad_delta.safetensors"), framework="pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())


def _target_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".dense.weight" in n or "mlp" in n}


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
    sg.save_delta(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "sparsegrad_delta.json",
        "sparsegrad_delta.safetensors",
    ]
    config = json.loads((tmp_path / "sparsegrad_delta.json").read_text())
    assert config["format"] == "sparsegrad" and config["version"] == 4
    assert config["base_model_id"] == f"tiny-{kind}" and len(config["base_fingerprint"]) == 64
    assert config["target_modules"] == [t.name for t in sg.get_info(model).targets]
    assert config["labels"] == ["a", "b", "c"] and config["support"] == "dynamic"
    loaded = sg.load_delta(tiny_model(kind), tmp_path)
    assert not any(isinstance(m, sg.SparseGradLinear) for m in loaded.modules())
    assert (_logits(loaded, batch) - tuned).abs().max().item() < 1e-4
    merged_by_form = {}
    for form in ("csr", "bitmap", "block", "dense"):  # every form, forced
        sg.save_delta(model, tmp_path / form, encoding=form)
        layers = json.loads((tmp_path / form / "sparsegrad_delta.json").read_text())["layers"]
        assert {spec["encoding"] for spec in layers.values()} == {form}
        loaded = sg.load_delta(tiny_model(kind), tmp_path / form)
        assert (_logits(loaded, batch) - tuned).abs().max().item() < 1e-4
        merged_by_form[form] = _target_weights(loaded)
    for form in ("bitmap", "block"):  # the sparse forms decode to the same ΔC: the same weights, bit for bit
        for name, w in merged_by_form[form].items():
            assert torch.equal(w, merged_by_form["csr"][name]), (form, name)
    merged = sg.merge(model)
    assert not any(isinstance(m, sg.SparseGradLinear) for m in merged.modules())
    assert (_logits(merged, batch) - tuned).abs().max().item() < 1e-4
    if kind == "gpt2":  # trained biases of the targets are saved under their plain names
        assert "transformer.h.0.mlp.c_fc.bias" in config["dense_params"]


def test_delta_stores_only_used_basis_columns(tmp_path: Path) -> None:
    model = _trained("bert")
    sg.save_delta(model, tmp_path, encoding="csr")
    with safe_open(str(tmp_path / "sparsegrad_delta.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        p_keys = sorted(k for k in keys if k.endswith(".p"))
        assert len(p_keys) == 2  # one per group (up, down), not per layer
        for key in p_keys:
            rows, cols = f.get_tensor(key[:-2] + ".rows"), f.get_tensor(key[:-2] + ".cols")
            assert (
                f.get_tensor(key).shape[1] == rows.numel()
                and f.get_tensor(key[:-2] + ".q").shape[1] == cols.numel()
            )
        first = next(iter(sg.sparse_layers(model)))
        assert f.get_tensor(f"{first}.col").dtype == torch.uint8  # |C| <= 256: one byte per local column


@pytest.mark.parametrize("method", ["sparsegrad", "meprop"])
def test_auto_encoding_stores_the_smallest_form(method: str, tmp_path: Path) -> None:
    model = _trained("bert", method)
    sizes = {}
    for encoding in ("csr", "bitmap", "block", "dense", "auto"):
        sg.save_delta(model, tmp_path / encoding, encoding=encoding)
        sizes[encoding] = (tmp_path / encoding / "sparsegrad_delta.safetensors").stat().st_size
    # auto picks per layer (and dense per group): never above any form forced on every layer
    assert sizes["auto"] <= min(v for k, v in sizes.items() if k != "auto") + 512  # header differences
    size = sg.delta_size(model)  # from the size functions alone: the tensors save_delta wrote
    assert size.bytes == _tensor_bytes(tmp_path / "auto") and size.nnz == sum(
        m.delta()[0].numel() for m in sg.sparse_layers(model).values()
    )
    with pytest.raises(ValueError, match="encoding must be"):
        sg.save_delta(model, tmp_path / "x", encoding="zip")
    with pytest.raises(ValueError, match="value_dtype must be"):
        sg.save_delta(model, tmp_path / "x", value_dtype="int8")


@pytest.mark.parametrize("method", ["sparsegrad", "meprop"])
def test_released_version_3_deltas_still_merge_to_the_same_weights(method: str) -> None:
    # written by the released code (format version 3, peft's file names, COO), with the weights its
    # load_delta merged (tests/sparsegrad/data, made once from main at 024046f)
    data = Path(__file__).parent / "data"
    loaded = sg.load_delta(tiny_model("bert"), data / f"v3_{method}")
    expected = load_file(str(data / f"v3_{method}_merged.safetensors"))
    params = dict(loaded.named_parameters())
    for name, w in expected.items():
        assert torch.equal(params[name].detach(), w), name
    assert sg.read_delta_config(data / f"v3_{method}")["version"] == 3


def test_mismatched_base_is_refused(tmp_path: Path) -> None:
    sg.save_delta(_trained("bert"), tmp_path)
    other = tiny_model("bert", seed=123)
    with pytest.raises(sg.DeltaMismatch, match=r"bert\.encoder\.layer\.0\.intermediate\.dense.*sha256"):
        sg.load_delta(other, tmp_path)
    config = json.loads((tmp_path / "sparsegrad_delta.json").read_text())
    config["layers"]["bert.encoder.layer.1.output.dense"]["shape"] = [32, 65]
    (tmp_path / "sparsegrad_delta.json").write_text(json.dumps(config))
    with pytest.raises(sg.DeltaMismatch, match=r"layer 'bert\.encoder\.layer\.1\.output\.dense'.*\[32, 64\]"):
        sg.load_delta(tiny_model("bert"), tmp_path)
    with pytest.raises(sg.DeltaMismatch, match="no linear layer"):
        sg.load_delta(tiny_model("llama"), tmp_path)


def test_save_delta_needs_an_injected_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inject"):
        sg.save_delta(tiny_model("bert"), tmp_path)


@pytest.mark.parametrize(
    ("n_rows", "n_cols", "share"), [(7, 300, 0.05), (5, 13, 0.6), (3, 4, 1.0), (4, 9, 0.0)]
)
def test_every_layer_form_decodes_to_the_same_grid(n_rows: int, n_cols: int, share: float) -> None:
    gen = torch.Generator().manual_seed(n_rows * n_cols)
    cells = n_rows * n_cols
    local = torch.randperm(cells, generator=gen)[: round(share * cells)].sort().values
    values = torch.randn(local.numel(), generator=gen)
    expected = torch.zeros(cells).index_put_((local,), values).view(n_rows, n_cols)
    for form in ("csr", "bitmap", "block"):
        parts = encode(local, values, n_rows, n_cols, form)
        assert torch.equal(decode(parts, n_rows, n_cols, form), expected), form
        size = sum(t.numel() * t.element_size() for t in parts.values())
        assert size == layer_encoding_bytes(local.numel(), n_rows, n_cols)[form]
    mask = torch.zeros(cells, dtype=torch.bool).index_fill_(0, local, True)
    reference = [
        int("".join("1" if b else "0" for b in mask[i : i + 8].tolist()).ljust(8, "0"), 2)
        for i in range(0, cells, 8)
    ]
    assert pack_bits(mask).tolist() == reference  # most significant bit first, as numpy.packbits
    assert torch.equal(unpack_bits(pack_bits(mask), cells), mask)


@pytest.mark.parametrize("value_dtype", ["float16", "bfloat16"])
def test_low_precision_delta_is_half_the_size_and_close(value_dtype: str, tmp_path: Path) -> None:
    model = _trained("bert")
    sg.save_delta(model, tmp_path / "f32", encoding="csr")
    sg.save_delta(model, tmp_path / "low", encoding="csr", value_dtype=value_dtype)
    exact = _target_weights(sg.load_delta(tiny_model("bert"), tmp_path / "f32"))
    low = _target_weights(sg.load_delta(tiny_model("bert"), tmp_path / "low"))
    base = _target_weights(tiny_model("bert"))
    for name in sg.read_delta_config(tmp_path / "low")["target_modules"]:
        w = exact[f"{name}.weight"]
        dw = w - base[f"{name}.weight"]
        err = (low[f"{name}.weight"] - w).norm() / dw.norm()
        assert 0 < err < (2e-2 if value_dtype == "bfloat16" else 2e-3), (name, err)

    def floats(folder: str, parts: tuple[str, ...]) -> int:
        with safe_open(str(tmp_path / folder / "sparsegrad_delta.safetensors"), framework="pt") as f:
            return sum(
                f.get_tensor(k).numel() * f.get_tensor(k).element_size()
                for k in f.keys()
                if k.endswith(parts)
            )

    assert floats("low", (".values",)) * 2 == floats("f32", (".values",))
    # the basis columns are bf16 values (compute_basis): 2 bytes each, exact, in both files
    assert floats("low", (".p", ".q")) == floats("f32", (".p", ".q")) > 0
    sg.save_delta(model, tmp_path / "auto_low", value_dtype=value_dtype)
    assert sg.delta_size(model, value_dtype).bytes == _tensor_bytes(tmp_path / "auto_low")


@pytest.mark.parametrize("value_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("selection", ["gradient", "adam"])
def test_round_delta_makes_the_model_exactly_its_16_bit_delta(
    value_dtype: str, selection: str, tmp_path: Path
) -> None:
    """SparseGradAdamW.round_delta: after it, the trained model (what the engine evaluates) equals a fresh
    base + the 16-bit delta file to float32 arithmetic, where before it they differed by the rounding."""
    model = tiny_model("bert")
    batches = tiny_batches("bert", 6)
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=2, base_model_id="tiny-bert", selection=selection)
    sg.inject(model, cfg, sg.compute_basis(model, batches[:2], cfg))
    opt = sg.make_optimizer(model, lr=1e-3, weight_decay=0.01)  # a realistic rate; ΔC kept for decay
    for batch in batches[2:]:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    dtype = sg.VALUE_DTYPES[value_dtype]
    layers = sg.sparse_layers(model)

    def merged_gap() -> float:
        sg.save_delta(model, tmp_path / "d", value_dtype=value_dtype)
        merged = _target_weights(sg.load_delta(tiny_model("bert"), tmp_path / "d"))
        return max(float((merged[f"{n}.weight"] - m.weight).abs().max()) for n, m in layers.items())

    before = merged_gap()
    opt.round_delta(dtype)
    after = merged_gap()
    # the rounding (bf16 ~1e-5, fp16 ~1e-6 here) is gone; the float32 sums' ~1e-8 remain
    assert after < 1e-7 and 20 * after < before, (before, after)
    for m in layers.values():
        _, val = m.delta()
        assert torch.equal(val, val.to(dtype).float())
    st = opt.state[next(iter(layers.values())).coef]
    if selection == "gradient":  # the optimizer's ΔC (weight decay) follows the layers'
        pos = st["index"] // (32 * 64)
        first = [m for m in layers.values() if m.group == "up"]
        for i, m in enumerate(first):
            local = st["index"][pos == i] - i * 32 * 64
            assert torch.equal(st["delta"][pos == i], m.delta_at(local))
    weights = {n: m.weight.clone() for n, m in layers.items()}
    opt.round_delta(dtype)  # idempotent
    assert all(torch.equal(weights[n], m.weight) for n, m in layers.items())
    model(**batches[2]).loss.backward()
    opt.step()  # training goes on from the rounded values


def test_basis_columns_are_stored_bf16_only_where_that_is_exact(tmp_path: Path) -> None:
    """compute_basis's bases are bf16 numbers: stored in 2 bytes whatever the value dtype, and the merge is
    the same; a float32 basis (a checkpoint from before that rounding) keeps the value dtype."""
    model = _trained("bert")
    sg.save_delta(model, tmp_path / "new", encoding="csr")
    layers = sg.sparse_layers(model)
    with torch.no_grad():
        for m in layers.values():  # an older basis: float32 values that are not bf16 numbers
            assert m.P is not None
            m.P.add_(torch.full_like(m.P, 2.0**-20))
    sg.save_delta(model, tmp_path / "old", encoding="csr")

    def basis_dtypes(folder: str) -> set[torch.dtype]:
        tensors = load_file(str(tmp_path / folder / "sparsegrad_delta.safetensors"))
        return {t.dtype for k, t in tensors.items() if k.endswith((".p", ".q"))}

    assert basis_dtypes("new") == {torch.bfloat16} and basis_dtypes("old") == {torch.float32}
    sg.save_delta(model, tmp_path / "old_auto")
    assert sg.delta_size(model).bytes == _tensor_bytes(tmp_path / "old_auto")  # counts the float32 basis
