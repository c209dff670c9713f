# Copyright (c) 2026 The pointsynth-nuclei authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Multi-process runs under ``torchrun``: process group, devices, DDP wrapping, rank-aware helpers.

Every function works unchanged in a plain single process (rank 0 of 1), so the bundle configs call them
unconditionally; ``bundle/configs/multi_gpu_train.json`` / ``multi_gpu_inference.json`` only switch the process
group on (:func:`init`) and shard the data.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "barrier",
    "cleanup",
    "init",
    "is_distributed",
    "is_main_process",
    "local_device",
    "prepare",
    "rank",
    "shard",
    "threads_per_rank",
    "unwrap",
    "world_size",
]

T = TypeVar("T")
logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """Whether a process group is initialised (a ``torchrun`` run after :func:`init`)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the process that writes checkpoints, models, logs and summaries."""
    return rank() == 0


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` on a GPU machine, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def threads_per_rank() -> int:
    """CPU threads for each process: the machine's cores shared by the processes on this node (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))


def init(backend: str | None = None, timeout_minutes: float = 60.0) -> bool:
    """Initialise the default process group from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ...): ``nccl`` on GPUs, ``gloo`` on CPUs unless ``backend`` says otherwise. On a GPU the
    process uses ``cuda:<LOCAL_RANK>``.

    Returns:
        whether a process group is active (``False`` when the process was not started by ``torchrun``, so the
        same config still runs as a single process).

    Raises:
        ValueError: an unknown backend, or ``nccl`` without a GPU.
    """
    if is_distributed():
        return True
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        logger.warning("multi-process config without torchrun (no RANK / WORLD_SIZE): running as one process.")
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}.")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA GPUs; use 'gloo' on CPUs.")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
    # the long timeout covers rank 0's validation rounds, during which the other ranks wait in a collective
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    logger.info(f"process group: rank {rank()} of {world_size()}, backend {backend}, device {local_device()}")
    return True


def cleanup() -> None:
    """Destroy the process group (if any)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def prepare(
    network: torch.nn.Module, device: torch.device | str, find_unused_parameters: bool = False
) -> torch.nn.Module:
    """``network`` on ``device``, wrapped in ``DistributedDataParallel`` when a process group is active (rank 0's
    weights are broadcast to every rank); the unwrapped network otherwise.

    Args:
        find_unused_parameters: set it when some parameters get no gradient in an iteration, e.g. a frozen encoder.
    """
    network = network.to(device)
    if not is_distributed():
        return network
    device = torch.device(device)
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap(network: T) -> T:
    """The module inside ``DistributedDataParallel`` (or ``network`` itself)."""
    return network.module if isinstance(network, DistributedDataParallel) else network


def shard(items: Sequence[Any]) -> list[Any]:
    """This rank's share of ``items``: every ``world_size``-th item from position ``rank`` (all of them in a single
    process), so that each item is processed by exactly one rank."""
    return list(items[rank() :: world_size()])
