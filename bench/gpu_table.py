"""SparseGrad (its default, fixed and unconfined supports), LoRA and full fine-tuning on SmolLM2-135M's shape.

The model is built from SmolLM2-135M-Instruct's configuration written below (LLaMA, 30 blocks, hidden 576)
with seeded random weights, so nothing is downloaded; the batches are seeded random tokens (batch 4 x 256 by
default). Every method goes through the engine's own code path (`training.hparams.resolve` for the
hyper-parameters and learning rate, `training.methods.prepare`, `training.methods.save_delta`) and trains
`warmup + steps` optimizer steps on one fixed batch in the given precision (training.precision: bf16 is
the engine's CUDA default; bf16-weights also stores the frozen weights in bf16).

Per method: median step time of the timed steps (after the warm-up; CUDA synchronised), peak memory during
the steps (CUDA: max_memory_allocated, reset per method; CPU: peak RSS of the process while stepping), the
delta as saved, the loss on the fixed batch before and after training (a float32 forward), and step time and
peak memory as multiples of LoRA's. Exits 1 when a number is not finite or a method's loss did not go down.

    python3 -m bench.gpu_table                                  # SmolLM2-135M shape on CUDA, bf16
    python3 -m bench.gpu_table --shape tiny --device cpu --steps 3
    python3 -m bench.gpu_table --precision fp32 --json bench/out/gpu_table.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from bench.step_time import RssSampler, dir_bytes
from training.hparams import resolve
from training.methods import get_method
from training.precision import resolve_precision, set_storage

# method label -> (engine method, hyper-parameters beside the auto ones). SparseGrad on a causal LM defaults
# to a dynamic support in a 2k block (training.hparams.auto_support_block); "unconfined" lifts the block.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "sparsegrad": ("sparsegrad", {}),
    "sparsegrad-fixed": ("sparsegrad", {"support": "fixed"}),
    "sparsegrad-unconfined": ("sparsegrad", {"support_block": 1000}),
    "lora": ("lora", {}),
    "full": ("full", {}),
}
METHODS = tuple(VARIANTS)
# SmolLM2-135M-Instruct's config.json (HuggingFaceTB), and a tiny LLaMA of the same layout for CPU runs.
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "vocab_size": 49152,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
    "tiny": {
        "vocab_size": 512,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
}


@dataclass
class Options:
    shape: str = "smollm2-135m"
    device: str = "cuda"
    precision: str = "bf16"
    steps: int = 20
    warmup: int = 3
    batch: int = 4
    seq: int = 256
    density: float = 0.01
    basis_steps: int = 10
    lr_multiplier: float = 1.0
    seed: int = 0
    json: Path | None = None


@dataclass
class Row:
    method: str
    step_ms: float
    peak_bytes: int  # CUDA: max_memory_allocated during the steps; CPU: peak RSS while stepping
    prepare_s: float  # prepare(): the basis phase for SparseGrad, peft wrapping for LoRA
    delta_bytes: int
    loss_before: float
    loss_after: float
    trainable: int
    learning_rate: float
    lora_rank: int | None


def build_config(shape: str) -> LlamaConfig:
    """The LLaMA configuration of `shape` (transformers 5 takes the rope base in rope_parameters)."""
    s = dict(SHAPES[shape])
    theta = s.pop("rope_theta")
    return LlamaConfig(
        **s,
        hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        attention_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def random_batch(vocab: int, batch: int, seq: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tokens, every position learnt (labels = input_ids; the model shifts them)."""
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """The loss in float32 (no autocast), so that bf16 rounding cannot hide or fake a small change."""
    with torch.no_grad():
        return float(model(**batch).loss)


def measure(
    method: str,
    base: nn.Module,
    fixed: dict[str, torch.Tensor],
    basis_batches: list[dict[str, torch.Tensor]],
    opts: Options,
) -> Row:
    """Prepare a fresh copy of `base` with `method`, train on `fixed`, save the delta; one table row."""
    device = torch.device(opts.device)
    prec = resolve_precision(opts.precision, device)
    kind, extra = VARIANTS[method]
    raw: dict[str, Any] = {
        **extra,
        "density": opts.density,
        "basis_steps": opts.basis_steps,
        "batch_size": opts.batch,
        "max_seq_length": opts.seq,
        "n_epochs": 1,
        "learning_rate_multiplier": opts.lr_multiplier,
    }
    n_train = opts.batch * (opts.warmup + opts.steps)
    positions = int(SHAPES[opts.shape]["max_position_embeddings"])
    hp = resolve(raw, n_train, "causal_lm", kind, positions)
    tuner = get_method(kind)
    cfg = tuner.config(hp, "causal_lm", None, opts.shape)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = copy.deepcopy(base).to(device)
    batch = _to(fixed, device)
    t0 = time.perf_counter()
    with prec.autocast():
        prepared = tuner.prepare(model, hp, cfg, [_to(b, device) for b in basis_batches])
    set_storage(prepared.model, prec.frozen_dtype)  # bf16-weights: frozen weights to bf16
    _sync(device)
    prepare_s = time.perf_counter() - t0
    model, optimizer = prepared.model, prepared.optimizer
    model.train()
    loss_before = _loss(model, batch)
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sampler = RssSampler() if device.type == "cpu" else None
    with sampler or nullcontext():
        for i in range(opts.warmup + opts.steps):
            _sync(device)
            start = time.perf_counter()
            with prec.autocast():
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if i >= opts.warmup:
                times.append(1000 * (time.perf_counter() - start))
    peak = sampler.peak if sampler is not None else torch.cuda.max_memory_allocated(device)
    loss_after = _loss(model, batch)
    with tempfile.TemporaryDirectory() as tmp:
        out = tuner.save_delta(model, Path(tmp) / "delta", "causal_lm", None, opts.shape, {})
        delta_bytes = dir_bytes(out)
    row = Row(
        method=method,
        step_ms=statistics.median(times),
        peak_bytes=int(peak),
        prepare_s=prepare_s,
        delta_bytes=delta_bytes,
        loss_before=loss_before,
        loss_after=loss_after,
        trainable=prepared.trainable_parameters,
        learning_rate=hp.learning_rate,
        lora_rank=prepared.lora_rank,
    )
    del model, optimizer, prepared, batch
    return row


