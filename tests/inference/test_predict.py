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
"""Tests of ``scripts/inference/predict.py``: whole-tile prediction and its flip test-time augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import HoVerNetBranch
from torch import nn

from scripts.inference.predict import TilePredictor

NP, HV = HoVerNetBranch.NP.value, HoVerNetBranch.HV.value


class GradientNet(nn.Module):
    """A flip-equivariant stand-in: NP = two input channels, HV = the horizontal / vertical central differences of
    channel 0 (they change sign under a flip of their own axis, as HoVer maps do)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        c = F.pad(x[:, :1], (1, 1, 1, 1), mode="replicate")
        dx = (c[..., 1:-1, 2:] - c[..., 1:-1, :-2]) / 2
        dy = (c[..., 2:, 1:-1] - c[..., :-2, 1:-1]) / 2
        return {NP: x[:, :2] + self.dummy, HV: torch.cat([dx, dy], dim=1)}


def test_flip_tta_undoes_the_flips_and_hover_signs():
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    plain = TilePredictor(GradientNet(), roi_size=64).outputs(image)
    tta = TilePredictor(GradientNet(), roi_size=64, flip_tta=True).outputs(image)
    assert plain[HV].abs().mean() > 0.01
    for key in (NP, HV):
        assert torch.allclose(tta[key], plain[key], atol=1e-5), key


class FlipSensitiveNet(GradientNet):
    """Not equivariant: HV grows to the right, whatever the image."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = super().forward(x)
        ramp = torch.linspace(0, 1, x.shape[-1]).expand_as(out[HV][:, :1])
        return {NP: out[NP], HV: torch.cat([ramp, ramp], dim=1)}


def test_flip_tta_averages_the_four_views():
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 255
    tta = TilePredictor(FlipSensitiveNet(), roi_size=32, flip_tta=True).outputs(image)
    ramp = torch.linspace(0, 1, 32)
    # horizontal channel: ramp, -flip(ramp) (h flip), ramp (v flip), -flip(ramp) (both) -> (ramp - flip(ramp)) / 2
    assert torch.allclose(tta[HV][0, 5], (ramp - ramp.flip(0)) / 2, atol=1e-6)
    # vertical channel: r, r' (h flip), -r (v flip), -r' (both): the views cancel
    assert torch.allclose(tta[HV][1], torch.zeros(32, 32), atol=1e-6)
