"""`python -m worker.agent <torchrun arguments>`: torchrun's agent, tied to the worker process that started
it. The kernel kills it when that process dies (parent-death signal, plus a watchdog), and each rank it
starts does the same (training.launch), so a SIGKILLed worker leaves no training process behind."""

from __future__ import annotations

import sys

from training.distributed import die_with_parent


def main() -> None:
    die_with_parent()
    from torch.distributed.run import main as torchrun

    torchrun(sys.argv[1:])


if __name__ == "__main__":
    main()
