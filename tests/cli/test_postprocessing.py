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
"""``python -m scripts postprocessing``: marker settings scored on one network pass per tile."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scripts.cli.postprocessing import DEFAULT, postprocessing
from scripts.data.images import load_tile, read_label
from scripts.engines.segmentation import real_items
from scripts.evaluation.metrics import POINT_ERRORS, instance_metrics, point_errors
from tests.helpers import REPO, SAMPLE, parse_configs

MODEL = REPO / "bundle" / "models" / "model.pt"
CONFIGS = REPO / "bundle" / "configs"


def test_the_default_row_is_the_evaluation_and_point_f1_picks_a_setting(tmp_path):
    """On the sample's real crops with the shipped model: the default setting's numbers are those of the evaluation's
    own predictor; every setting is scored; the pick is the best point F1; the what-ifs are read from the points."""
    result = postprocessing(str(MODEL), str(SAMPLE), "training", "0.3,0.4", "2,3", str(tmp_path))
    assert [(s["marker_threshold"], s["marker_radius"]) for s in result["settings"]] == [
        (0.3, 2), (0.3, 3), (0.4, 2), (0.4, 3)
    ]  # fmt: skip
    assert result["pick"]["point_f1"] == max(s["point_f1"] for s in result["settings"])
    default = result["default"]
    assert (default["marker_threshold"], default["marker_radius"]) == tuple(DEFAULT.values())

    configs = (CONFIGS / "train.json", CONFIGS / "train_cpu.json", CONFIGS / "evaluate.json")
    parser = parse_configs(*configs, data_dir=str(SAMPLE), model_path=str(MODEL))
    predictor = parser.get_parsed_content("predictor")
    items = real_items(SAMPLE, "training")
    assert result["tiles"] == len(items) == 3
    expected = {"aji": [], "merged_points": []}
    for item in items:
        instances = predictor.predict_item(item)
        dense, points = read_label(item["label"]), load_tile(item)[1]
        expected["aji"].append(instance_metrics(instances, dense)["aji"])
        expected["merged_points"].append(point_errors(instances, points)["merged_points"])
    assert default["aji"] == pytest.approx(np.mean(expected["aji"]), abs=1e-9)
    assert default["merged_points"] == pytest.approx(np.mean(expected["merged_points"]), abs=1e-9)
    assert all(k in default for k in POINT_ERRORS)
    what_if = result["what_if"]
    assert what_if["aji"] == pytest.approx(default["aji"])
    assert what_if["aji_merges_split"] >= default["aji"] - 1e-9 or default["merged_points"] == 0
    saved = json.loads((tmp_path / "postprocessing.json").read_text())
    assert saved["pick"] == result["pick"]
    assert "| marker threshold / radius | point F1 |" in (tmp_path / "postprocessing.md").read_text()


def test_bad_settings_get_one_line(tmp_path):
    with pytest.raises(SystemExit, match="--thresholds must lie in"):
        postprocessing(str(MODEL), str(SAMPLE), "training", "1.5", "2", str(tmp_path))
    with pytest.raises(SystemExit, match="--section must be"):
        postprocessing(str(MODEL), str(SAMPLE), "test", output=str(tmp_path))
