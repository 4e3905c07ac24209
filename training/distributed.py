"""One job on several processes (torchrun + torch.distributed): who this process is and what it shares.

The loop (training.loop) runs the same code on one process and on N. `World()` is one process and every
collective is a no-op; `init_world()` joins the process group torchrun set up (env://: RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT), gloo on CPU, nccl on CUDA. What is shared:

- each optimizer step's examples are split into contiguous shards, one per rank (`shard`);
- the loss of a micro-batch is weighted by its share of the step's loss units summed over all ranks (`sum`),
  times the world size, and gradients are averaged (DDP, or `reduce_mean` for SparseGrad's dL/dC): the
  gradient is the one-process gradient of the same global batch;
- SparseGrad's basis phase gives each rank every W-th basis batch and sums the Gram matrices (`reduce_sum`);
- rank 0 alone decides to stop (`agree`), writes files and calls the hooks.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")
_PR_SET_PDEATHSIG = 1
_STOP_CODES = {None: 0, "cancel": 1, "pause": 2}


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank `rank` of `size` (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's contiguous part of `items` (a step's examples): sizes differ by at most one."""
        n = len(items)
        return list(items[self.rank * n // self.size : (self.rank + 1) * n // self.size])

    def sum(self, values: Sequence[float]) -> list[float]:
        """`values` summed over the ranks (float64, one collective)."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def reduce_sum(self, t: torch.Tensor) -> None:
        """In place: `t` summed over the ranks (SparseGrad's Gram sums and summed gradients)."""
        if self.active:
            _all_reduce(t, 1.0)

    def reduce_mean(self, t: torch.Tensor) -> None:
        """In place: `t` averaged over the ranks, dense, flat or sparse COO (SparseGrad's dL/dC)."""
        if self.active:
            _all_reduce(t, 1.0 / self.size)

    def agree(self, reason: str | None) -> str | None:
        """Rank 0's stop decision ("cancel", "pause" or None), on every rank."""
        if not self.active:
            return reason
        code = _STOP_CODES[reason] if self.main else 0
        t = torch.tensor([code], dtype=torch.int64, device=_comm_device())
        dist.broadcast(t, src=0)
        return {v: k for k, v in _STOP_CODES.items()}[int(t.item())]

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = World()


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(t: torch.Tensor, scale: float) -> None:
    if not t.is_sparse:
        dist.all_reduce(t)
        if scale != 1.0:
            t.mul_(scale)
        return
    # A sparse dL/dC (a block's entries): every rank holds the same support, so the coalesced indices agree
    # and only the values travel.
    c = t.coalesce()
    values = c.values().clone()
    dist.all_reduce(values)
    values.mul_(scale)
    t.copy_(torch.sparse_coo_tensor(c.indices(), values, c.shape, is_coalesced=True, check_invariants=False))


def init_world(timeout_s: float = 1800.0) -> World:
    """Join the process group torchrun describes in the environment (one process without WORLD_SIZE > 1).
    CUDA ranks use their LOCAL_RANK's device and nccl; CPU ranks gloo."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if size <= 1:
        return SINGLE
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return World(rank, size, local)


def close_world(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


def die_with_parent(poll_s: float = 1.0) -> None:
    """Exit when the process that started this one dies: the kernel's parent-death signal (Linux prctl
    PR_SET_PDEATHSIG, SIGKILL), and a watchdog thread polling the parent's pid for where prctl is absent
    (or the parent died before the call). No orphan rank keeps computing or writing."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died between the two calls
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def sparse_layer_names(model: nn.Module) -> list[str]:
    from sparsegrad import sparse_layers

    return list(sparse_layers(model))


def wrap_ddp(model: nn.Module, world: World, device: torch.device) -> nn.Module | None:
    """The model DDP trains (None when no process group, or nothing dense trains: SparseGrad's coefficients
    are averaged by the optimizer's reduce hook, so DDP leaves the injected layers alone)."""
    if not world.active:
        return None
    skip = sparse_layer_names(model)
    prefixes = tuple(name + "." for name in skip)
    ignored = [n for n, _ in model.named_parameters() if n.startswith(prefixes)]
    ignored += [n for n, _ in model.named_buffers() if n.startswith(prefixes)]
    dense = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith(prefixes)]
    if not dense:
        return None
    from torch.nn.parallel import DistributedDataParallel as DDP

    DDP._set_params_and_buffers_to_ignore_for_model(model, ignored)
    ids = [device.index] if device.type == "cuda" else None
    # buffers are synced once at start (the sparse layers' are ignored), never again per forward
    return DDP(model, device_ids=ids, forward_sync_buffers=False)


SHARDINGS = ("none", "fsdp")


def shard_model(model: nn.Module, keep: set[nn.Parameter]) -> None:
    """FSDP2 (`fully_shard`): each block of every nn.ModuleList (the transformer layers) and then the rest
    of the model, sharded over the ranks; the parameters in `keep` stay whole on every rank (SparseGrad's
    target layers, which the optimizer changes in place through their basis)."""
    from torch.distributed.fsdp import fully_shard

    ignored = set(keep) or None
    for module_list in [m for m in model.modules() if isinstance(m, nn.ModuleList)]:
        for block in module_list:
            if any(p not in keep for p in block.parameters()):  # something to shard
                fully_shard(block, ignored_params=ignored)
    fully_shard(model, ignored_params=ignored)


@contextmanager
def gathered(model: nn.Module, sharded: bool) -> Iterator[dict[str, torch.Tensor] | None]:
    """On every rank of a sharded model (a collective): the model's parameters whole for the duration (its
    named_parameters are plain tensors) and its full state dict; None and nothing done when not sharded."""
    if not sharded:
        yield None
        return
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in modules:
        m.unshard()
    try:
        state = model.state_dict()
        yield {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu() for k, v in state.items()}
    finally:
        for m in modules:
            m.reshard()
