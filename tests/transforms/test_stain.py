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
"""Tests of ``transforms/stain.py``: HED stain jitter and Reinhard colour transfer on real H&E."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2hed

from tests.helpers import SAMPLE
from transforms import RandHEDJitter, RandHEDJitterd, ReinhardColorMatch, lab_statistics


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


def _sample(name: str) -> np.ndarray:
    return np.asarray(Image.open(SAMPLE / "images" / f"{name}.png").convert("RGB")).transpose(2, 0, 1)


def test_reinhard_gives_the_image_the_target_colour_statistics(sample_names):
    source, target = _sample(sample_names[0]), _sample(sample_names[-1])
    mean, std = lab_statistics(target)
    before = lab_statistics(source)
    assert np.abs(before[0] - mean).max() > 3  # two different stains: something to transfer
    out = ReinhardColorMatch(mean, std)(source)
    assert out.dtype == np.uint8 and out.shape == source.shape
    after_mean, after_std = lab_statistics(out)
    # up to uint8 rounding and the clipping of out-of-gamut colours
    assert np.abs(after_mean - mean).max() < 1.5 and np.abs(after_std / std - 1).max() < 0.1
    # the structure stays: the image's own lightness order is kept
    lightness = np.corrcoef(source.mean(axis=0).ravel(), out.astype(np.float64).mean(axis=0).ravel())[0, 1]
    assert lightness > 0.95


def test_reinhard_to_the_image_itself_changes_nothing(image):
    out = ReinhardColorMatch(*lab_statistics(image))(torch.from_numpy(image))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert (out.numpy() - image).__abs__().max() < 1e-3


def test_reinhard_rejects_bad_targets_and_shapes(image):
    with pytest.raises(ValueError, match="3 means and 3 positive stds"):
        ReinhardColorMatch([50, 0, 0], [10, 0, 5])
    with pytest.raises(ValueError, match=r"expects a \(3, H, W\) RGB image"):
        ReinhardColorMatch([50, 0, 0], [10, 5, 5])(image[0])
