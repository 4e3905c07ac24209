"""What SparseGrad's basis phase costs: wall time, the part spent on the Gram sums and `eigh`, and peak RSS.

One `compute_basis` (default config: 10 basis steps, the model's default targets) in this process, on
all-MiniLM-L6-v2 (2-class classifier, SST-2 batches of 16 x 128, padded) or on a SmolLM2-135M-shaped LLaMA
(random weights, its real widths: hidden 576, MLP 1536, 30 blocks, vocab 49152; batches of 8 x 128 random
tokens). Run it once per process (peak RSS is the process's own); `--code DIR` imports `sparsegrad` from
another checkout (e.g. main's, to compare before and after a change):

    .venv/bin/python -m bench.basis_cost --model minilm
    .venv/bin/python -m bench.basis_cost --model smollm2-shape --code /work/main
    .venv/bin/python -m bench.basis_cost --model smollm2-shape --kernels   # the Gram part, f32 vs f64

Prints one JSON line: seconds (the whole call), gram_eigh_seconds (`Basis.extra_seconds`: Gram products,
sums and eigh), eigh_seconds (eigh alone, timed again on each group's Gram-sized PSD matrix in the Gram
dtype), peak_rss_mib (sampled every 5 ms during the call, minus the RSS before it), gram_mib (the Gram sums
alive together: every group's two sums, in the Gram dtype) and the dtype.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from bench.step_time import RssSampler, make_batches, minilm_dir


def minilm(steps: int) -> tuple[Any, list[dict[str, Any]]]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2)
    return model, make_batches(tok, "padded", steps)


def smollm2_shape(steps: int) -> tuple[Any, list[dict[str, Any]]]:
    from training.testing import random_model

    model = random_model(
        "llama",
        49152,
        seed=0,
        layers=30,
        positions=2048,
        hidden_size=576,
        intermediate_size=1536,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    batches = []
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (8, 128))
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return model, batches


def kernels(d_out: int, d_in: int, layers: int, reps: int = 5) -> dict[str, float]:
    """The Gram part alone, float32 against float64 sums, interleaved, min of `reps` (seconds): one basis
    step's products and sums over `layers` same-shaped layers of float32 gradients (D_out, D_in), then
    the two eighs. Float32 is the code before float64 sums (in-place addmm into float32 sums)."""
    from sparsegrad.basis import _eigvecs_desc, _gram_add

    torch.manual_seed(0)
    grads = [torch.randn(d_out, d_in) for _ in range(layers)]
    best = dict.fromkeys(("f32 sums", "f64 sums", "f32 eigh", "f64 eigh"), float("inf"))
    for _ in range(reps):
        for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
            acc_out = torch.zeros(d_out, d_out, dtype=dtype)
            acc_in = torch.zeros(d_in, d_in, dtype=dtype)
            t0 = time.perf_counter()
            for g in grads:
                if dtype == torch.float32:  # the previous code: addmm into the float32 sum, in place
                    _gram_add_f32(acc_out, g, rows=True)
                    _gram_add_f32(acc_in, g, rows=False)
                else:
                    _gram_add(acc_out, g, rows=True)
                    _gram_add(acc_in, g, rows=False)
            t1 = time.perf_counter()
            _eigvecs_desc(acc_out), _eigvecs_desc(acc_in)
            t2 = time.perf_counter()
            best[f"{tag} sums"] = min(best[f"{tag} sums"], t1 - t0)
            best[f"{tag} eigh"] = min(best[f"{tag} eigh"], t2 - t1)
    return {k: round(v, 3) for k, v in best.items()}


def _gram_add_f32(acc: torch.Tensor, x: torch.Tensor, rows: bool) -> None:
    """The Gram update before float64 sums (for `kernels`): float32 addmm in place, upper row blocks."""
    d = acc.shape[0]
    n_blocks = max(1, min(4, d // 384))
    edges = [d * i // n_blocks for i in range(n_blocks + 1)]
    for lo, hi in zip(edges, edges[1:], strict=False):
        if rows:
            acc[lo:hi, lo:].addmm_(x[lo:hi], x[lo:].t())
        else:
            acc[lo:hi, lo:].addmm_(x[:, lo:hi].t(), x[:, lo:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["minilm", "smollm2-shape"], default="minilm")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--code", help="a checkout whose sparsegrad package to measure")
    parser.add_argument("--kernels", action="store_true", help="time the Gram part alone (see `kernels`)")
    args = parser.parse_args(argv)
    if args.kernels:
        torch.set_num_threads(1)
        widths = {"minilm": (1536, 384, 6), "smollm2-shape": (1536, 576, 30)}[args.model]
        print(json.dumps({"model": args.model, "threads": 1, **kernels(*widths)}))
        return
    if args.code:
        sys.path.insert(0, args.code)
    import sparsegrad.basis as basis_mod
    from sparsegrad.config import SparseGradConfig

    print(basis_mod.__file__, file=sys.stderr)
    model, batches = (minilm if args.model == "minilm" else smollm2_shape)(args.steps)
    cfg = SparseGradConfig(basis_steps=args.steps)
    dtype = getattr(basis_mod, "GRAM_DTYPE", torch.float32)  # the code before float64 sums had none
    sampler = RssSampler()
    before = sampler.rss()
    t0 = time.perf_counter()
    with sampler:
        basis = basis_mod.compute_basis(model, iter(batches), cfg)
    seconds = time.perf_counter() - t0
    sizes = sorted({t.shape[0] for t in [*basis.p.values(), *basis.q.values()]})
    eigh = 0.0
    for group in [*basis.p.values(), *basis.q.values()]:
        d = group.shape[0]
        x = torch.randn(d, d + 8, dtype=dtype)
        gram = x @ x.t()
        t1 = time.perf_counter()
        torch.linalg.eigh(gram, UPLO="U")
        eigh += time.perf_counter() - t1
    gram_bytes = sum(t.shape[0] ** 2 for t in [*basis.p.values(), *basis.q.values()]) * dtype.itemsize
    print(
        json.dumps(
            {
                "model": args.model,
                "gram_dtype": str(dtype).removeprefix("torch."),
                "steps": basis.steps,
                "groups": len(basis.p),
                "sizes": sizes,
                "seconds": round(seconds, 2),
                "gram_eigh_seconds": round(basis.extra_seconds, 2),
                "eigh_seconds": round(eigh, 2),
                "peak_rss_mib": round((sampler.peak - before) / 2**20, 1),
                "gram_mib": round(gram_bytes / 2**20, 1),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
