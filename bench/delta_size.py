"""Delta size and quality per encoding and cap: all-MiniLM-L6-v2 on SST-2 (the bench.quality job).

Each variant (a set of SparseGrad job settings beside the default job of bench.quality: 2,000 SST-2 lines,
2 epochs, selection "adam", lr 2e-3) trains through the service's engine per seed; from the saved delta
(format 4) it reports, with `sparsegrad.memory`'s size functions (the ones `save_delta` chooses by):
the bytes of every form forced on every layer (csr, bitmap, block, dense ΔW), of the form `save_delta`
picked ("auto", the file written), and of the same in bf16; the union's share of the coefficients and of
the basis rows and columns per role (up, down); dev accuracy of the delta as written and of its bf16 copy
(merged into a fresh base, evaluated here), and the bf16 copy's error on the merged target weights. Then
the LLaMA-7B shape's delta from the same size functions, fed with the measured fractions.

"default" is the service's job (a 20k block and bf16 values for classification, a 2k block for a causal
LM), "unconfined" the same without any block (the classification default until 2026-12-06); paired lines
compare with --against ("unconfined"). "auto" sizes count ΔC values in float32, "auto bf16" in bf16 (what
the default writes); basis columns are bf16 in both (they are bf16 numbers). `--model smollm2` trains
the causal-LM job instead (SmolLM2-135M-Instruct on chitchat, the service's defaults, --steps optimizer
steps; `make models` and SGFT_DATA_DIR=$PWD/var first) and reports its sizes, fractions and validation
loss. Every run's row is saved as row-*.json in --out at once;
`--report FOLDER…` prints the tables from saved rows without training.

`python -m bench.delta_size --seeds 0 --variants unconfined,default` (or `SGFT_BENCH=delta_size make bench`);
SGFT_BENCH_DELTA_SEEDS, SGFT_BENCH_DELTA_VARIANTS, SGFT_BENCH_DELTA_TRAIN, SGFT_BENCH_DELTA_JOBS,
SGFT_BENCH_DELTA_MODEL. Writes bench/out/delta_size_<model>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from sparsegrad.memory import (
    F32,
    SHAPES,
    basis_columns_bytes,
    delta_dense_bytes,
    delta_group_bytes,
    layer_encoding_bytes,
)

OUT_DIR = Path(__file__).resolve().parent / "out"
VARIANTS: dict[str, dict[str, Any]] = {
    # "default": the service's defaults (a 20k block and bf16 values for classification, 2k for a causal LM);
    "default": {},
    # support_block 100 x density 0.01 >= 1: no block (the classification default until 2026-12-06)
    "unconfined": {"support_block": 100.0, "delta_dtype": "float32"},
    "float32": {"delta_dtype": "float32"},  # the default's support with float32 values (before 2026-12-06)
    "cap05": {"max_delta_density": 0.05},
    "cap02": {"max_delta_density": 0.02},
    "block4": {"support_block": 4.0},
    "block4-cap02": {"support_block": 4.0, "max_delta_density": 0.02},
    "block2": {"support_block": 2.0},
    "block8": {"support_block": 8.0},
    "block12": {"support_block": 12.0},
    "block16": {"support_block": 16.0},
    "block20": {"support_block": 20.0},
    "block24": {"support_block": 24.0},
}
FORMS = ("csr", "bitmap", "block")
# basis columns are stored as bf16, exactly (sparsegrad.basis.BASIS_VALUES; rows measured before 2026-12-06,
# second round, counted them in the value dtype)
BASIS_BYTES = 2


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SGFT_BENCH_DELTA_{name}", default)


def analyse(delta_dir: Path) -> dict[str, Any]:
    """Sizes per form (float32 and bf16) and the union's fractions per role, from a version-4 delta."""
    from safetensors import safe_open

    config = json.loads((delta_dir / "sparsegrad_delta.json").read_text())
    groups: dict[str, list[dict[str, Any]]] = {}
    for spec in config["layers"].values():  # by role: "up", "down" (group names are "up:1536x384"...)
        groups.setdefault(spec["group"].split(":")[0], []).append(spec)
    sizes = {f"{form}{suffix}": 0 for form in (*FORMS, "dense", "auto") for suffix in ("", "_bf16")}
    roles: dict[str, dict[str, float]] = {}
    with safe_open(str(delta_dir / "sparsegrad_delta.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        dense_params = sum(
            f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in keys if k.startswith("dense.")
        )
        for role, specs in groups.items():
            d_out, d_in = specs[0]["shape"]
            bases = {s["basis"] for s in specs if s["basis"]}
            nnz = [int(s["nnz"]) for s in specs]
            if bases:
                (b,) = bases
                n_rows, n_cols = (
                    f.get_slice(f"{b}.rows").get_shape()[0],
                    f.get_slice(f"{b}.cols").get_shape()[0],
                )
            else:  # stored dense: rows and columns the union spans are not in the file
                n_rows, n_cols = d_out, d_in
            for suffix, vb in (("", F32), ("_bf16", 2)):
                basis = basis_columns_bytes(d_out, n_rows, d_in, n_cols, True, BASIS_BYTES)
                for form in FORMS:
                    sizes[f"{form}{suffix}"] += basis + sum(
                        layer_encoding_bytes(z, n_rows, n_cols, vb)[form] for z in nnz
                    )
                sizes[f"dense{suffix}"] += delta_dense_bytes([(d_out, d_in)] * len(nnz), vb)
                sizes[f"auto{suffix}"] += delta_group_bytes(
                    d_out, d_in, nnz, n_rows, n_cols, True, vb, BASIS_BYTES
                )[1]
            roles[role] = {
                "layers": len(specs),
                "union": sum(nnz) / (len(nnz) * d_out * d_in),
                "rows": n_rows / d_out,
                "cols": n_cols / d_in,
            }
    for key in sizes:
        sizes[key] += dense_params
    return {
        "sizes": sizes,
        "roles": roles,
        "file_bytes": (delta_dir / "sparsegrad_delta.safetensors").stat().st_size,
        "dense_mlp_bytes": sum(F32 * s["shape"][0] * s["shape"][1] for s in config["layers"].values()),
    }


def _bf16_copy(src: Path, dst: Path) -> None:
    """The delta with ΔC values, basis columns and ΔW in bf16: what save_delta(value_dtype="bfloat16")
    writes for the same model (it casts the same float32 tensors)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src / "sparsegrad_delta.safetensors"))
    low = {
        k: (t.to(torch.bfloat16) if t.is_floating_point() and not k.startswith("dense.") else t)
        for k, t in tensors.items()
    }
    dst.mkdir(parents=True, exist_ok=True)
    save_file(
        low, str(dst / "sparsegrad_delta.safetensors"), metadata={"format": "sparsegrad", "version": "4"}
    )
    config = json.loads((src / "sparsegrad_delta.json").read_text())
    (dst / "sparsegrad_delta.json").write_text(json.dumps({**config, "value_dtype": "bfloat16"}))


def _accuracy(delta_dir: Path, dev: Path) -> tuple[float, Any]:
    """Dev accuracy of a fresh MiniLM with the delta merged (sparsegrad.load_delta), and its state."""
    import torch

    import sparsegrad as sg
    from training.models import load_model, load_tokenizer, registry_entry

    config = json.loads((delta_dir / "sparsegrad_delta.json").read_text())
    entry = registry_entry("all-MiniLM-L6-v2", None)
    model = sg.load_delta(load_model(entry, "classification", config["labels"], False), delta_dir)
    tok = load_tokenizer(entry)
    rows = [json.loads(line) for line in dev.read_text().splitlines() if line.strip()]
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            chunk = rows[i : i + 64]
            enc = tok(
                [r["text"] for r in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt"
            )
            pred = model(**enc).logits.argmax(-1).tolist()
            right += sum(int(p) == int(r["label"]) for p, r in zip(pred, chunk, strict=True))
    return right / len(rows), {n: p.detach().clone() for n, p in model.named_parameters()}


def run_variant(args: tuple[str, int, float, Path, Path, Path, Path]) -> dict[str, Any]:
    """Train one variant and seed, then measure its delta (its row is also written to `out` at once)."""
    from bench.quality import run_one

    name, seed, epochs, train, valid, work, out_dir = args
    row = run_one("sparsegrad", seed, epochs, train, valid, work, VARIANTS[name])
    delta = work / "delta"
    measured = analyse(delta)
    _bf16_copy(delta, work / "delta_bf16")
    acc32, w32 = _accuracy(delta, valid)
    acc16, w16 = _accuracy(work / "delta_bf16", valid)
    config = json.loads((delta / "sparsegrad_delta.json").read_text())
    errors = []
    for layer in config["layers"]:
        a, b = w32[f"{layer}.weight"], w16[f"{layer}.weight"]
        errors.append(float((a - b).abs().max()))
    out = {
        "variant": name,
        "settings": VARIANTS[name],
        "seed": seed,
        "accuracy": row["accuracy"],
        "accuracy_reloaded": acc32,
        "accuracy_bf16": acc16,
        "bf16_max_abs_weight_error": max(errors),
        "wall_s": row["wall_s"],
        **measured,
    }
    print(json.dumps(out), flush=True)
    (out_dir / f"row-{name}-{seed}.json").write_text(json.dumps(out))
    return out


CAUSAL_STEPS = 30  # a short SmolLM2 job: a block's union fills it and its rows/columns are fixed by then


def run_causal(args: tuple[str, int, int, Path, Path, Path, Path, Path]) -> dict[str, Any]:
    """Train one variant of the causal-LM job (SmolLM2-135M-Instruct on chitchat, the service's defaults
    but `steps` optimizer steps, float32) and measure its delta as `run_variant` does (sizes and fractions,
    validation loss; no accuracy, no bf16 merge)."""
    import torch

    from training import run_training
    from training.model_setup import SMOLLM2_NAME
    from training.spec import JobSpec

    name, seed, steps, train, valid, work, out_dir, models_dir = args
    hp = {**VARIANTS[name], "max_steps": steps, "eval_every": steps, "checkpoint_every": steps}
    hp["result_checkpoint"] = "last"
    spec = JobSpec(model=SMOLLM2_NAME, method="sparsegrad", task="causal_lm", hyperparameters=hp, seed=seed)  # type: ignore[arg-type]
    result = run_training(spec, train, valid, work, models_dir=models_dir, precision="fp32")
    assert result.delta_dir is not None
    measured = analyse(result.delta_dir)  # bf16 sizes from the size functions (no bf16 copy merged here)
    config = json.loads((result.delta_dir / "sparsegrad_delta.json").read_text())
    out = {
        "variant": name,
        "model": SMOLLM2_NAME,
        "settings": VARIANTS[name],
        "support_block": config["config"]["support_block"],
        "seed": seed,
        "steps": result.step,
        "valid_loss": result.metrics.get("valid_loss"),
        "threads": torch.get_num_threads(),
        **measured,
    }
    print(json.dumps(out), flush=True)
    (out_dir / f"row-smollm2-{name}-{seed}.json").write_text(json.dumps(out))
    return out


def shape_7b(roles: dict[str, dict[str, float]], value_bytes: int = F32) -> tuple[int, int]:
    """(bytes of the LLaMA-7B shape's up + down delta from `delta_group_bytes` fed with `roles`' measured
    fractions, bytes of its dense float32 ΔW)."""
    shape = SHAPES["llama-7b"]
    total = dense = 0
    for role, (d_out, d_in) in (("up", (shape.d_ff, shape.d_model)), ("down", (shape.d_model, shape.d_ff))):
        r = roles[role]
        nnz = [round(r["union"] * d_out * d_in)] * shape.n_layers
        rows, cols = math.ceil(r["rows"] * d_out), math.ceil(r["cols"] * d_in)
        total += delta_group_bytes(d_out, d_in, nnz, rows, cols, True, value_bytes, BASIS_BYTES)[1]
        dense += delta_dense_bytes([(d_out, d_in)] * shape.n_layers)
    return total, dense


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | seeds | dev acc (mean) | bf16 acc | union up / down | rows·cols up | rows·cols down "
        "| csr MB | bitmap MB | block MB | dense MB | auto MB (% dense) | auto bf16 MB (%) | 7B auto GB (%) "
        "| 7B bf16 GB (%) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]

        def mean(key: str, mine: list[dict[str, Any]] = mine) -> float:
            return statistics.mean(r[key] for r in mine)

        def size(key: str, mine: list[dict[str, Any]] = mine) -> float:
            return statistics.mean(r["sizes"][key] for r in mine) / 1e6

        def role(rl: str, key: str, mine: list[dict[str, Any]] = mine) -> float:
            return statistics.mean(r["roles"][rl][key] for r in mine)

        dense_mlp = mine[0]["dense_mlp_bytes"] / 1e6
        fractions = {rl: {k: role(rl, k) for k in ("union", "rows", "cols")} for rl in ("up", "down")}
        b7, d7 = shape_7b(fractions)
        b7h, _ = shape_7b(fractions, 2)
        lines.append(
            f"| {name} | {','.join(str(r['seed']) for r in mine)} | {100 * mean('accuracy'):.2f} | "
            f"{100 * mean('accuracy_bf16'):.2f} | {role('up', 'union'):.3f} / {role('down', 'union'):.3f} | "
            f"{role('up', 'rows'):.2f}·{role('up', 'cols'):.2f} | {role('down', 'rows'):.2f}·"
            f"{role('down', 'cols'):.2f} | {size('csr'):.1f} | {size('bitmap'):.1f} | {size('block'):.1f} | "
            f"{size('dense'):.1f} | {size('auto'):.2f} ({100 * size('auto') / dense_mlp:.1f}%) | "
            f"{size('auto_bf16'):.2f} ({100 * size('auto_bf16') / dense_mlp:.1f}%) | {b7 / 1e9:.2f} "
            f"({100 * b7 / d7:.1f}%) | {b7h / 1e9:.2f} ({100 * b7h / d7:.1f}%) |"
        )
    return "\n".join(lines)


def paired(rows: list[dict[str, Any]], variant: str, against: str = "default") -> str | None:
    """Dev-accuracy difference of `variant` to `against` over the seeds both ran: mean ± standard error in
    points, and on how many seeds it was at least as good (the paired form of bench.quality.verdict)."""
    acc = {(r["variant"], r["seed"]): 100 * r["accuracy"] for r in rows}
    seeds = sorted(s for v, s in acc if v == variant and (against, s) in acc)
    if not seeds:
        return None
    diffs = [acc[(variant, s)] - acc[(against, s)] for s in seeds]
    se = f"{statistics.stdev(diffs) / math.sqrt(len(diffs)):.2f}" if len(diffs) > 1 else "n/a"
    good = sum(d >= 0 for d in diffs)
    return (
        f"{variant} − {against}: {statistics.mean(diffs):+.2f} ± {se} points over seeds "
        f"{','.join(map(str, seeds))} ({' / '.join(f'{d:+.2f}' for d in diffs)}; at least as good on "
        f"{good} of {len(seeds)})"
    )


def causal_table(rows: list[dict[str, Any]]) -> str:
    """SmolLM2 rows: validation loss, union and basis fractions, sizes, and the 7B projection they give."""
    lines = [
        "| variant (SmolLM2) | seeds | steps | block | valid loss | union up / down | rows·cols up "
        "| rows·cols down | auto MB (% dense) | auto bf16 MB (%) | 7B auto GB (%) | 7B bf16 GB (%) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == name]

        def role(rl: str, key: str, mine: list[dict[str, Any]] = mine) -> float:
            return statistics.mean(r["roles"][rl][key] for r in mine)

        def size(key: str, mine: list[dict[str, Any]] = mine) -> float:
            return statistics.mean(r["sizes"][key] for r in mine) / 1e6

        dense_mlp = mine[0]["dense_mlp_bytes"] / 1e6
        fractions = {rl: {k: role(rl, k) for k in ("union", "rows", "cols")} for rl in ("up", "down")}
        b7, d7 = shape_7b(fractions)
        b7h, _ = shape_7b(fractions, 2)
        loss = statistics.mean(float(r["valid_loss"]) for r in mine)
        lines.append(
            f"| {name} | {','.join(str(r['seed']) for r in mine)} | {mine[0]['steps']} | "
            f"{mine[0]['support_block']} | {loss:.4f} | {role('up', 'union'):.4f} / "
            f"{role('down', 'union'):.4f} | {role('up', 'rows'):.3f}·{role('up', 'cols'):.3f} | "
            f"{role('down', 'rows'):.3f}·{role('down', 'cols'):.3f} | {size('auto'):.2f} "
            f"({100 * size('auto') / dense_mlp:.1f}%) | {size('auto_bf16'):.2f} "
            f"({100 * size('auto_bf16') / dense_mlp:.1f}%) | {b7 / 1e9:.3f} ({100 * b7 / d7:.2f}%) | "
            f"{b7h / 1e9:.3f} ({100 * b7h / d7:.2f}%) |"
        )
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], against: str = "unconfined") -> str:
    """The table, then each variant's paired difference to `against` (the job without a block)."""
    causal = [r for r in rows if "model" in r]
    rows = [r for r in rows if "model" not in r]
    parts = []
    if rows:
        lines = [paired(rows, v, against) for v in dict.fromkeys(r["variant"] for r in rows) if v != against]
        parts.append(table(rows) + "\n\n" + "\n".join(f"- {line}" for line in lines if line))
    if causal:
        parts.append(causal_table(causal))
    return "\n\n".join(parts)


def _load_rows(folders: list[Path]) -> list[dict[str, Any]]:
    """Rows saved by earlier runs (row-*.json), in file-name order."""
    return [json.loads(p.read_text()) for folder in folders for p in sorted(folder.glob("row-*.json"))]


def main(argv: list[str] | None = None) -> None:
    from bench.quality import _set_threads, write_data

    parser = argparse.ArgumentParser(prog="python -m bench.delta_size", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default=_env("SEEDS", "0"))
    parser.add_argument("--variants", default=_env("VARIANTS", "unconfined,default"))
    parser.add_argument("--model", choices=("minilm", "smollm2"), default=_env("MODEL", "minilm"))
    parser.add_argument("--train", type=int, default=int(_env("TRAIN", "2000")))
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=CAUSAL_STEPS, help="SmolLM2: optimizer steps")
    parser.add_argument("--jobs", type=int, default=int(_env("JOBS", "1")))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--against", default="unconfined", help="the variant the paired lines compare with")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument(
        "--report",
        type=Path,
        nargs="*",
        help="no training: the table from the row-*.json files saved in these folders (default --out)",
    )
    args = parser.parse_args(argv if argv is not None else [])
    if args.report is not None:
        print(report(_load_rows(args.report or [args.out]), args.against))
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="sgft-delta-") as tmp:
        pool = ProcessPoolExecutor(args.jobs, ctx, initializer=_set_threads, initargs=(args.threads,))
        with pool:
            if args.model == "smollm2":
                from bench.causal_lm import _prepare

                models_dir, train, valid = _prepare(Path(tmp))
                causal = [
                    (v, s, args.steps, train, valid, Path(tmp) / f"{v}-{s}", args.out, models_dir)
                    for s in seeds
                    for v in variants
                ]
                rows = list(pool.map(run_causal, causal))
            else:
                train, valid = write_data(Path(tmp) / "data", args.train, 872)
                runs = [
                    (v, s, args.epochs, train, valid, Path(tmp) / f"{v}-{s}", args.out)
                    for s in seeds
                    for v in variants
                ]
                rows = list(pool.map(run_variant, runs))
    text = report(rows, args.against)
    print(text)
    (args.out / f"delta_size_{args.model}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / f"delta_size_{args.model}.md").write_text(text + "\n")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
