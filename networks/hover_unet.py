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
"""MONAI ``BasicUNet`` with HoVer-Net outputs: one shared UNet, 4 output channels split into NP logits and HV maps.

No ``from __future__ import annotations`` here: the module is TorchScript-scripted.
"""

from collections.abc import Iterator, Sequence

import torch
from monai.networks.nets import BasicUNet
from monai.utils.enums import HoVerNetBranch
from torch import nn

__all__ = ["HoVerUNet", "hover_unet_features"]

#: state-dict keys (after the ``unet.`` prefix) whose first dimension is each of the six ``features``
_FEATURE_KEYS = (
    "conv_0.conv_0.conv.weight",
    "down_1.convs.conv_0.conv.weight",
    "down_2.convs.conv_0.conv.weight",
    "down_3.convs.conv_0.conv.weight",
    "down_4.convs.conv_0.conv.weight",
    "upcat_1.convs.conv_1.conv.weight",
)


def hover_unet_features(state: dict) -> tuple[int, ...] | None:
    """The ``features`` of the :class:`HoVerUNet` whose weights ``state`` holds (bare or wrapped, e.g. by
    ``HoVerNetSingleOutput``: any key prefix), ``None`` if ``state`` is not a ``HoVerUNet``'s."""
    first = next((k for k in state if k.endswith("unet." + _FEATURE_KEYS[0])), None)
    if first is None:
        return None
    prefix = first[: -len(_FEATURE_KEYS[0])]
    try:
        return tuple(int(state[prefix + key].shape[0]) for key in _FEATURE_KEYS)
    except (KeyError, AttributeError, IndexError):
        return None


class HoVerUNet(nn.Module):
    """A 2D MONAI ``BasicUNet`` whose 4 output channels are returned as MONAI HoVerNet's output dict
    ``{"nucleus_prediction": logits (B, 2, H, W), "horizontal_vertical": linear HV (B, 2, H, W)}``, so that
    ``HoVerNetLoss`` and the HoVerNet post-processing apply unchanged.

    Unlike :class:`networks.ImageToMaskNet`, NP and HV share one decoder and the normalisation is per instance (batch
    statistics are noisy at the CPU batch of 4). Default ``features=(16, 32, 64, 128, 256, 16)``, the ``cpu``
    profile's and the shipped model's: MONAI's default widths with 16 instead of 32 channels at full resolution
    (100 instead of 155 kFLOP per pixel, the same accuracy over 2 seeds); 1,948,468 parameters.

    Args:
        in_channels: image channels.
        features: ``BasicUNet`` widths (six: five encoder levels and the last decoder level); ``H`` and ``W`` must
            be multiples of 16 and at least 32 (instance norm needs more than one pixel at the 1/16 level).
        norm: normalisation of ``BasicUNet`` (default: affine instance norm).
        dropout: dropout of ``BasicUNet``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        features: Sequence[int] = (16, 32, 64, 128, 256, 16),
        norm: str | tuple = ("instance", {"affine": True}),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.unet = BasicUNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=4,
            features=tuple(features),
            norm=norm,
            dropout=dropout,
        )
        for upcat in (self.unet.upcat_4, self.unet.upcat_3, self.unet.upcat_2, self.unet.upcat_1):
            upcat.is_pad = False  # H, W are multiples of 16: MONAI's zero-width padding would only copy each tensor

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the UNet's contracting path, e.g. to freeze it while the decoder learns."""
        for name in ("conv_0", "down_1", "down_2", "down_3", "down_4"):
            yield from getattr(self.unet, name).parameters()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            x: image ``(B, in_channels, H, W)``, ``H`` and ``W`` multiples of 16, at least 32.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (B, {self.in_channels}, H, W), got shape {list(x.shape)}.")
        if x.shape[2] % 16 != 0 or x.shape[3] % 16 != 0 or min(x.shape[2], x.shape[3]) < 32:
            raise ValueError(
                f"x height and width must be multiples of 16 and at least 32 (the 1/16 level is normalised per "
                f"instance), got {x.shape[2]}x{x.shape[3]}."
            )
        out = self.unet(x)
        return {HoVerNetBranch.NP.value: out[:, :2], HoVerNetBranch.HV.value: out[:, 2:]}
