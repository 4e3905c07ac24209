"""Basis, injection and optimizer behaviour on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sparsegrad as sg
from tests.sparsegrad.tiny import tiny_batches, tiny_model


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _prepared(kind: str, **cfg_kwargs: object) -> tuple[nn.Module, sg.SparseGradConfig, list[dict]]:
    model = tiny_model(kind)
    batches = tiny_batches(kind, 8)
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=3, **cfg_kwargs)  # type: ignore[arg-type]
    basis = sg.compute_basis(model, batches[:3], cfg)
    sg.inject(model, cfg, basis)
    return model, cfg, batches


def test_basis_is_bf16_valued_orthogonal_and_leaves_the_model_alone() -> None:
    model = tiny_model("bert")
    model.eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    basis = sg.compute_basis(model, tiny_batches("bert", 5), sg.SparseGradConfig(basis_steps=4))
    assert basis.steps == 4
    assert set(basis.p) == {"up:64x32", "down:32x64"}
    for mat in [*basis.p.values(), *basis.q.values()]:
        assert mat.dtype == torch.float32 and torch.equal(mat, mat.to(torch.bfloat16).float())
        # orthogonal to bf16 rounding (2^-9 relative per value), no more and no less
        err = (mat.t() @ mat - torch.eye(mat.shape[0])).abs().max()
        assert 0 < err < 1e-2
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad == flags[n] and p.grad is None
    per_layer = sg.compute_basis(
        model, tiny_batches("bert", 2), sg.SparseGradConfig(basis_steps=2, per_layer_basis=True)
    )
    assert len(per_layer.p) == 4


def test_basis_probe_fits_the_head_for_the_basis_then_restores_it() -> None:
    """basis_probe_steps: the basis comes from gradients through a fitted head (so it differs from the plain
    basis), and the model leaves the phase exactly as it came in."""
    model = tiny_model("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = tiny_batches("bert", 3)
    plain = sg.compute_basis(model, batches, sg.SparseGradConfig(basis_steps=3))
    probed = sg.compute_basis(model, batches, sg.SparseGradConfig(basis_steps=3, basis_probe_steps=20))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None, n
    lead_plain, lead_probed = plain.p["down:32x64"][:, 0].abs(), probed.p["down:32x64"][:, 0].abs()
    assert not torch.allclose(lead_plain, lead_probed, atol=1e-3)
    again = sg.compute_basis(model, batches, sg.SparseGradConfig(basis_steps=3))
    assert all(torch.equal(plain.p[g], again.p[g]) for g in plain.p)


@pytest.mark.parametrize("probe", [0, 2])
def test_basis_batches_without_labels_are_refused(probe: int) -> None:
    batches = [_inputs(b) for b in tiny_batches("bert", 2)]
    cfg = sg.SparseGradConfig(basis_steps=2, basis_probe_steps=probe)
    with pytest.raises(ValueError, match="must carry labels"):
        sg.compute_basis(tiny_model("bert"), batches, cfg)


def test_basis_orders_directions_by_energy() -> None:
    """The first column of P captures more gradient energy than the last (descending singular values)."""
    model = tiny_model("bert")
    batches = tiny_batches("bert", 4)
    basis = sg.compute_basis(model, batches, sg.SparseGradConfig(basis_steps=4, support="fixed"))
    g = basis.grad_sum["bert.encoder.layer.0.intermediate.dense"]
    p = basis.p["up:64x32"]
    energy = (p.t() @ g).pow(2).sum(dim=1)  # per-row energy in the basis
    assert energy[0] > energy[-1]


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_outputs_equal_at_injection(kind: str) -> None:
    model = tiny_model(kind)
    model.eval()
    batch = _inputs(tiny_batches(kind, 1)[0])
    with torch.no_grad():
        before = model(**batch).logits
    cfg = sg.SparseGradConfig(basis_steps=2)
    sg.inject(model, cfg, sg.compute_basis(model, tiny_batches(kind, 2), cfg))
    assert len(sg.sparse_layers(model)) == len(sg.get_info(model).targets) > 0
    with torch.no_grad():
        after = model(**batch).logits
    assert (before - after).abs().max().item() < 1e-4


def _coefficients(m: sg.SparseGradLinear, dw: torch.Tensor) -> torch.Tensor:
    """ΔC with ΔW = P ΔC Qᵀ, in float64 (P and Q are orthogonal only to bf16 rounding: solve, not Pᵀ)."""
    p, q = m.P.double(), m.Q.double()  # type: ignore[union-attr]
    return torch.linalg.solve(q, torch.linalg.solve(p, dw).t()).t()


@pytest.mark.parametrize("support", ["dynamic", "fixed"])
def test_each_step_changes_exactly_k_coefficients(support: str) -> None:
    model, _, batches = _prepared("bert", support=support)
    opt = sg.make_optimizer(model, lr=1e-2)
    layers = sg.sparse_layers(model)
    for batch in batches[3:6]:
        before = {n: m.weight.detach().double().clone() for n, m in layers.items()}
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        for n, m in layers.items():
            dc = _coefficients(m, m.weight.double() - before[n])  # ΔC of this step
            changed = int((dc.abs() > 1e-6).sum())
            assert changed == m.k, f"{n}: {changed} coefficients changed, expected k={m.k}"


def test_only_target_weights_and_head_change() -> None:
    model, _, batches = _prepared("bert")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = sg.make_optimizer(model, lr=1e-2)
    for batch in batches[3:5]:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    targets = {f"{t.name}.base_layer.weight" for t in sg.get_info(model).targets}
    head = {n for n in before if n.startswith(("classifier.", "bert.pooler."))}
    assert changed == targets | head


def test_llama_head_frozen_unless_asked_and_norms_by_option() -> None:
    model, _, _ = _prepared("llama")
    assert not model.lm_head.weight.requires_grad
    model2, _, _ = _prepared("llama", train_head=True, train_layernorm=True)
    assert model2.lm_head.weight.requires_grad
    assert model2.model.norm.weight.requires_grad
    assert not model2.model.layers[0].self_attn.q_proj.weight.requires_grad
    model3, _, _ = _prepared("bert", train_rest_dense=True)
    assert model3.bert.encoder.layer[0].attention.self.query.weight.requires_grad
    assert not model3.bert.encoder.layer[0].intermediate.dense.base_layer.weight.requires_grad


def test_optimizer_state_fixed_is_k_and_dynamic_is_the_union() -> None:
    fixed, _, batches = _prepared("bert", support="fixed")
    dynamic, _, _ = _prepared("bert")
    opts = {"fixed": sg.make_optimizer(fixed, lr=1e-2), "dynamic": sg.make_optimizer(dynamic, lr=1e-2)}
    seen: dict[int, set[int]] = {}
    for batch in batches[3:7]:
        for name, model in (("fixed", fixed), ("dynamic", dynamic)):
            model(**batch).loss.backward()
            if name == "dynamic":
                for m in sg.sparse_layers(model).values():
                    assert m.coef.grad is not None
                    top = torch.topk(m.coef.grad.abs().reshape(-1), m.k).indices
                    seen.setdefault(id(m), set()).update(top.tolist())
            opts[name].step()
            opts[name].zero_grad()
    fixed_opt, dynamic_opt = opts["fixed"], opts["dynamic"]
    for m in sg.sparse_layers(fixed).values():
        assert torch.equal(fixed_opt.state_entries(m), m.support_index)
        assert m.support_index is not None and m.support_index.numel() == m.k
    n_fixed = sum(m.k for m in sg.sparse_layers(fixed).values())
    for st in fixed_opt.state.values():  # sparse group states hold exactly k entries per layer
        if "index" in st:
            assert all(st[key].numel() == st["index"].numel() for key in ("exp_avg", "exp_avg_sq", "step"))
    assert sum(st["index"].numel() for st in fixed_opt.state.values() if "index" in st) == n_fixed
    for m in sg.sparse_layers(dynamic).values():
        entries = dynamic_opt.state_entries(m)
        assert entries.numel() == len(seen[id(m)]) > m.k
        assert set(entries.tolist()) == seen[id(m)] == set(m.delta()[0].tolist())


@pytest.mark.parametrize("mode", ["global", "entry"])
def test_bias_correction_of_an_entry_that_joins_late(mode: str) -> None:
    # An entry first selected at step 3 has first-step moments m = 0.1 g, v = 0.001 g²: corrected by its own
    # count it moves a full lr; by the optimizer's count (SparseAdam) lr·0.1·√(1-b2³)/((1-b1³)·√0.001).
    model, _, batches = _prepared("bert", bias_correction=mode)
    lr, b1, b2 = 1e-2, 0.9, 0.999
    opt = sg.make_optimizer(model, lr=lr)
    layer = next(iter(sg.sparse_layers(model).values()))
    chosen = []
    for batch in batches[3:6]:
        model(**batch).loss.backward()
        assert layer.coef.grad is not None
        chosen.append(set(torch.topk(layer.coef.grad.abs().reshape(-1), layer.k).indices.tolist()))
        opt.step()
        opt.zero_grad()
    late = sorted(chosen[2] - chosen[1] - chosen[0])
    assert late
    index, value = layer.delta()
    moved = dict(zip(index.tolist(), value.abs().tolist(), strict=True))
    damped = lr * (1 - b1) * math.sqrt(1 - b2**3) / ((1 - b1**3) * math.sqrt(1 - b2))
    expect = lr if mode == "entry" else damped
    assert [moved[i] for i in late] == pytest.approx([expect] * len(late), rel=1e-3)


@pytest.mark.parametrize("block", [None, 4.0])
def test_adam_selection_moves_the_largest_steps_of_dense_moments(block: float | None) -> None:
    # selection="adam": moments of every candidate follow dL/dC every step; the k entries with the largest
    # AdamW step move, by exactly that step. Replayed here in closed form from the recorded gradients.
    model, _, batches = _prepared("bert", selection="adam", support_block=block)
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.1
    opt = sg.make_optimizer(model, lr=lr, weight_decay=wd)
    layer = next(iter(sg.sparse_layers(model).values()))
    w0 = layer.weight.detach().clone()
    n = layer.d_out * layer.d_in
    cand = layer.block.flat if layer.block is not None else torch.arange(n)
    m, v, delta = (torch.zeros(cand.numel()) for _ in range(3))
    differs = False
    for t, batch in enumerate(batches[3:8], start=1):
        model(**batch).loss.backward()
        assert layer.coef.grad is not None
        g = layer.dense_coef_grad().reshape(-1)[cand]
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        step = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps) + wd * delta
        pick = torch.topk(step.abs(), layer.k).indices
        delta[pick] -= lr * step[pick]
        differs |= set(pick.tolist()) != set(torch.topk(g.abs(), layer.k).indices.tolist())
        opt.step()
        opt.zero_grad()
    assert differs  # not the paper's rule (the step's largest |dL/dC|)
    index, value = layer.delta()
    expect = torch.zeros(n)
    expect[cand] = delta
    got = torch.zeros(n)
    got[index] = value
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-7)
    assert layer.k < index.numel() <= 5 * layer.k and bool(torch.isin(index, cand).all())
    torch.testing.assert_close(layer.weight - w0, layer.get_delta_weight(), rtol=1e-4, atol=1e-6)
    assert torch.equal(opt.state_entries(layer), cand)
    sparse = [opt.state[p] for g in opt.param_groups if g["kind"] == "sparse" for p in g["params"]]
    moments = [st["exp_avg"] for st in sparse if st]
    assert len(moments) == 2 and all(m.shape[1] == cand.numel() for m in moments)  # one per group


def test_fixed_support_refresh_keeps_k_entries() -> None:
    model, _, batches = _prepared("bert", support="fixed", support_refresh_every=2)
    opt = sg.make_optimizer(model, lr=1e-2)
    layer = next(iter(sg.sparse_layers(model).values()))
    first = layer.support_index.clone()
    for batch in batches[3:8]:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    assert layer.support_index.numel() == layer.k
    assert not torch.equal(first, layer.support_index)
    assert torch.equal(opt.state_entries(layer), layer.support_index)


def test_meprop_and_lora_baselines_run() -> None:
    model = tiny_model("bert")
    cfg = sg.SparseGradConfig(density=0.05)
    sg.apply_meprop(model, cfg)
    opt = sg.make_optimizer(model, lr=1e-2)
    batch = tiny_batches("bert", 1)[0]
    model(**batch).loss.backward()
    opt.step()
    for m in sg.sparse_layers(model).values():
        assert m.P is None and m.delta()[0].numel() == m.k
    lora_model = tiny_model("bert")
    rank = sg.lora_rank_for(lora_model, 0.05)
    assert rank == round(sum(round(0.05 * 64 * 32) for _ in range(4)) / (4 * 96))
    peft_model = sg.apply_lora(lora_model, rank=rank)
    names = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in names) and any("classifier" in n for n in names)
    assert not any("attention" in n for n in names)
    with pytest.raises(ValueError, match="dynamic"):
        sg.apply_meprop(tiny_model("bert"), sg.SparseGradConfig(support="fixed"))


def test_basis_takes_only_basis_steps_batches_from_an_iterator() -> None:
    batches = tiny_batches("bert", 4)
    it = iter(batches)
    basis = sg.compute_basis(tiny_model("bert"), it, sg.SparseGradConfig(basis_steps=2))
    assert basis.steps == 2
    assert next(it) is batches[2]
    with pytest.raises(ValueError, match="no batches"):
        sg.compute_basis(tiny_model("bert"), [], sg.SparseGradConfig(basis_steps=2))


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_fixed_support_gradient_only_on_the_support_trains_the_same(kind: str) -> None:
    """A fixed support that is never re-chosen gets dL/dC on the support only (a cheaper backward, a sparse
    gradient); the gradient there and the trained weights equal those of the dense dL/dC."""
    restricted, _, batches = _prepared(kind, support="fixed")
    dense, _, _ = _prepared(kind, support="fixed")
    layers = [sg.sparse_layers(m) for m in (restricted, dense)]
    assert all(m.grad_on_support_only for m in layers[0].values())
    for m in layers[1].values():
        m.grad_on_support_only = False
        m.shape_placeholder()
    opts = [sg.make_optimizer(m, lr=1e-2) for m in (restricted, dense)]
    for batch in batches[3:6]:
        for model in (restricted, dense):  # two micro-batches: gradients accumulate before the step
            model(**batch).loss.backward()
            model(**batches[7]).loss.backward()
        for name, m in layers[0].items():
            assert m.coef.grad.shape == (m.k,)  # the support's values only, no (D_out, D_in) of zeros
            g_r, g_d = m.dense_coef_grad().reshape(-1), layers[1][name].coef.grad.reshape(-1)
            on = torch.zeros_like(g_d, dtype=torch.bool)
            on[m.support_index] = True
            assert torch.count_nonzero(g_r[~on]) == 0
            torch.testing.assert_close(g_r[on], g_d[on], rtol=1e-4, atol=1e-6)
        for opt in opts:
            opt.step()
            opt.zero_grad()
    for name, m in layers[0].items():
        torch.testing.assert_close(m.weight, layers[1][name].weight, rtol=1e-4, atol=1e-6)


def test_support_refresh_keeps_the_dense_gradient() -> None:
    model, _, _ = _prepared("bert", support="fixed", support_refresh_every=2)
    assert not any(m.grad_on_support_only for m in sg.sparse_layers(model).values())


@pytest.mark.parametrize(("kind", "support"), [("bert", "dynamic"), ("gpt2", "dynamic"), ("bert", "fixed")])
def test_support_block_confines_every_step_to_the_block(kind: str, support: str) -> None:
    """With support_block, dL/dC is computed on the block only and every step still changes exactly k
    coefficients, all inside the block; the optimizer never holds state outside it."""
    model, _, batches = _prepared(kind, support=support, support_block=2.0)
    opt = sg.make_optimizer(model, lr=1e-2)
    layers = sg.sparse_layers(model)
    for m in layers.values():
        assert m.block is not None and m.block.flat.numel() >= 2 * m.k
    for batch in batches[3:6]:
        before = {n: m.weight.detach().double().clone() for n, m in layers.items()}
        model(**batch).loss.backward()
        for m in layers.values():
            outside = torch.ones(m.d_out * m.d_in, dtype=torch.bool)
            outside[m.block.flat] = False  # type: ignore[union-attr]
            assert torch.count_nonzero(m.dense_coef_grad().reshape(-1)[outside]) == 0
        opt.step()
        opt.zero_grad()
        for n, m in layers.items():
            dc = _coefficients(m, m.weight.double() - before[n])  # ΔC of this step
            changed = (dc.abs() > 1e-6).reshape(-1)
            outside = torch.ones_like(changed)
            outside[m.block.flat] = False  # type: ignore[union-attr]
            assert int(changed.sum()) == m.k, f"{n}: {int(changed.sum())} changed, expected k={m.k}"
            assert not changed[outside].any(), f"{n}: a coefficient outside the block changed"
    for m in layers.values():
        assert bool(torch.isin(opt.state_entries(m), m.block.flat).all())  # type: ignore[union-attr]


def test_support_block_gradient_equals_the_dense_one_on_the_block() -> None:
    blocked, _, batches = _prepared("bert", support_block=3.0)
    dense, _, _ = _prepared("bert")
    blocked(**batches[3]).loss.backward()
    dense(**batches[3]).loss.backward()
    for name, m in sg.sparse_layers(blocked).items():
        g_d = sg.sparse_layers(dense)[name].coef.grad.reshape(-1)
        torch.testing.assert_close(
            m.dense_coef_grad().reshape(-1)[m.block.flat], g_d[m.block.flat], rtol=1e-4, atol=1e-6
        )  # type: ignore[union-attr]


def test_support_block_takes_the_rows_and_columns_with_the_most_energy() -> None:
    from sparsegrad.model import support_block

    g = torch.full((20, 10), 0.01)
    g[3, 1] = g[7, 4] = 5.0
    g[3, 4] = g[7, 1] = -4.0
    block = support_block(g, k=4, factor=2.0)
    assert block.rows.tolist() == [3, 7]  # shape R/C = D_in/D_out: 2 rows x 4 columns for an area of 8
    assert block.cols.numel() == 4 and {1, 4} <= set(block.cols.tolist())
    assert block.flat.tolist() == sorted(block.flat.tolist())