def run(opts: Options) -> list[Row]:
    """Every method on the same seeded model, fixed batch and basis batches, one after the other."""
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device (use --device cpu for a CPU run)")
    torch.manual_seed(opts.seed)
    base = LlamaForCausalLM(build_config(opts.shape)).float()
    vocab = int(SHAPES[opts.shape]["vocab_size"])
    gen = torch.Generator().manual_seed(opts.seed)
    fixed = random_batch(vocab, opts.batch, opts.seq, gen)
    basis_batches = [random_batch(vocab, opts.batch, opts.seq, gen) for _ in range(opts.basis_steps)]
    rows = []
    for method in METHODS:
        torch.manual_seed(opts.seed)  # LoRA's A matrices start alike however often this runs
        rows.append(measure(method, base, fixed, basis_batches, opts))
        r = rows[-1]
        print(
            f"{method:>18}: {r.step_ms:8.1f} ms/step, peak {r.peak_bytes / 2**20:8.1f} MiB, "
            f"loss {r.loss_before:.4f} -> {r.loss_after:.4f} ({r.loss_after - r.loss_before:+.2e})",
            flush=True,
        )
    return rows


def problems(rows: list[Row]) -> list[str]:
    """What is wrong with a table: non-finite numbers, a loss that did not go down, a missing method."""
    out = [f"{m}: missing" for m in METHODS if m not in {r.method for r in rows}]
    for r in rows:
        numbers = [r.step_ms, r.prepare_s, r.loss_before, r.loss_after]
        if not all(math.isfinite(x) for x in numbers) or r.peak_bytes <= 0 or r.delta_bytes <= 0:
            out.append(f"{r.method}: a number is not finite or positive: {asdict(r)}")
        elif not r.loss_after < r.loss_before:
            out.append(f"{r.method}: loss did not go down ({r.loss_before:.5f} -> {r.loss_after:.5f})")
    return out


def format_table(rows: list[Row], opts: Options) -> str:
    """A Markdown table, ratios against the LoRA row."""
    lora = next(r for r in rows if r.method == "lora")
    memory = "peak CUDA MiB" if opts.device == "cuda" else "peak RSS MiB"
    lines = [
        f"{opts.shape}, {opts.device}, {opts.precision}, batch {opts.batch} x {opts.seq}, density "
        f"{opts.density}, {opts.warmup} warm-up + {opts.steps} timed steps on one fixed batch",
        "",
        f"| method | step ms | x LoRA | {memory} | x LoRA | delta bytes | loss before | loss after | "
        "loss change | trainable | lr | prepare s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        name = f"{r.method} (r={r.lora_rank})" if r.lora_rank else r.method
        lines.append(
            f"| {name} | {r.step_ms:.1f} | {r.step_ms / lora.step_ms:.2f} | {r.peak_bytes / 2**20:.1f} | "
            f"{r.peak_bytes / lora.peak_bytes:.2f} | {r.delta_bytes:,} | {r.loss_before:.4f} | "
            f"{r.loss_after:.4f} | {r.loss_after - r.loss_before:+.2e} | {r.trainable:,} | "
            f"{r.learning_rate:g} | {r.prepare_s:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default=Options.shape)
    p.add_argument("--device", choices=["cuda", "cpu"], default=Options.device)
    p.add_argument("--precision", choices=["bf16", "bf16-weights", "fp32"], default=Options.precision)
    p.add_argument("--steps", type=int, default=Options.steps, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=Options.warmup)
    p.add_argument("--batch", type=int, default=Options.batch)
    p.add_argument("--seq", type=int, default=Options.seq)
    p.add_argument("--density", type=float, default=Options.density)
    p.add_argument("--basis-steps", type=int, default=Options.basis_steps)
    p.add_argument("--lr-multiplier", type=float, default=Options.lr_multiplier, help="on the auto rates")
    p.add_argument("--seed", type=int, default=Options.seed)
    p.add_argument("--json", type=Path, help="also write the rows and the table here")
    opts = Options(**vars(p.parse_args(argv)))
    if opts.steps < 1 or opts.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.perf_counter()
    rows = run(opts)
    table = format_table(rows, opts)
    print("\n" + table)
    if opts.json is not None:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            **{k: str(v) for k, v in asdict(opts).items()},
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if opts.device == "cuda" else None,
            "seconds": time.perf_counter() - started,
        }
        opts.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows], "table": table}))
        print(f"wrote {opts.json}")
    wrong = problems(rows)
    for line in wrong:
        print(f"gpu_table: FAILED {line}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
