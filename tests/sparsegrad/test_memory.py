"""The memory model counts what the code holds: optimizer state, dL/dC and bases of a real injected model."""

from __future__ import annotations

import pytest
import torch

import sparsegrad as sg
from bench.memory import main as memory_main
from sparsegrad.memory import SHAPES, Choice, basis_bytes, coef_grad_bytes, optimizer_bytes
from tests.sparsegrad.tiny import tiny_batches, tiny_model


@pytest.mark.parametrize("support", ["dynamic", "fixed"])
def test_model_matches_the_optimizer_gradients_and_basis(support: str) -> None:
    model = tiny_model("llama")
    batches = tiny_batches("llama", 3)
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=2, support=support)  # type: ignore[arg-type]
    sg.inject(model, cfg, sg.compute_basis(model, batches[:2], cfg))
    opt = sg.make_optimizer(model, lr=1e-3)
    model(**batches[2]).loss.backward()
    layers = list(sg.sparse_layers(model).values())
    shapes = [(m.d_out, m.d_in) for m in layers]
    choice = Choice(0.05, support, union=0.0)  # after one step a dynamic support holds k entries per layer
    grads = sum(m.coef.grad.numel() * m.coef.grad.element_size() for m in layers)  # type: ignore[union-attr]
    if support == "fixed":  # its row and column positions are kept with the support
        supports = [m.fixed_support() for m in layers]
        grads += sum(s.row_pos.numel() * 8 + s.col_pos.numel() * 8 for s in supports)  # type: ignore[union-attr]
    assert grads == sum(coef_grad_bytes(o, i, choice) for o, i in shapes)
    opt.step()
    scalars = sum(
        v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if v.dim() == 0
    )
    assert sg.optimizer_state_bytes(opt) - scalars == sum(optimizer_bytes(o, i, choice) for o, i in shapes)
    bases = {id(t): t for m in layers for t in (m.P, m.Q) if t is not None}
    assert sum(t.numel() * t.element_size() for t in bases.values()) == basis_bytes(shapes)


def test_shapes_count_the_real_models_parameters() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    )  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    assert SHAPES["smollm2-135m"].params == sum(p.numel() for p in model.parameters())


def test_bench_prints_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    memory_main(["--shape", "llama-7b"])
    out = capsys.readouterr().out
    for name in (
        "| sparsegrad |",
        "| sparsegrad-fixed |",
        "| sparsegrad-unconfined |",
        "| lora |",
        "| full |",
    ):
        assert name in out
    assert "SparseGrad over LoRA, as a share of the model's bf16 weights" in out
