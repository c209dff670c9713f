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

from scripts.cli.demo import demo
from tests.helpers import SAMPLE
from transforms import read_points


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
