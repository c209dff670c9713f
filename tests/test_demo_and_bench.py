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
import shutil

import numpy as np
import pytest
from PIL import Image

from scripts.bench import median_time, naive_ellipse_mask
from scripts.demo import demo
from tests.conftest import SAMPLE
from transforms import PointsToEllipseMask, read_points


def test_demo_writes_summary_masks_and_metrics(tmp_path, sample_names):
    demo(output=str(tmp_path / "demo"), samples=2)
    out = tmp_path / "demo"
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["tiles"] == 4 and set(summary["per_tile"]) == set(sample_names)
    mean = summary["mean"]
    assert mean["point_f1"] == 1.0  # every point owns exactly one pseudo nucleus
    assert 0.3 < mean["aji"] < 0.7 and 0.4 < mean["pixel_f1"] < 0.85  # ellipses are rough, not random
    for name in sample_names:
        mask = np.asarray(Image.open(out / f"{name}_pseudo1.png"))
        assert mask.shape == (256, 256) and mask.max() == len(read_points(SAMPLE / "points" / f"{name}.csv"))
    picture = Image.open(out / "summary.png")
    assert picture.size[0] > 5 * 256 and picture.size[1] > 4 * 256
    assert (out / "metrics.md").read_text().count("\n|") >= 6


def test_demo_without_labels_and_with_a_bad_folder(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE / "images", data / "images")
    shutil.copytree(SAMPLE / "points", data / "points")
    demo(data=str(data), output=str(tmp_path / "out"), samples=1)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["per_tile"] == {}
    (data / "points" / "TCGA-18-5592-01Z-00-DX1_y100_x600.csv").write_text("y,x\n10,10\n900,10\n")
    with pytest.raises(SystemExit):
        demo(data=str(data), output=str(tmp_path / "bad"))
    assert "outside the 256x256 image" in capsys.readouterr().err


def test_vectorised_sampler_beats_the_naive_loop_20x(monuseg):
    points = read_points(monuseg / "points" / "TCGA-18-5592-01Z-00-DX1.csv")
    naive = naive_ellipse_mask(points, (1000, 1000))
    sampler = PointsToEllipseMask(spatial_size=(1000, 1000))
    ours = sampler.sample(points).label
    # same prior, comparable masks: the baseline is a fair reference
    naive_areas, our_areas = np.bincount(naive.ravel())[1:], np.bincount(ours.ravel())[1:]
    assert abs(np.median(naive_areas) - np.median(our_areas)) < 0.15 * np.median(our_areas)
    ratio = median_time(lambda: naive_ellipse_mask(points, (1000, 1000)), repeats=1, warmup=0) / median_time(
        lambda: sampler.sample(points), repeats=9
    )
    assert ratio >= 20, f"only {ratio:.1f}x faster than the per-nucleus loop"
