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
"""MONAI's ``HoVerNetLoss`` with an ignore mask: pixels the labels cannot vouch for teach nothing."""

from __future__ import annotations

import torch
from monai.apps.pathology.losses import HoVerNetLoss
from monai.losses import DiceLoss
from monai.utils import HoVerNetBranch
from torch.nn import functional as F

__all__ = ["IGNORE_KEY", "MaskedHoVerNetLoss"]

#: target key of the (B, 1, H, W) ignore mask (1 = the loss skips the pixel)
IGNORE_KEY = "ignore"


class MaskedHoVerNetLoss(HoVerNetLoss):
    """``HoVerNetLoss`` (NP: Dice + cross-entropy, HV: MSE + gradient MSE inside nuclei) over the pixels the target's
    ``ignore`` mask leaves; without an ``ignore`` entry it is exactly ``HoVerNetLoss``. No nucleus-type branch."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.masked_dice = DiceLoss(softmax=False, smooth_dr=1e-03, smooth_nr=1e-03, reduction="sum", batch=True)

    def forward(self, prediction: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        if IGNORE_KEY not in target:
            return super().forward(prediction, target)
        if HoVerNetBranch.NC.value in prediction:
            raise ValueError("MaskedHoVerNetLoss has no nucleus-type (NC) branch.")
        np_key, hv_key = HoVerNetBranch.NP.value, HoVerNetBranch.HV.value
        valid = 1.0 - target[IGNORE_KEY].float()
        if valid.shape[1] != 1:
            raise ValueError(f"the ignore mask must be (B, 1, H, W), got {tuple(valid.shape)}.")
        count = valid.sum().clamp_min(1.0)
        logits, np_target = prediction[np_key].float(), target[np_key].float()
        dice = self.masked_dice(logits.softmax(dim=1) * valid, np_target * valid)
        ce = (F.cross_entropy(logits, np_target.argmax(dim=1), reduction="none") * valid[:, 0]).sum() / count
        hv, hv_target = prediction[hv_key].float(), target[hv_key].float()
        mse = ((hv - hv_target) ** 2 * valid).sum() / (count * hv.shape[1])
        gradient = self._mse_gradient_loss(hv, hv_target, np_target[:, 1] * valid[:, 0])
        return (
            dice * self.lambda_np_dice
            + ce * self.lambda_np_ce
            + mse * self.lambda_hv_mse
            + gradient * self.lambda_hv_mse_grad
        )
