"""The memory model (`sparsegrad.memory`) per method, and, with --measure, the measured peak beside it.

    python -m bench.memory --shape llama-7b|smollm2-135m|minilm [--batch 4] [--seq 512] [--precision bf16]
    python -m bench.memory --shape smollm2-135m --measure     # needs `make models` (SmolLM2 weights)

Precision: bf16-weights (frozen weights bf16, bf16 autocast), bf16 (float32 weights, bf16 autocast), fp32.
SparseGrad rows: the causal-LM default (a dynamic support in a 2k block, the paper's selection), a fixed
support in that block, and the unconfined dynamic support (the budget rule's choices, training.budget).

--measure trains each method 3 steps on CPU in its own process (SmolLM2-135M, random tokens) and prints the
peak RSS during those steps (sampled every 5 ms) less what the process held beside the weights once the
model was loaded; freed blocks of 64 KiB or more go back to the system at once (MALLOC_MMAP_THRESHOLD_),
so RSS follows the live tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from sparsegrad.memory import SHAPES, Choice, Estimate, estimate

MiB = 2**20
PRECISION_BYTES = {"fp32": (4, 4), "bf16": (4, 2), "bf16-weights": (2, 2)}  # (frozen weights, activations)
VARIANTS: dict[str, tuple[str, Choice]] = {
    "sparsegrad": ("sparsegrad", Choice(support_block=2.0)),  # a causal LM's default: dynamic in a 2k block
    "sparsegrad-fixed": ("sparsegrad", Choice(support="fixed", support_block=2.0)),
    "sparsegrad-unconfined": ("sparsegrad", Choice()),
    "lora": ("lora", Choice()),
    "full": ("full", Choice()),
}
COLUMNS = ("weights", "gradients", "optimizer", "basis", "side path", "activations")


def model_table(shape: str, precision: str, batch: int, seq: int) -> dict[str, Estimate]:
    frozen, act = PRECISION_BYTES[precision]
    return {
        name: estimate(
            SHAPES[shape], method, choice, frozen_bytes=frozen, act_bytes=act, batch=batch, seq=seq
        )
        for name, (method, choice) in VARIANTS.items()
    }


def measure_one(variant: str, precision: str, batch: int, seq: int) -> dict[str, float]:
    """Train `variant` 3 steps on SmolLM2-135M on CPU; peak RSS growth in MiB (run in a fresh process)."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.step_time import RssSampler
    from training.hparams import resolve
    from training.methods import get_method
    from training.model_setup import default_models_dir
    from training.precision import resolve_precision, set_storage

    torch.manual_seed(0)
    prec = resolve_precision(precision, torch.device("cpu"))
    path = default_models_dir() / "SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=prec.frozen_dtype)
    # the interpreter, libraries and what loading left behind: RSS now, less the weights it holds
    base = RssSampler().rss() - sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(0, 49152, (batch, seq))
    batch_d = {"input_ids": ids, "labels": ids}
    method, choice = VARIANTS[variant]
    raw: dict[str, Any] = {"density": choice.density, "basis_steps": 1, "n_epochs": 1, "batch_size": batch}
    if method == "sparsegrad":  # a block covering the whole layer (1/density) is no block
        raw |= {"support": choice.support, "support_block": choice.support_block or 1 / choice.density}
    hp = resolve(raw, batch, "causal_lm", method, 8192)
    with prec.autocast():  # the engine's own set-up (training.setup)
        tuner = get_method(method)
        prepared = tuner.prepare(model, hp, tuner.config(hp, "causal_lm", None, variant), [batch_d])
    trained, opt = prepared.model, prepared.optimizer  # LoRA: a PeftModel around `model`
    set_storage(trained, prec.frozen_dtype)
    with RssSampler() as sampler:  # the training steps (the model counts neither set-up nor basis phase)
        for _ in range(3):
            with prec.autocast():
                loss = trained(**batch_d).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return {"peak_mib": (sampler.peak - base) / MiB}


def _measure(variant: str, precision: str, batch: int, seq: int) -> float:
    cmd = [sys.executable, "-m", "bench.memory", "--one", variant, "--precision", precision]
    cmd += ["--batch", str(batch), "--seq", str(seq)]
    # glibc returns every freed block of 64 KiB or more to the system: RSS then follows live tensors, not
    # the heap's high-water mark (the default threshold grows up to 32 MiB after the first large free)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_mib"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-7b")
    ap.add_argument("--precision", choices=sorted(PRECISION_BYTES), default="bf16-weights")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--measure", action="store_true", help="measure peaks on CPU (smollm2-135m only)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.precision, args.batch, args.seq)))
        return
    table = model_table(args.shape, args.precision, args.batch, args.seq)
    shape = SHAPES[args.shape]
    print(
        f"{args.shape}: {shape.params / 1e6:,.0f} M parameters, {args.precision}, "
        f"batch {args.batch} x {args.seq} tokens; MiB"
    )
    head = ["method", *COLUMNS, "total", "x LoRA"]
    measured: dict[str, Any] = {}
    if args.measure:
        head += ["measured peak", "model / measured"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "--:|" * (len(head) - 1))
    lora = table["lora"].total
    for name, est in table.items():
        cells = [f"{est.parts.get(c, 0) / MiB:,.0f}" for c in COLUMNS]
        row = [name, *cells, f"{est.total / MiB:,.0f}", f"{est.total / lora:.2f}"]
        if args.measure:
            measured[name] = _measure(name, args.precision, args.batch, args.seq)
            row += [f"{measured[name]:,.0f}", f"{est.total / MiB / measured[name]:.2f}"]
        print("| " + " | ".join(row) + " |")
    weights_bf16 = 2 * shape.params
    over = {v: (table[v].total - lora) / weights_bf16 for v in VARIANTS if v.startswith("sparsegrad")}
    print(
        f"SparseGrad over LoRA, as a share of the model's bf16 weights ({weights_bf16 / MiB:,.0f} MiB): "
        + ", ".join(f"{v} {x:+.1%}" for v, x in over.items())
        + " (target for the causal-LM default, sparsegrad: at most +15%)"
    )


def bench() -> None:
    """`make bench`'s section: the model for every shape, and SmolLM2's measured peaks after `make models`."""
    from training.model_setup import default_models_dir

    for shape in sorted(SHAPES):
        main(["--shape", shape])
        print()
    if (default_models_dir() / "SmolLM2-135M-Instruct" / "config.json").is_file():
        main(["--shape", "smollm2-135m", "--measure", "--batch", "2", "--seq", "256"])
    else:
        print("(SmolLM2-135M-Instruct is not set up: `make models` adds the measured peaks)")


if __name__ == "__main__":
    main()
