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
"""Tests of ``transforms/stain.py``: HED stain jitter on real H&E."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2hed

from tests.helpers import SAMPLE
from transforms import RandHEDJitter, RandHEDJitterd


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rgb = np.asarray(Image.open(SAMPLE / "images" / "TCGA-18-5592-01Z-00-DX1_y100_x600.png").convert("RGB"))
    return rgb.transpose(2, 0, 1).astype(np.float32) / 255.0


def test_identity_without_jitter(image):
    out = RandHEDJitter(scale=0.0, shift=0.0)(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.abs(out - image).max() < 2 / 255  # unmixing and mixing back is lossless up to rounding


def test_jitter_moves_the_stain_densities_as_drawn(image):
    jitter = RandHEDJitter(scale=0.1, shift=0.02)
    jitter.set_random_state(3)
    out = jitter(image)
    assert out.min() >= 0.0 and out.max() <= 1.0 and not np.allclose(out, image)
    before, after = rgb2hed(image, channel_axis=0), rgb2hed(out, channel_axis=0)
    nuclei = before[0] > np.quantile(before[0], 0.9)  # haematoxylin-rich pixels
    expected = before[0][nuclei] * jitter._alpha[0] + jitter._beta[0]
    assert np.median(np.abs(after[0][nuclei] - expected)) < 0.01


def test_seeded_prob_and_dictionary_version(image):
    a, b = RandHEDJitterd("image", prob=1.0), RandHEDJitterd("image", prob=1.0)
    a.set_random_state(7)
    b.set_random_state(7)
    tensor = torch.from_numpy(image)
    out_a, out_b = a({"image": tensor})["image"], b({"image": tensor.clone()})["image"]
    assert isinstance(out_a, torch.Tensor) and torch.equal(out_a, out_b)
    assert torch.equal(RandHEDJitterd("image", prob=0.0)({"image": tensor})["image"], tensor)
    with pytest.raises(ValueError, match=r"\(3, H, W\) RGB"):
        RandHEDJitter()(image[:1])
    with pytest.raises(ValueError, match="scale must be >= 0"):
        RandHEDJitter(scale=-0.1)
