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
"""Whole-tile instance prediction: sliding-window inference of a HoVerNet-style network + post-processing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer
from monai.utils import HoVerNetBranch

from scripts.data.images import load_tile
from scripts.runtime import bf16_autocast
from transforms import MONUSEG_RANGES, HoVerNetInstances, split_output

__all__ = ["MIN_IMAGE_SIDE", "TilePredictor"]

#: the smallest image side segmented: about one nucleus at 40x, and more than the post-processing's Sobel kernel
MIN_IMAGE_SIDE = 32

_BRANCHES = (HoVerNetBranch.NP.value, HoVerNetBranch.HV.value)


class TilePredictor:
    """Instance map of a whole RGB tile from a network returning MONAI HoVerNet's output dictionary.

    Args:
        network: the segmenter (``ImageToMaskNet``, MONAI ``HoVerNet`` with ``decoder_padding=True``, ``F``, or
            either wrapped in :class:`networks.HoVerNetSingleOutput`: a (B, 4, H, W) tensor output is split).
        roi_size: sliding-window size (a multiple of the network's size factor).
        sw_batch_size: windows per forward pass.
        overlap: sliding-window overlap.
        intensity_range: the network's input range; [0, 255] pixels are mapped linearly onto it.
        postprocessing: instance post-processing of ``(np_logits, hv)`` (default :class:`HoVerNetInstances` with the
            fixed normalisation :data:`~transforms.MONUSEG_RANGES`, as inference, Deploy and MONAI Label).
        amp: run under bfloat16 autocast.
        flip_tta: test-time augmentation: also run each window flipped horizontally, vertically and both, flip the
            outputs back (negating the HoVer map of each flipped axis) and average them (4x the network cost).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        roi_size: int | Sequence[int] = 256,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        intensity_range: Sequence[float] = (0.0, 1.0),
        postprocessing: Callable | None = None,
        amp: bool = False,
        flip_tta: bool = False,
    ) -> None:
        self.network = network
        self.flips: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1)) if flip_tta else ((),)
        self.inferer = SlidingWindowInferer(
            roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode="gaussian"
        )
        self.b_min, self.b_max = float(intensity_range[0]), float(intensity_range[1])
        self.postprocessing = postprocessing if postprocessing is not None else HoVerNetInstances(**MONUSEG_RANGES)
        self.amp = amp
        self._compiled: Callable | None = None

    def compile(self) -> None:
        """Run the network through ``torch.compile`` (inductor) from now on: ~1.9x on a 1024 px window of the ``cpu``
        segmenter in bf16 on a 2-core AVX512-BF16 CPU, for ~40 s of compilation at the first call (once per process
        and window shape; inductor's cache on disk shortens later ones). Where it cannot compile (no C++ compiler),
        the network runs as it is."""
        if self._compiled is None:
            import torch._dynamo

            torch._dynamo.config.suppress_errors = True  # fall back to eager rather than fail
            self._compiled = torch.compile(self.network)

    def network_input(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (..., 3, H, W) in [0, 255] as float32 in the network's input range."""
        return image.to(torch.float32) * ((self.b_max - self.b_min) / 255.0) + self.b_min

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) float32 outputs (NP logits, HV maps) of a batch of windows ``x`` (B, 3, h, w) in the network's
        input range, on the network's device: in eval mode, without gradients, under ``amp``; with ``flip_tta``, the
        mean over the flips (each output flipped back, the HoVer map of each flipped axis negated)."""
        x = x.to(next(self.network.parameters()).device)
        training = self.network.training
        self.network.eval()
        total = None
        try:
            for dims in self.flips:
                with torch.no_grad(), bf16_autocast(x.device, self.amp):
                    model = self.network if self._compiled is None else self._compiled
                    output = model(x.flip(dims) if dims else x)
                if not isinstance(output, torch.Tensor):
                    output = torch.cat([output[key] for key in _BRANCHES], dim=1)
                output = output.float()
                if dims:
                    output = output.flip(dims)
                    # channel 2: horizontal (x, dim -1), channel 3: vertical (y, dim -2)
                    sign = [1.0, 1.0, -1.0 if -1 in dims else 1.0, -1.0 if -2 in dims else 1.0]
                    output = output * torch.tensor(sign, device=output.device).view(1, 4, 1, 1)
                total = output if total is None else total + output
        finally:
            self.network.train(training)
        return total / len(self.flips)

    def outputs(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network outputs (NP logits, HV maps) of one (3, H, W) image in [0, 255], on the CPU."""
        if min(image.shape[-2:]) < MIN_IMAGE_SIDE:
            h, w = image.shape[-2:]
            raise ValueError(f"the image is {h}x{w} px, smaller than the {MIN_IMAGE_SIDE} px the segmenter needs.")
        with torch.no_grad():
            x = self.network_input(image)[None].to(next(self.network.parameters()).device)
            output = self.inferer(x, self.forward)
        return {k: v[0].cpu() for k, v in split_output(output).items()}

    def __call__(self, image: torch.Tensor) -> np.ndarray:
        """(H, W) int32 instance map of one (3, H, W) image in [0, 255]."""
        return self.postprocessing.from_output(self.outputs(image))[0]

    def predict_item(self, item: dict) -> np.ndarray:
        """Instance map of a datalist item's ``image`` file."""
        return self(load_tile(item)[0])
