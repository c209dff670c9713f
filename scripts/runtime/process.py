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
"""Process set-up for training and inference entry points: threads, the glibc allocator setting, determinism."""

from __future__ import annotations

import logging
import os
import sys

import torch
from monai.utils import convert_to_tensor

__all__ = ["FAST_ALLOCATOR", "Bf16Autocast", "bf16_autocast", "configure", "fast_bf16", "native_bf16"]

# glibc keeps freed memory instead of returning it to the kernel: 1.6-3x faster CPU training (ENVIRONMENT.md).
FAST_ALLOCATOR = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
NO_REEXEC = "POINTSYNTH_NO_REEXEC"


def configure(fast_allocator: bool = True, num_threads: int | None = None) -> bool:
    """Set the number of torch threads and, on Linux, restart the process once with the fast allocator setting.

    ``GLIBC_TUNABLES`` only takes effect when a process starts, so when ``fast_allocator`` is on and the setting is
    missing, the running command (``sys.orig_argv``, e.g. ``python -m monai.bundle run ...``) is executed again with
    it. Set the environment variable ``POINTSYNTH_NO_REEXEC=1`` to prevent that.

    Returns:
        whether the fast allocator setting is active in this process.
    """
    if num_threads is not None:
        if int(num_threads) < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}.")
        torch.set_num_threads(int(num_threads))
    active = FAST_ALLOCATOR in os.environ.get("GLIBC_TUNABLES", "")
    if not fast_allocator or active or not sys.platform.startswith("linux") or os.environ.get(NO_REEXEC):
        return active
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES", ""), FAST_ALLOCATOR]))
    env = {**os.environ, "GLIBC_TUNABLES": tunables, NO_REEXEC: "1"}
    logging.getLogger(__name__).info("restarting with GLIBC_TUNABLES=%s", tunables)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    return True  # not reached


def fast_bf16(device: str | torch.device) -> bool:
    """Whether bfloat16 autocast speeds up training on ``device``: a CUDA device with bf16 support, or a CPU with
    AMX tiles (Intel Sapphire Rapids and later), where oneDNN runs bf16 convolutions on the matrix units.

    Without AMX (AVX512-BF16 alone) the answer is ``False``: the GAN profiles keep this rule (bf16 is faster there,
    but its accuracy is not shown yet: ``bundle/docs/synthesis.md``); the ``cpu`` segmenter uses :func:`native_bf16`
    (``bench segmentation``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def native_bf16(device: str | torch.device) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: a CUDA device with bf16 support, or a CPU with AMX tiles or
    AVX512-BF16 instructions (e.g. AMD Zen 4). Wider networks (the ``cpu`` segmenter, 32 channels at full
    resolution) train ~1.45x faster in bf16 on AVX512-BF16 alone (``bench segmentation``); the ``cpu`` GAN profile
    would too (1.39x, ``bench synthesis``, AMD Zen 4) but keeps :func:`fast_bf16` until a bf16 GAN's segmenter is
    shown to be as accurate."""
    device = torch.device(device)
    if device.type == "cpu":
        return fast_bf16(device) or bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return fast_bf16(device)


def bf16_autocast(device: str | torch.device, enabled: bool = True) -> torch.autocast:
    """``torch.autocast`` to bfloat16 on ``device``'s type (CPU or CUDA); a no-op context when not ``enabled``.
    The one mixed-precision context of the project: trainers, validation, synthesis and inference use it."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


class Bf16Autocast(torch.nn.Module):
    """``module`` run under bfloat16 autocast on its input's device, returning float32 outputs (a tensor, or a
    dict / list / tuple of tensors), so that losses and post-processing stay in float32.

    For trainers that autocast only on CUDA, such as MONAI's ``SupervisedTrainer`` (``torch.autocast("cuda")``): on a
    CPU with AMX this is the ~2x of ``bench segmentation``. The parameters, and so ``state_dict`` keys of ``module``
    itself, are untouched; checkpoint ``module``, not the wrapper.

    Args:
        module: the network.
        channels_last: also convert ``module`` and every input to the channels-last memory format.
    """

    def __init__(self, module: torch.nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.module = module.to(memory_format=torch.channels_last) if channels_last else module
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with bf16_autocast(x.device):
            output = self.module(x, *args, **kwargs)
        return convert_to_tensor(output, dtype=torch.float32, track_meta=False)  # recurses into dicts and lists
