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
"""MaskedHoVerNetLoss: MONAI's HoVerNetLoss where nothing is ignored, blind to the ignored pixels otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.apps.pathology.losses import HoVerNetLoss

from scripts.engines.losses import MaskedHoVerNetLoss
from tests.helpers import SAMPLE, load_label, outputs_of

NP, HV = "nucleus_prediction", "horizontal_vertical"


def _target_and_prediction(seed: int = 0):
    label = load_label(SAMPLE / "labels" / "TCGA-A7-A13F-01Z-00-DX1_y380_x420.png")[:96, :96]
    perfect = outputs_of(label)
    target = {NP: torch.nn.functional.one_hot(torch.from_numpy(label > 0).long(), 2).permute(2, 0, 1)[None].float(),
              HV: perfect[HV][None]}  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    prediction = {NP: torch.randn(1, 2, 96, 96, generator=g), HV: torch.randn(1, 2, 96, 96, generator=g) * 0.5}
    return label, target, prediction


def test_equals_hovernet_loss_without_an_ignore_mask_or_with_an_empty_one():
    _, target, prediction = _target_and_prediction()
    reference = HoVerNetLoss(lambda_hv_mse=2.0)(prediction, target)
    masked = MaskedHoVerNetLoss(lambda_hv_mse=2.0)
    assert masked(prediction, target) == reference
    nothing_ignored = {**target, "ignore": torch.zeros(1, 1, 96, 96)}
    assert masked(prediction, nothing_ignored).item() == pytest.approx(reference.item(), rel=1e-5)


def test_ignored_pixels_teach_nothing():
    label, target, prediction = _target_and_prediction()
    ignore = torch.zeros(1, 1, 96, 96)
    ignore[..., 40:80, 40:80] = 1
    target = {**target, "ignore": ignore}
    target[NP][:, :, 40:80, 40:80] = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)  # ignored pixels: background
    target[HV][:, :, 40:80, 40:80] = 0
    loss = MaskedHoVerNetLoss()
    changed = {k: v.clone() for k, v in prediction.items()}
    changed[NP][..., 40:80, 40:80] = 50.0  # anything at all inside the ignored square
    changed[HV][..., 43:77, 43:77] = 9.0  # (the HV gradient term reads 2 px around every taught nucleus pixel)
    assert loss(changed, target).item() == pytest.approx(loss(prediction, target).item(), rel=1e-6)
    logits = prediction[NP].clone().requires_grad_(True)
    loss({NP: logits, HV: prediction[HV]}, target).backward()
    assert logits.grad[..., 40:80, 40:80].abs().max() == 0 and logits.grad.abs().sum() > 0
    assert not np.all(label[40:80, 40:80] == 0)  # the square did hold nuclei in the real label


def test_rejects_a_type_branch_and_a_wrong_mask():
    _, target, prediction = _target_and_prediction()
    with pytest.raises(ValueError, match="no nucleus-type"):
        MaskedHoVerNetLoss()(
            {**prediction, "type_prediction": prediction[NP]}, {**target, "ignore": torch.zeros(1, 1, 96, 96)}
        )
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        MaskedHoVerNetLoss()(prediction, {**target, "ignore": torch.zeros(1, 2, 96, 96)})
