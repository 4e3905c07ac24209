"""Updates of a bf16 base weight: folded into the weight each step (the weight sync before the side path) or
kept beside it (`sparsegrad.sidepath`), on a tiny random LLaMA, 7 SparseGrad steps per rate.

    python -m bench.precision

Per rate and way: the share of the update's norm missing from the trained model (merged into bf16, so the
side path's figure is the one rounding of the final sum, which a float32 merge, the service's, does not
pay), and the share of the weights that one rounding of base + ΔW moves but the trained model left as they
were (updates that rounded away step by step).
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

import sparsegrad as sg
from bench.gpu_table import build_config, random_batch

RATES = (1e-2, 1e-3, 1e-4, 2e-5)


def measure(lr: float, side_path: bool, steps: int = 7) -> tuple[float, float]:
    """(update norm lost, weights left unchanged that one rounding of the sum moves), as fractions."""
    torch.manual_seed(0)
    model: torch.nn.Module = LlamaForCausalLM(build_config("tiny"))
    model.to(torch.bfloat16)
    gen = torch.Generator().manual_seed(1)
    batches = [random_batch(512, 4, 32, gen) for _ in range(steps + 2)]
    cfg = sg.SparseGradConfig(density=0.05, basis_steps=2)
    sg.inject(model, cfg, sg.compute_basis(model, batches[:2], cfg))
    layers = sg.sparse_layers(model)
    base = {n: m.weight.detach().float().clone() for n, m in layers.items()}
    if not side_path:
        for m in layers.values():
            m.side = None  # the weight sync W += P ΔC Qᵀ straight into the bf16 weight
    opt = sg.make_optimizer(model, lr=lr)
    for batch in batches[2:]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    delta = {n: m.get_delta_weight().float() for n, m in layers.items()}
    sg.merge(model)
    lost = norm = 0.0
    unchanged = moved = 0
    for name in layers:
        weight = model.get_submodule(name).weight
        assert isinstance(weight, torch.Tensor)
        applied = weight.float() - base[name]
        lost += float((applied - delta[name]).norm() ** 2)
        norm += float(delta[name].norm() ** 2)
        once = (base[name] + delta[name]).to(torch.bfloat16).float() != base[name]
        unchanged += int(((applied == 0) & once).sum())
        moved += int(once.sum())
    return (lost / norm) ** 0.5, unchanged / max(moved, 1)


def main() -> None:
    print("Tiny LLaMA, bf16 weights, 7 SparseGrad steps; the trained model merged into bf16.")
    print("Update norm lost / weights that one rounding of base + ΔW moves but training never moved:")
    print("| lr | lost, folded each step | lost, side path + one merge | never moved, folded | side path |")
    print("|---|--:|--:|--:|--:|")
    for lr in RATES:
        (lost_in, still_in), (lost_side, still_side) = measure(lr, False), measure(lr, True)
        print(f"| {lr:g} | {lost_in:.1%} | {lost_side:.1%} | {still_in:.1%} | {still_side:.1%} |")


if __name__ == "__main__":
    main()
