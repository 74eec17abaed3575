"""torch.distributed for the training example: what ``python -m torchcv_ext.train`` needs to run
under ``torchrun`` (one process per GPU, or several CPU processes), kept apart from the training
loop. Single-process runs go through the same calls, which then do nothing.

    torchrun --nproc_per_node=4 -m torchcv_ext.train --model mobilenet_v3_large --sync-bn ...

* :func:`init`: reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR`` / ``MASTER_PORT``) and joins the process group: NCCL with one GPU per process
  (``cuda:LOCAL_RANK``) on CUDA, gloo on the CPU.
* :func:`train_sampler` (a ``DistributedSampler``; call ``set_epoch`` every epoch),
  :func:`shard` (validation: each process a disjoint slice, nothing padded or repeated, so
  accuracies summed over the processes with :func:`all_reduce_sum` are exact),
  :func:`wrap` (DistributedDataParallel).
* Logging, progress bars and files come from rank 0 (:func:`Context.is_main`,
  :func:`silence_other_ranks`).
"""
from __future__ import annotations

import builtins
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Subset

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Context:
    """This process's place in the job (rank 0 of 1 without torchrun)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> Optional[str]:
        return dist.get_backend() if self.distributed else None


def init(device: Optional[str] = None) -> Context:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1), else a single-process context.
    ``device``: "cpu" / "cuda" (default: CUDA when available). Under torchrun a CUDA process uses
    ``cuda:LOCAL_RANK`` and NCCL, a CPU process gloo."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev_type = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")
    if world_size <= 1:
        return Context(torch.device(device) if device else torch.device(dev_type))
    missing = [k for k in _TORCHRUN_VARS if k not in os.environ]
    if missing:
        raise SystemExit(f"WORLD_SIZE={world_size} is set but {', '.join(missing)} not: start the processes "
                         f"with torchrun, e.g. torchrun --nproc_per_node={world_size} -m torchcv_ext.train ...")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if dev_type == "cuda":
        n_gpus = torch.cuda.device_count()
        if local_rank >= n_gpus:
            raise SystemExit(f"process {rank} has LOCAL_RANK={local_rank}, but this machine has {n_gpus} GPU(s): "
                             f"start at most {n_gpus} processes per node (torchrun --nproc_per_node={n_gpus}), "
                             f"one per GPU, or train on the CPU with --device cpu")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", device_id=dev)
    elif dev_type == "cpu":
        dev = torch.device("cpu")
        dist.init_process_group("gloo")
    else:
        raise SystemExit(f"--device {device}: torchrun runs here on 'cuda' (NCCL) or 'cpu' (gloo)")
    return Context(dev, rank, world_size, local_rank)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def silence_other_ranks(ctx: Context) -> None:
    """``print`` does nothing on ranks other than 0 (as torchvision's reference scripts do);
    ``print(..., force=True)`` still prints."""
    if ctx.is_main:
        return
    builtin_print = builtins.print

    def print_(*args, force: bool = False, **kwargs):
        if force:
            builtin_print(*args, **kwargs)

    builtins.print = print_


def train_sampler(dataset: Dataset, ctx: Context, seed: int) -> Optional[DistributedSampler]:
    """A ``DistributedSampler`` (shuffled with ``seed``; its ``set_epoch`` reshuffles each epoch)
    for a distributed run, None otherwise. Every process gets the same number of samples (the
    sampler repeats a few when the count does not divide), so all take the same number of steps."""
    if not ctx.distributed:
        return None
    if len(dataset) < ctx.world_size:
        raise SystemExit(f"{ctx.world_size} processes but only {len(dataset)} training images: every process "
                         f"needs at least one; start fewer processes (torchrun --nproc_per_node) or use more data")
    return DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)


def shard(dataset: Dataset, ctx: Context) -> Dataset:
    """This process's slice of an evaluation set (every world_size-th item from its rank): the slices
    are disjoint and cover the set once -- unlike DistributedSampler, which pads with repeats."""
    if not ctx.distributed:
        return dataset
    return Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))


def wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """``DistributedDataParallel(model)`` in a distributed run (``model`` itself otherwise). Keep
    the unwrapped model for evaluation and checkpoints: its state_dict has the plain names."""
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(values: Sequence[float], device: torch.device) -> List[float]:
    """``values`` summed over the processes (unchanged in a single process), in float64."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
