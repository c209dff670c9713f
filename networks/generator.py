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
"""OASIS-style mask->image generator (Sushko et al., ICLR 2021): SPADE residual blocks conditioned on the
mask and optional noise, nearest upsampling from a coarse grid, tanh output.

No ``from __future__ import annotations`` here: the module is TorchScript-scripted.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import SPADE
from torch import nn

from networks.utils import maybe_spectral_norm

__all__ = ["MaskToImageGenerator", "SPADEResBlock"]

NOISE_MODES = ("none", "vector", "spatial", "mixed")


class _SPADEShortcut(nn.Module):
    """Learned shortcut: SPADE then a bias-free 1x1 conv (used when the block changes the width)."""

    def __init__(self, in_channels: int, out_channels: int, label_nc: int, spade_hidden: int, sn: bool) -> None:
        super().__init__()
        self.norm = SPADE(label_nc, in_channels, hidden_channels=spade_hidden)
        self.conv = maybe_spectral_norm(nn.Conv2d(in_channels, out_channels, 1, bias=False), sn)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x, seg))


class _IdentityShortcut(nn.Module):
    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        return x


class SPADEResBlock(nn.Module):
    """SPADE residual block (SPADE/OASIS): ``SPADE -> LeakyReLU(0.2) -> conv3x3`` twice, plus an identity
    shortcut, or a learned ``SPADE -> conv1x1`` one when ``in_channels != out_channels``.

    SPADE is MONAI's block (param-free ``InstanceNorm``, affine off; gamma/beta from a conv net of width
    ``spade_hidden`` on the conditioning map resized to the features, nearest; its hidden activation is
    LeakyReLU(0.01) where OASIS has ReLU). Spectral norm (optional)
    is on the block's convs, as in OASIS; the SPADE convs have none.
    """

    def __init__(
        self, in_channels: int, out_channels: int, label_nc: int, spade_hidden: int = 128, spectral_norm: bool = True
    ) -> None:
        super().__init__()
        mid = min(in_channels, out_channels)
        self.norm_0 = SPADE(label_nc, in_channels, hidden_channels=spade_hidden)
        self.conv_0 = maybe_spectral_norm(nn.Conv2d(in_channels, mid, 3, padding=1), spectral_norm)
        self.norm_1 = SPADE(label_nc, mid, hidden_channels=spade_hidden)
        self.conv_1 = maybe_spectral_norm(nn.Conv2d(mid, out_channels, 3, padding=1), spectral_norm)
        self.shortcut: nn.Module
        if in_channels != out_channels:
            self.shortcut = _SPADEShortcut(in_channels, out_channels, label_nc, spade_hidden, spectral_norm)
        else:
            self.shortcut = _IdentityShortcut()

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return self.shortcut(x, seg) + dx


class MaskToImageGenerator(nn.Module):
    """OASIS-style generator G: mask (+ noise) -> image in [-1, 1].

    The conditioning map is ``[s, z]`` (``s`` alone when ``noise="none"``). It is resized (nearest) to the start
    grid ``H / 2**(num_blocks - 1)`` and mapped by a conv3x3 to ``ngf * channel_multipliers[0]`` channels; then
    ``num_blocks = len(channel_multipliers) - 1`` :class:`SPADEResBlock` s (block ``i``:
    ``ngf * mult[i] -> ngf * mult[i + 1]``), each conditioned on the full-resolution map and followed by nearest
    x2 upsampling except the last; then ``LeakyReLU(0.2) -> conv3x3 -> tanh``.

    Noise modes: ``"none"`` (no z; ``z_dim`` ignored), ``"vector"`` (z ``(B, z_dim)`` broadcast over the
    image), ``"spatial"`` (z ``(B, z_dim, H, W)``, the paper's "3D noise"), ``"mixed"`` (z ``(B, z_dim, H, W)``
    whose first ``z_dim // 2`` channels are drawn once per image, an appearance code constant over the image that
    conditions every block, and the others per pixel). A missing z is drawn from N(0, 1).

    Parameter counts (``in_channels=3, out_channels=3, spade_hidden=128``, ``noise="vector"``):
    defaults (``ngf=32``, multipliers ``(16, 16, 16, 8, 4, 2, 1)``, ``z_dim=64``): 23,768,547;
    CPU size ``ngf=16``, ``(16, 16, 8, 4, 2, 1)``, ``z_dim=16``: 6,112,243;
    ``ngf=16``, ``(8, 8, 4, 2, 1)``, ``z_dim=16``: 2,597,619.

    Args:
        in_channels: channels of the mask ``s``.
        out_channels: channels of the image.
        ngf: base width.
        channel_multipliers: widths ``ngf * m`` from the start grid to the output resolution.
        z_dim: noise channels (ignored when ``noise="none"``).
        noise: ``"none"``, ``"vector"``, ``"spatial"`` or ``"mixed"``.
        spade_hidden: hidden width of the SPADE gamma/beta nets.
        spectral_norm: spectral norm on the residual blocks' convs. Call
            :func:`networks.remove_spectral_norm` before ``torch.jit.script``.

    Input ``H`` and ``W`` must be multiples of ``2**(num_blocks - 1)`` (32 at the defaults) and at least twice
    that (instance norm needs more than one pixel on the start grid).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 32,
        channel_multipliers: Sequence[int] = (16, 16, 16, 8, 4, 2, 1),
        z_dim: int = 64,
        noise: str = "vector",
        spade_hidden: int = 128,
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}.")
        if len(channel_multipliers) < 2:
            raise ValueError(f"channel_multipliers needs at least 2 entries, got {tuple(channel_multipliers)}.")
        if noise != "none" and z_dim < (2 if noise == "mixed" else 1):
            raise ValueError(f"z_dim must be >= {2 if noise == 'mixed' else 1} with noise={noise!r}, got {z_dim}.")
        self.in_channels = in_channels
        self.noise = noise
        self.z_dim = z_dim if noise != "none" else 0
        self.num_blocks = len(channel_multipliers) - 1
        self.factor = 2 ** (self.num_blocks - 1)
        widths = [ngf * m for m in channel_multipliers]
        label_nc = in_channels + self.z_dim
        self.head = nn.Conv2d(label_nc, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList(
            [
                SPADEResBlock(widths[i], widths[i + 1], label_nc, spade_hidden, spectral_norm)
                for i in range(self.num_blocks)
            ]
        )
        self.tail = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    @torch.jit.export
    def sample_noise(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor | None:
        """Draw z ~ N(0, 1) of the shape ``forward`` expects for a ``(batch, C, height, width)`` mask:
        ``(batch, z_dim)`` ("vector"), ``(batch, z_dim, height, width)`` ("spatial", "mixed"), or None ("none").
        Exported to TorchScript, so a scripted generator has it too."""
        if self.noise == "none":
            return None
        return self._draw_noise(batch, height, width, device, dtype)

    def _draw_noise(
        self, batch: int, height: int, width: int, device: torch.device | None, dtype: torch.dtype | None
    ) -> torch.Tensor:
        if self.noise == "spatial":
            return torch.randn([batch, self.z_dim, height, width], device=device, dtype=dtype)
        if self.noise == "mixed":
            k = self.z_dim // 2
            code = torch.randn([batch, k, 1, 1], device=device, dtype=dtype).expand(batch, k, height, width)
            pixels = torch.randn([batch, self.z_dim - k, height, width], device=device, dtype=dtype)
            return torch.cat([code, pixels], dim=1)
        return torch.randn([batch, self.z_dim], device=device, dtype=dtype)

    def forward(self, s: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            s: mask ``(B, in_channels, H, W)``.
            z: noise as from :meth:`sample_noise`; drawn when None. Must be None when ``noise="none"``.

        Returns:
            image ``(B, out_channels, H, W)`` in [-1, 1].
        """
        if s.dim() != 4 or s.shape[1] != self.in_channels:
            raise ValueError(f"s must be (B, {self.in_channels}, H, W), got shape {list(s.shape)}.")
        b, h, w = s.shape[0], s.shape[2], s.shape[3]
        f = self.factor
        if h % f != 0 or w % f != 0 or h < 2 * f or w < 2 * f:
            raise ValueError(
                f"s height and width must be multiples of {f} (2**(num_blocks - 1)) and at least {2 * f}, got {h}x{w}."
            )
        seg = s
        if self.noise == "none":
            if z is not None:
                raise ValueError('z must be None with noise="none".')
        else:
            if z is None:
                z = self._draw_noise(b, h, w, s.device, s.dtype)
            if self.noise == "vector":
                if z.dim() != 2 or z.shape[0] != b or z.shape[1] != self.z_dim:
                    raise ValueError(f"vector noise z must be ({b}, {self.z_dim}), got shape {list(z.shape)}.")
                z = z[:, :, None, None].expand(b, self.z_dim, h, w)
            elif z.dim() != 4 or z.shape[0] != b or z.shape[1] != self.z_dim or z.shape[2] != h or z.shape[3] != w:
                raise ValueError(
                    f"{self.noise} noise z must be ({b}, {self.z_dim}, {h}, {w}), got shape {list(z.shape)}."
                )
            seg = torch.cat([s, z.to(s.dtype)], dim=1)
        x = self.head(F.interpolate(seg, size=[h // f, w // f], mode="nearest"))
        for i, block in enumerate(self.blocks):
            x = block(x, seg)
            if i < self.num_blocks - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return torch.tanh(self.tail(F.leaky_relu(x, 0.2)))
