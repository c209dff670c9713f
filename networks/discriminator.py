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
"""70x70 PatchGAN discriminator (pix2pix / CycleGAN) with spectral norm instead of normalisation layers."""

import torch
from monai.networks.blocks import Convolution
from torch import nn

from networks.utils import maybe_spectral_norm

__all__ = ["SpectralPatchDiscriminator"]


class SpectralPatchDiscriminator(nn.Module):
    """PatchGAN discriminator: ``conv4x4 s2 -> LeakyReLU(0.2)``, ``num_layers - 1`` more such convs doubling the
    width (capped at ``8 * ndf``), one ``conv4x4 s1 -> LeakyReLU``, and a final ``conv4x4 s1`` to one channel
    (raw patch scores, no sigmoid: LSGAN). Spectral norm on every conv; no normalisation layers.
    Receptive field 70x70 at ``num_layers=3``; output ``(B, 1, H/8 - 2, W/8 - 2)`` for ``H, W`` divisible by 8.

    Built from MONAI ``Convolution`` blocks rather than ``monai.networks.nets.PatchDiscriminator``: that one does
    not cap the width at ``8 * ndf`` (CycleGAN does, from ``num_layers=4``), and returns the list of intermediate
    features, whereas ``forward`` here returns a single tensor for ``monai.losses.PatchAdversarialLoss``.

    Parameter counts (``in_channels=3``, ``num_layers=3``): ``ndf=64``: 2,764,737; ``ndf=32``: 694,241.

    Args:
        in_channels: input channels (3 for images, the mask's channels for D_S).
        ndf: width of the first conv.
        num_layers: number of stride-2 convs (3: the 70x70 PatchGAN).
        spectral_norm: spectral norm on every conv; call :func:`networks.remove_spectral_norm` before
            ``torch.jit.script``.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, num_layers: int = 3, spectral_norm: bool = True) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        act = ("leakyrelu", {"negative_slope": 0.2})
        widths = [in_channels] + [ndf * min(2**i, 8) for i in range(num_layers + 1)]
        strides = [2] * num_layers + [1]
        layers = [
            Convolution(2, c_in, c_out, strides=s, kernel_size=4, padding=1, act=act, norm=None, bias=True)
            for c_in, c_out, s in zip(widths[:-1], widths[1:], strides, strict=True)
        ]
        layers.append(Convolution(2, widths[-1], 1, kernel_size=4, padding=1, bias=True, conv_only=True))
        for layer in layers:
            layer.conv = maybe_spectral_norm(layer.conv, spectral_norm)
        self.model = nn.Sequential(*layers)
        self.in_channels = in_channels
        self.min_size = 3 * 2**num_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Patch scores ``(B, 1, h, w)`` of an image ``(B, in_channels, H, W)``, ``H, W >= 3 * 2**num_layers``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got shape {list(x.shape)}.")
        if x.shape[2] < self.min_size or x.shape[3] < self.min_size:
            raise ValueError(f"x height and width must be at least {self.min_size}, got {x.shape[2]}x{x.shape[3]}.")
        return self.model(x)
