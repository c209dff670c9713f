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
"""Tests of ``scripts/cli/release.py`` and of the shipped model (``bundle/models/model.pt``)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from networks import HoVerUNet
from scripts.cli.release import release_model
from scripts.data.images import load_tile, read_label
from scripts.evaluation.metrics import point_f1
from tests.helpers import REPO, SAMPLE, save_random_segmenter

BUNDLE = REPO / "bundle"


def test_release_writes_half_precision_weights_hash_and_metrics(tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    weights = save_random_segmenter(tmp_path / "model.pt", seed=2)
    evaluation = tmp_path / "metrics.json"
    evaluation.write_text(json.dumps({"n_images": 7, "mean": {"aji": 0.5, "pq": 0.4, "point_f1": 0.8, "sq": 0.7}}))
    with pytest.raises(ValueError, match="half precision changes the nuclei"):
        release_model(weights, evaluation, "a test", bundle=bundle, min_agreement=1.01)
    assert not (bundle / "models" / "model.pt").exists()
    card = release_model(weights, evaluation, "a test", bundle=bundle, min_agreement=0.9)  # random weights: fragile
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert card["sample_aji_fp16_vs_fp32"] >= 0.9 and card["megabytes"] < 6
    assert card["md5"] == hashlib.md5((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    assert f'hash_val: "{card["md5"]}"' in (bundle / "large_files.yml").read_text()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] == {
        "validation_mean_aji": 0.5,
        "validation_mean_pq": 0.4,
        "validation_mean_point_f1": 0.8,
        "validation_images": 7,
    }
    assert json.loads((bundle / "models" / "model.json").read_text())["provenance"] == "a test"
    network = HoVerUNet()
    network.load_state_dict(state)  # fp16 values into the float32 network
    assert next(network.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="not an evaluation report"):
        release_model(weights, tmp_path / "missing.json", "x", bundle=bundle)


def test_the_shipped_model_matches_its_hash_and_finds_the_sample_nuclei(tmp_path):
    """The model that comes with the bundle: trained from points only (``models/model.json``), no training needed."""
    model = BUNDLE / "models" / "model.pt"
    listed = re.search(r'hash_val: "([0-9a-f]{32})"', (BUNDLE / "large_files.yml").read_text()).group(1)
    assert hashlib.md5(model.read_bytes()).hexdigest() == listed
    card = json.loads((BUNDLE / "models" / "model.json").read_text())
    assert "points" in card["provenance"] and card["md5"] == listed
    parser = ConfigParser(ConfigParser.load_config_files([BUNDLE / "configs" / "inference.json"]))
    parser.update({"input": str(SAMPLE / "images"), "output_dir": str(tmp_path), "outputs": ["label"]})
    summary = parser.get_parsed_content("evaluator").run()
    scores = []
    for record in summary["images"]:
        item = {"image": record["input"], "points": str(SAMPLE / "points" / f"{record['name']}.csv")}
        scores.append(point_f1(read_label(record["outputs"]["label"]), load_tile(item)[1]))
    assert np.mean(scores) >= 0.8, scores


def test_the_shipped_model_inference_json_and_the_cpu_profile_are_one_network():
    """The shipped weights, ``inference.json`` and ``train_cpu.json`` (which trains every ``compare`` row and the
    ``cpu`` main job) name the same ``HoVerUNet`` widths, so a model the profile trains runs with ``inference.json``."""
    from networks.hover_unet import hover_unet_features

    shipped = hover_unet_features(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    inference = ConfigParser(ConfigParser.load_config_files([BUNDLE / "configs" / "inference.json"]))
    train_cpu = json.loads((BUNDLE / "configs" / "train_cpu.json").read_text())
    assert shipped == tuple(inference["network_def"]["network"]["features"]) == (16, 32, 64, 128, 256, 16)
    assert tuple(train_cpu["network_def"]["features"]) == shipped
    assert hover_unet_features(HoVerUNet().state_dict()) == shipped  # the class default, used by the tests' stand-ins
