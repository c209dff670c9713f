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
from __future__ import annotations

import json

import numpy as np
import pytest
from monai.data import MetaTensor
from skimage.measure import regionprops

from tests.helpers import SAMPLE
from transforms import PointsToEllipseMask, PointsToEllipseMaskd, read_points


def grid_points(size: int, spacing: int) -> np.ndarray:
    """A jittered grid of points ``spacing`` px apart: isolated nuclei, no density cap, no overlap."""
    centres = np.arange(spacing // 2, size - spacing // 2 + 1, spacing, dtype=np.float64)
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    jitter = np.random.default_rng(0).uniform(-0.5, 0.5, size=(yy.size, 2))
    return np.stack([yy.ravel(), xx.ravel()], axis=1) + jitter


def sample_many(sampler: PointsToEllipseMask, points: np.ndarray, size: int, repeats: int):
    results = []
    for seed in range(repeats):
        sampler.set_random_state(seed)
        results.append(sampler.sample(points, (size, size)))
    return results


def expected_axis_ratio(eccentricity_range=(0.5, 0.99), max_axis_ratio=2.0) -> float:
    e = np.linspace(*eccentricity_range, 200_001)
    return float(np.mean(np.maximum(np.sqrt(1 - e**2), 1 / max_axis_ratio)))


def test_paper_prior_statistics_on_thousands_of_isolated_nuclei():
    points = grid_points(2000, 100)  # 400 points a sample
    sampler = PointsToEllipseMask(area_range=(256, 1440))
    results = sample_many(sampler, points, 2000, repeats=5)
    regions = [r for res in results for r in regionprops(res.label)]
    assert len(regions) == 2000
    areas = np.array([r.area for r in regions])
    assert abs(areas.mean() - (256 + 1440) / 2) < 0.02 * 848  # U(256, 1440): mean 848
    assert 250 <= areas.min() and areas.max() <= 1450
    ratio = np.array([r.axis_minor_length / r.axis_major_length for r in regions])
    assert abs(ratio.mean() - expected_axis_ratio()) < 0.02
    assert ratio.min() > 0.45  # major/minor capped at 2 (raster noise aside)
    # isolated nuclei are never trimmed by neighbours
    for res in results:
        assert np.array_equal(np.bincount(res.label.ravel(), minlength=401)[1:], res.areas)


def test_density_prior_and_microns_per_pixel_scaling():
    points = grid_points(2000, 100)
    at_40x = sample_many(PointsToEllipseMask(prior="density"), points, 2000, repeats=5)
    areas = np.concatenate([r.areas for r in at_40x])
    # an isolated point has density 1 / (2 pi sigma^2): mean 1000 exp(-1000 rho) + 100
    rho = 1 / (2 * np.pi * 20.0**2)
    expected = 1000 * np.exp(-1000 * rho) + 100
    assert abs(areas.mean() - expected) < 0.06 * expected
    at_20x = sample_many(PointsToEllipseMask(prior="density", mpp=0.5), points / 2, 1000, repeats=5)
    areas_20x = np.concatenate([r.areas for r in at_20x])
    assert abs(areas_20x.mean() * 4 - areas.mean()) < 0.08 * areas.mean()


def test_overlap_rule_and_point_ownership_on_real_points(monuseg):
    points = read_points(monuseg / "points" / "TCGA-HE-7130-01Z-00-DX1.csv")  # 1862 crowded nuclei
    for max_overlap in (0.05, 0.3):
        sampler = PointsToEllipseMask(max_overlap=max_overlap)
        sampler.set_random_state(1)
        res = sampler.sample(points, (1000, 1000))
        kept = res.areas > 0
        final = np.bincount(res.label.ravel(), minlength=len(points) + 1)[1:]
        lost = 1 - final[kept] / res.areas[kept]
        assert lost.max() <= max_overlap + 1e-9
        if max_overlap > 0.05:
            assert lost.max() > 0.05  # the parameter, not something else, bounds the overlap
        pixel = np.floor(points + 0.5).astype(int)
        owner = res.label[pixel[:, 0], pixel[:, 1]]
        assert np.array_equal(owner[kept], np.flatnonzero(kept) + 1)
        assert sum(len(v) for v in res.dropped.values()) == (~kept).sum()
        assert (~kept).sum() <= 0.01 * len(points)


def test_sample_crops_every_point_owns_its_nucleus(sample_names):
    for name in sample_names:
        points = read_points(SAMPLE / "points" / f"{name}.csv")
        sampler = PointsToEllipseMask(spatial_size=(256, 256))
        sampler.set_random_state(0)
        label = sampler(points)
        assert isinstance(label, MetaTensor) and label.shape == (1, 256, 256) and label.dtype.is_floating_point is False
        pixel = np.floor(points + 0.5).astype(int)
        assert np.array_equal(label[0].numpy()[pixel[:, 0], pixel[:, 1]], np.arange(1, len(points) + 1))
        assert json.loads(label.meta["dropped_points"]) == {}


def test_deterministic_for_a_seed():
    points = read_points(SAMPLE / "points" / "TCGA-HE-7129-01Z-00-DX1_y200_x300.csv")
    a, b, c = (PointsToEllipseMask(spatial_size=(256, 256)) for _ in range(3))
    a.set_random_state(7)
    b.set_random_state(7)
    c.set_random_state(8)
    first, second, other = a(points), b(points), c(points)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)
    assert not np.array_equal(a(points), first)  # the next draw of the same sampler differs


