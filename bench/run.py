"""`make bench`: every benchmark section, each printing a Markdown table and writing JSON to bench/out/.

Pick sections with SGFT_BENCH (comma list, default all): step, quality, causal_lm, memory, precision,
service, isolation, epochs, inference.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

SECTIONS = {
    "step": "bench.step_time",
    "quality": "bench.quality",
    "causal_lm": "bench.causal_lm",
    "memory": "bench.memory:bench",
    "precision": "bench.precision",
    "delta_size": "bench.delta_size",
    "service": "bench.service_load",
    "isolation": "bench.isolation",
    "epochs": "bench.epochs",
    "inference": "bench.inference",
}


def main() -> int:
    wanted = [s.strip() for s in os.environ.get("SGFT_BENCH", ",".join(SECTIONS)).split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        print(f"unknown bench section(s): {unknown}; choose from {sorted(SECTIONS)}", file=sys.stderr)
        return 2
    for name in wanted:
        print(f"\n## bench: {name}\n", flush=True)
        started = time.perf_counter()
        module_name, _, function = SECTIONS[name].partition(":")
        getattr(importlib.import_module(module_name), function or "main")()
        print(f"\n({name} took {time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
