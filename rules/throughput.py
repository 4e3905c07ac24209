"""Measured CPU throughput per model and method: what the estimate's duration uses before this service has
finished a job on the model (a finished job's measured throughput, core.queries.throughput, wins).

Tokens per second = the engine's trained tokens (non-padding tokens of the batches it stepped on) over the
whole `training.run_training` call's wall time (model load, basis phase and saving included), the same
definition as a finished job's throughput (trained_tokens over started_at..finished_at). Only measured
numbers belong here; a model or method without one gets no duration from the table.
"""

from __future__ import annotations

# Measured 2026-12-06 on the 2-core development VM (CPU, fp32), idle but for the run:
#   .venv/bin/python -m bench.throughput_table sparsegrad lora full meprop   (one process, that order)
# (the same code, run then from a scratch script): training.run_training of all-MiniLM-L6-v2, max_steps
# 100, on the first 300 lines of /work/shared/data/sst2/train.jsonl, no
# validation file (auto: batch 8; 100 steps, 10,614 trained tokens each), and divides trained tokens by the
# call's wall time: sparsegrad 61.5 s (172.6 tok/s; first in the process), lora 19.9 s, full 104.0 s,
# meprop 29.6 s. Sparsegrad again alone in a fresh process (`… bench.throughput_table sparsegrad`, same day):
# 67.2 s, 158.0 tok/s: the table keeps that slower one. SmolLM2-135M was not measured (not installed here).
TABLE_BASIS = "all-MiniLM-L6-v2 on 300 SST-2 lines, CPU, 2026-12-06"

# (model, method) -> tokens per second
CPU_TOKENS_PER_SECOND: dict[tuple[str, str], float] = {
    ("all-MiniLM-L6-v2", "sparsegrad"): 158.0,
    ("all-MiniLM-L6-v2", "lora"): 532.0,
    ("all-MiniLM-L6-v2", "full"): 102.1,
    ("all-MiniLM-L6-v2", "meprop"): 358.2,
}


def table_throughput(model: str, method: str) -> float | None:
    """The table's tokens/second for `model` trained with `method`, None where nothing was measured."""
    return CPU_TOKENS_PER_SECOND.get((model, method))
