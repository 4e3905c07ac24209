"""The estimate's throughput table (rules/throughput.py): the engine end to end on 300 SST-2 lines, MiniLM.

`.venv/bin/python -m bench.throughput_table sparsegrad lora full meprop`: per method, one
`training.run_training` of 100 steps ("auto" otherwise: batch 8), no validation file; prints the trained
tokens over the call's wall time (model load, basis phase and saving included), the same definition as a
finished job's throughput (core.queries.throughput).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from training import run_training
from training.spec import JobSpec

SST2 = Path("/work/shared/data/sst2/train.jsonl")


def main(methods: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp())
    train = tmp / "train.jsonl"
    train.write_text("\n".join(SST2.read_text().splitlines()[:300]) + "\n")
    for method in methods:
        started = time.perf_counter()
        spec = JobSpec(model="all-MiniLM-L6-v2", method=method, hyperparameters={"max_steps": 100})  # type: ignore[arg-type]
        res = run_training(spec, train, None, tmp / method)
        wall = time.perf_counter() - started
        row = {
            "method": method,
            "steps": res.step,
            "trained_tokens": res.trained_tokens,
            "wall_s": round(wall, 2),
        }
        print(json.dumps({**row, "tokens_per_s": round(res.trained_tokens / wall, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