def test_edge_cases():
    sampler = PointsToEllipseMask(spatial_size=(64, 80))
    empty = sampler(np.zeros((0, 2)))
    assert empty.shape == (1, 64, 80) and int(empty.max()) == 0
    one = sampler(np.array([[30.0, 40.0]]))
    assert set(np.unique(one.numpy())) == {0, 1} and one[0, 30, 40] == 1
    border = np.array([[0.0, 0.0], [63.4, 79.4], [-0.4, 40.0], [32.0, 79.0]])
    label = sampler(border)[0].numpy()
    assert [label[0, 0], label[63, 79], label[0, 40], label[32, 79]] == [1, 2, 3, 4]
    duplicates = np.array([[20.0, 20.0], [20.2, 20.1], [40.0, 40.0], [20.0, 20.0]])
    res = sampler.sample(duplicates)
    assert res.dropped == {"duplicate": [1, 3]}
    assert set(np.unique(res.label)) == {0, 1, 3}


def test_five_thousand_points():
    points = np.random.default_rng(0).uniform(0, 999, size=(5000, 2))
    sampler = PointsToEllipseMask(spatial_size=(1000, 1000))
    sampler.set_random_state(0)
    res = sampler.sample(points)
    kept = res.areas > 0
    pixel = np.floor(points + 0.5).astype(int)
    assert np.array_equal(res.label[pixel[kept, 0], pixel[kept, 1]], np.flatnonzero(kept) + 1)
    assert kept.mean() > 0.97
    assert set(res.dropped) <= {"duplicate", "overlap"}


def test_bad_input_messages():
    sampler = PointsToEllipseMask(spatial_size=(32, 32))
    with pytest.raises(ValueError, match="outside the 32x32 image"):
        sampler(np.array([[5.0, 40.0]]))
    with pytest.raises(ValueError, match="NaN"):
        sampler(np.array([[5.0, np.nan]]))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        sampler(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="spatial_size"):
        PointsToEllipseMask()(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="prior"):
        PointsToEllipseMask(prior="gaussian")
    with pytest.raises(ValueError, match="area_range"):
        PointsToEllipseMask(area_range=(500, 100))


def test_dictionary_version_uses_reference_image_and_compose_seed():
    from monai.transforms import Compose

    points = read_points(SAMPLE / "points" / "TCGA-A7-A13F-01Z-00-DX1_y380_x420.csv")
    data = {"image": np.zeros((3, 256, 256), np.float32), "points": points}
    pipeline = Compose([PointsToEllipseMaskd("points", label_key="label")]).set_random_state(3)
    again = Compose([PointsToEllipseMaskd("points", label_key="label")]).set_random_state(3)
    out = pipeline(data)
    assert out["label"].shape == (1, 256, 256) and int(out["label"].max()) == len(points)
    assert np.array_equal(out["label"], again(data)["label"])
