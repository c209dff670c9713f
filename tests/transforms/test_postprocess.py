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
"""HoVerNetInstances against MONAI's HoVerNetInstanceMapPostProcessing on real MoNuSeg crops."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.apps.pathology.transforms.post.array import HoVerNetInstanceMapPostProcessing

from scripts.evaluation.metrics import aji
from tests.helpers import SAMPLE, load_label
from transforms import MONUSEG_RANGES, HoVerNetInstances, HVMap


def _noisy_prediction(label: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    foreground = (label > 0).astype(np.float32)
    logits = np.stack([1 - foreground, foreground]) * 4 + rng.normal(0, 1, (2, *label.shape)).astype(np.float32)
    hv = np.asarray(HVMap()(label[None])) + rng.normal(0, 0.05, (2, *label.shape)).astype(np.float32)
    return logits, hv


@pytest.mark.parametrize("name", ["TCGA-18-5592-01Z-00-DX1_y100_x600", "TCGA-HE-7129-01Z-00-DX1_y200_x300"])
def test_instances_equal_monai_and_recover_the_label(name):
    label = load_label(SAMPLE / "labels" / f"{name}.png")
    logits, hv = _noisy_prediction(label, seed=0)
    ours = HoVerNetInstances()(logits, hv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, reference = HoVerNetInstanceMapPostProcessing(sobel_kernel_size=21)(torch.tensor(logits), torch.tensor(hv))
    assert ours.shape == (1, *label.shape) and ours.dtype == np.int32
    assert np.array_equal(ours, np.asarray(reference))
    assert aji(ours[0], label) > 0.6  # a clean prediction of the real nuclei is split back into them


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"expected nucleus logits \(2, H, W\)"):
        HoVerNetInstances()(np.zeros((1, 8, 8)), np.zeros((2, 8, 8)))


def test_fixed_ranges_come_from_the_points(monuseg):
    """MONUSEG_RANGES' Sobel range: shape-prior masks of the 23 training tiles' points (seed 0), no dense label."""
    import json

    from transforms import MONUSEG_RANGES, PointsToEllipseMask, read_points, sobel_range_of

    masks = []
    for stem in json.loads((monuseg / "split.json").read_text())["train"]:
        sampler = PointsToEllipseMask(spatial_size=(1000, 1000))
        sampler.set_random_state(0)
        masks.append(np.asarray(sampler(read_points(monuseg / "points" / f"{stem}.csv")))[0])
    assert sobel_range_of(masks) == pytest.approx(MONUSEG_RANGES["sobel_range"], abs=1e-4)
    assert MONUSEG_RANGES["hv_range"] == (-1.0, 1.0)


def test_fast_filters_equal_monai_on_a_real_crop():
    """The scipy filters of HoVerNetInstances compute MONAI's Sobel gradients and Gaussian smoothing."""
    from monai.transforms import GaussianSmooth, SobelGradients

    from transforms.postprocess import GaussianSmooth2d, separable_correlate

    label = load_label(SAMPLE / "labels" / "TCGA-18-5592-01Z-00-DX1_y100_x600.png")
    _, hv = _noisy_prediction(label, seed=1)
    normalised = (hv + 1.0) / 2.0
    ours = HoVerNetInstances(sobel_kernel_size=21)
    for axis, kernels in ((1, ours.sobel_x), (0, ours.sobel_y)):
        monai = np.asarray(SobelGradients(kernel_size=21, spatial_axes=axis)(normalised[axis : axis + 1]))[0]
        assert np.abs(separable_correlate(normalised[axis], kernels, "mirror") - monai).max() < 1e-6
    smooth = np.asarray(GaussianSmooth(sigma=1.0)(torch.tensor(normalised[:1])))
    assert smooth.shape == GaussianSmooth2d()(normalised[:1]).shape == (1, *label.shape)
    assert np.abs(GaussianSmooth2d()(normalised[:1]) - smooth).max() < 1e-6


def test_mask_threshold_is_a_probability_of_the_softmax():
    logits = np.zeros((2, 40, 40), dtype=np.float32)
    logits[1, 5:15, 5:15] = np.log(0.7 / 0.3)  # probability 0.7
    logits[1, 20:30, 20:30] = np.log(0.9 / 0.1)  # probability 0.9
    assert HoVerNetInstances(mask_threshold=0.5).foreground(logits).sum() == 200
    assert HoVerNetInstances().foreground(logits).sum() == 200  # argmax: ties (probability 0.5) are background
    assert HoVerNetInstances(mask_threshold=0.8).foreground(logits).sum() == 100
    with pytest.raises(ValueError, match="mask_threshold must be in"):
        HoVerNetInstances(mask_threshold=1.5)


@pytest.mark.parametrize("name", ["TCGA-18-5592-01Z-00-DX1_y100_x600", "TCGA-HE-7129-01Z-00-DX1_y200_x300"])
def test_markers_equal_monai(name):
    """Filled holes, the reflect-padded opening, labels and small-object removal as MONAI's markers, also on a crop
    whose nuclei touch every edge, and on a ring (a hole to fill) in a corner."""
    from monai.apps.pathology.transforms.post.array import GenerateWatershedMarkers

    label = load_label(SAMPLE / "labels" / f"{name}.png")
    logits, hv = _noisy_prediction(label, seed=2)
    ours = HoVerNetInstances(**MONUSEG_RANGES)
    monai = GenerateWatershedMarkers(threshold=0.4, radius=2, min_object_size=10)
    mask = ours.foreground(logits)
    for crop in (np.s_[:, :], np.s_[7:200, 13:151]):
        m = np.ascontiguousarray(mask[(slice(None), *crop)])
        border = ours._fixed_border(m, hv[(slice(None), *crop)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = np.asarray(monai(m, border))
        assert reference.max() > 5 and np.array_equal(ours.markers(m, border), reference)
    ring = np.zeros((1, 40, 40), dtype=np.uint8)
    ring[0, :15, :15] = 1
    ring[0, 5:9, 5:9] = 0  # a hole: filled
    ring[0, 25:38, 25:38] = 1
    ring[0, 30:33, 30:38] = 0  # open to the right: not a hole
    none = np.zeros(ring.shape, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = np.asarray(monai(ring, none))
    assert np.array_equal(ours.markers(ring, none), reference) and reference[0, 6, 6] > 0
