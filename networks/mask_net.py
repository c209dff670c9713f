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
"""Reduced HoVerNet F: image -> nucleus probability (NP) and horizontal/vertical distance (HV) maps.

No ``from __future__ import annotations`` here: the module is TorchScript-scripted.
"""

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets.basic_unet import UpCat
from monai.utils.enums import HoVerNetBranch
from torch import nn

__all__ = ["ImageToMaskNet", "PreActBlock"]

_NORMS = {"batch": ("batch", {}), "instance": ("instance", {"affine": True})}


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al., 2016): ``norm -> ReLU -> conv3x3`` twice; the projection
    shortcut (1x1 conv, when the stride or width changes) takes the pre-activated input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str | tuple = "batch") -> None:
        super().__init__()
        self.norm_1 = get_norm_layer(norm, spatial_dims=2, channels=in_channels)
        self.conv_1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm_2 = get_norm_layer(norm, spatial_dims=2, channels=out_channels)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.project = stride != 1 or in_channels != out_channels
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) if self.project else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.norm_1(x))
        shortcut = self.shortcut(pre) if self.project else x
        out = self.conv_2(F.relu(self.norm_2(self.conv_1(pre))))
        return out + shortcut


class _Decoder(nn.Module):
    """UNet decoder: per level, MONAI ``UpCat`` (2x2 transposed conv, concatenation with the encoder skip,
    two ``conv3x3 -> norm -> ReLU``), then a 1x1 conv head."""

    def __init__(self, features: Sequence[int], out_channels: int, norm: str | tuple) -> None:
        super().__init__()
        ups = []
        for level in range(len(features) - 1, 0, -1):
            ups.append(
                UpCat(2, features[level], features[level - 1], features[level - 1], "relu", norm, False, is_pad=False)
            )
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(features[0], out_channels, 1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        n = len(skips)
        for i, up in enumerate(self.ups):
            x = up(x, skips[n - 1 - i])
        return self.head(x)


class ImageToMaskNet(nn.Module):
    """Reduced HoVerNet: a pre-activation residual encoder and two UNet decoders with skip connections, one for
    NP (2 logits: background, nucleus) and one for HV (2 channels, ``tanh`` by default). Returns MONAI
    HoVerNet's output dict ``{"nucleus_prediction": (B, 2, H, W), "horizontal_vertical": (B, 2, H, W)}``
    (keys ``HoVerNetBranch.NP`` / ``HV``; no NC), so ``HoVerNetLoss`` and ``HoVerNetInstanceMapPostProcessing``
    apply unchanged. Same padding: outputs have the input's size.

    Encoder: conv3x3 stem to ``features[0]``; stage ``i`` has ``blocks_per_stage[i]`` :class:`PreActBlock` s of
    width ``features[i]`` (the first of stage ``i > 0`` has stride 2); a final ``norm -> ReLU``. Basic
    (two 3x3) blocks rather than ResNet-50 bottlenecks: better at the small CPU widths for the same budget.

    Parameter counts (``in_channels=3``): defaults (``features=(32, 64, 128, 256, 512)``,
    ``blocks_per_stage=(2, 2, 2, 1, 1)``): 11,383,268; CPU size ``features=(16, 32, 64, 128)``,
    ``blocks_per_stage=1``: 684,596.

    Args:
        in_channels: image channels.
        features: stage widths, full resolution first; ``H`` and ``W`` must be multiples of
            ``2**(len(features) - 1)``.
        blocks_per_stage: residual blocks per stage (an int for all stages).
        norm: ``"batch"`` or ``"instance"`` (affine) normalisation, in encoder and decoders.
        hv_activation: ``"tanh"`` (HV in [-1, 1]) or None (linear).
    """

    def __init__(
        self,
        in_channels: int = 3,
        features: Sequence[int] = (32, 64, 128, 256, 512),
        blocks_per_stage: Sequence[int] | int = (2, 2, 2, 1, 1),
        norm: str = "batch",
        hv_activation: str | None = "tanh",
    ) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {tuple(_NORMS)}, got {norm!r}.")
        if hv_activation not in ("tanh", None):
            raise ValueError(f'hv_activation must be "tanh" or None, got {hv_activation!r}.')
        features = tuple(features)
        if len(features) < 2:
            raise ValueError(f"features needs at least 2 stages, got {features}.")
        blocks = (blocks_per_stage,) * len(features) if isinstance(blocks_per_stage, int) else tuple(blocks_per_stage)
        if len(blocks) != len(features) or min(blocks) < 1:
            raise ValueError(f"blocks_per_stage must be positive, one per stage of {features}, got {blocks}.")
        norm_type = _NORMS[norm]
        self.in_channels = in_channels
        self.factor = 2 ** (len(features) - 1)
        self.hv_tanh = hv_activation == "tanh"
        self.stem = nn.Conv2d(in_channels, features[0], 3, padding=1, bias=False)
        stages = []
        for i, (width, n) in enumerate(zip(features, blocks, strict=True)):
            first = PreActBlock(features[max(i - 1, 0)], width, 1 if i == 0 else 2, norm_type)
            stages.append(nn.Sequential(first, *[PreActBlock(width, width, 1, norm_type) for _ in range(n - 1)]))
        self.stages = nn.ModuleList(stages)
        self.final_norm = get_norm_layer(norm_type, spatial_dims=2, channels=features[-1])
        self.np_decoder = _Decoder(features, 2, norm_type)
        self.hv_decoder = _Decoder(features, 2, norm_type)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the encoder (stem, stages, final norm), e.g. to freeze it while training decoders."""
        for module in (self.stem, self.stages, self.final_norm):
            yield from module.parameters()

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the NP and HV decoders and their heads."""
        for module in (self.np_decoder, self.hv_decoder):
            yield from module.parameters()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x: image ``(B, in_channels, H, W)``, ``H`` and ``W`` multiples of ``2**(len(features) - 1)``.

        Returns:
            ``{"nucleus_prediction": logits (B, 2, H, W), "horizontal_vertical": (B, 2, H, W)}``.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got shape {list(x.shape)}.")
        h, w = x.shape[2], x.shape[3]
        if h % self.factor != 0 or w % self.factor != 0:
            raise ValueError(
                f"x height and width must be multiples of {self.factor} (2**(len(features) - 1)), got {h}x{w}."
            )
        skips: list[torch.Tensor] = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        x = F.relu(self.final_norm(skips.pop()))
        hv = self.hv_decoder(x, skips)
        if self.hv_tanh:
            hv = torch.tanh(hv)
        return {HoVerNetBranch.NP.value: self.np_decoder(x, skips), HoVerNetBranch.HV.value: hv}
