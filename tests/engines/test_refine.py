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
"""Stage 5, refine.json: the shipped model as teacher on the sample's training crops, the labels it writes, the
ignore mask on its way to the loss, resume, and the compare rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser

from scripts.engines.losses import MaskedHoVerNetLoss
from scripts.engines.refine import PointConstrainedLabeller
from scripts.engines.segmentation import PrepareBatchNucleus
from scripts.runtime.settings import clear_error
from tests.helpers import REPO, SAMPLE, load_label, parse_configs
from transforms.points_io import read_points

CONFIGS = REPO / "bundle" / "configs"
SHIPPED = REPO / "bundle" / "models" / "model.pt"


def _refine(output_dir: Path, **overrides) -> ConfigParser:
    settings = {
        "refine_outlines": "teacher",
        "data_dir": str(SAMPLE), "teacher_path": str(SHIPPED), "output_dir": str(output_dir), "iterations": 4,
        "epoch_length": 2, "val_interval": 1, "crop_size": 64, "amp": False, "flip_tta": False,
        "device": "$torch.device('cpu')", **overrides,
    }  # fmt: skip
    return parse_configs(CONFIGS / "train.json", CONFIGS / "train_cpu.json", CONFIGS / "refine.json", **settings)


def _run(parser: ConfigParser) -> ConfigParser:
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("refine")
    return parser


def test_refine_labels_the_training_tiles_under_the_points_and_trains_a_student(tmp_path):
    parser = _run(_refine(tmp_path / "run"))
    folder = tmp_path / "run" / "refined_labels"
    training = json.loads((folder / "datalist.json").read_text())["training"]
    assert len(training) == 3  # the sample's 4 crops minus its validation crop
    for item in training:
        label = load_label(folder / item["label"])
        ignore = load_label(folder / item["ignore"]) > 0
        points = read_points(SAMPLE / "points" / f"{item['name']}.csv")
        pixel = np.floor(points + 0.5).astype(int)
        held = label[pixel[:, 0], pixel[:, 1]]
        assert np.mean(held == np.arange(1, len(points) + 1)) > 0.95  # nucleus i + 1 holds point i
        assert label.max() <= len(points) and not (ignore & (label > 0)).any()
    diagnostics = json.loads((folder / "diagnostics.json").read_text())["summary"]
    assert (
        diagnostics["kept"] + diagnostics["split"] + diagnostics["filled"] + diagnostics["missing"]
        == diagnostics["points"]
        == sum(len(read_points(SAMPLE / "points" / f"{item['name']}.csv")) for item in training)
    )
    # reporting only: the points' constraints make the shipped model's nuclei closer to the truth
    assert diagnostics["refined_aji"] > diagnostics["teacher_aji"] + 0.02
    # ... and per rule, each point's nucleus against the true nucleus under it (the teacher keeps most nuclei well)
    tiles = json.loads((folder / "diagnostics.json").read_text())["tiles"]
    assert 0.5 < diagnostics["kept_iou"] <= 1 and all(0 <= t["kept_iou"] <= 1 for t in tiles)
    assert all(k in diagnostics for k in ("split_iou", "filled_iou"))
    from scripts.cli.label_quality import label_quality  # the same numbers for any labels folder

    quality = label_quality(str(folder), str(SAMPLE))
    assert quality["tiles"] == 3 and quality["refined_aji"] == pytest.approx(diagnostics["refined_aji"])
    assert quality["kept_iou"] == pytest.approx(diagnostics["kept_iou"]) and quality["kept"] > 0
    with pytest.raises(SystemExit, match="no label PNG with a dense label"):
        label_quality(str(tmp_path), str(SAMPLE))
    assert (folder / "refine_example.png").is_file()
    assert parser.get_parsed_content("train#trainer").state.iteration == 4
    assert (tmp_path / "run" / "model.pt").is_file()
    with pytest.raises(Exception) as error:
        _run(_refine(tmp_path / "other", refine_outlines="dark"))
    assert "refine_outlines must be one of" in str(clear_error(error.value))


def test_the_ignore_mask_reaches_the_loss_aligned_with_the_label(tmp_path):
    parser = _run(_refine(tmp_path / "run", iterations=2, epoch_length=2, crop_size=128))
    assert isinstance(parser.get_parsed_content("loss"), MaskedHoVerNetLoss)
    parser = _refine(tmp_path / "run", crop_size=128, batch_size=3)
    ignored = 0
    for _, batch in zip(range(6), parser.get_parsed_content("train#dataloader"), strict=False):
        image, target = PrepareBatchNucleus()(batch)
        assert target["ignore"].shape == (3, 1, 128, 128)
        ignore = target["ignore"] > 0
        assert not (target["nucleus_prediction"][:, 1:] > 0)[ignore].any()  # ignored pixels are never nuclei
        ignored += int(ignore.sum())
    assert ignored > 0


def test_an_interrupted_refine_resumes_without_relabelling(tmp_path, monkeypatch):
    folder = tmp_path / "run" / "refined_labels"
    original = PointConstrainedLabeller._label_tile
    calls = []

    def fail_on_second(self, item, index, paths):
        calls.append(item["name"])
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(self, item, index, paths)

    monkeypatch.setattr(PointConstrainedLabeller, "_label_tile", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        _run(_refine(tmp_path / "run"))
    assert not (folder / "datalist.json").exists() and not list(folder.rglob(".*.tmp"))
    first = folder / "ignore" / f"{calls[0]}.png"
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(PointConstrainedLabeller, "_label_tile", original)
    relabelled = []
    monkeypatch.setattr(
        PointConstrainedLabeller, "_label_tile", lambda self, *a: relabelled.append(a[0]["name"]) or original(self, *a)
    )
    _run(_refine(tmp_path / "run"))
    assert first.stat().st_mtime_ns == stamp and calls[0] not in relabelled and len(relabelled) == 2
    assert (folder / "datalist.json").is_file()
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    parser = _run(_refine(tmp_path / "run", iterations=6))  # the student resumes from its last checkpoint
    assert parser.get_parsed_content("train#trainer").state.iteration == 6
    assert len(relabelled) == 2 and checkpoints[-1] == "checkpoint_00000004.pt"


def test_labels_of_another_teacher_are_never_mixed_in(tmp_path):
    _run(_refine(tmp_path / "run", iterations=2))
    other = tmp_path / "other.pt"
    shutil.copy(SHIPPED, other)
    with other.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(Exception) as error:
        _run(_refine(tmp_path / "run", teacher_path=str(other)))
    assert "holds labels from another teacher" in str(clear_error(error.value))
    with pytest.raises(Exception) as error:
        _run(_refine(tmp_path / "run", refine_outlines="haematoxylin"))
    assert "holds labels made with other settings" in str(clear_error(error.value))
    with pytest.raises(Exception) as error:
        _run(_refine(tmp_path / "run", refine_pointless="background"))
    assert "holds labels made with other settings" in str(clear_error(error.value))
    record = tmp_path / "run" / "refined_labels" / "teacher.json"
    earlier = {k: v for k, v in json.loads(record.read_text()).items() if k != "split"}  # made before 0.12.0
    record.write_text(json.dumps(earlier))
    with pytest.raises(Exception) as error:
        _run(_refine(tmp_path / "run", iterations=2))
    assert "'split': 'distance_watershed'" in str(clear_error(error.value))
    with pytest.raises(Exception) as error:
        _run(_refine(tmp_path / "new", refine_pointless="drop"))
    assert "refine_pointless must be one of" in str(clear_error(error.value))
    with pytest.raises(Exception) as error:
        _run(_refine(tmp_path / "new", teacher_path=str(tmp_path / "missing.pt")))
    assert isinstance(clear_error(error.value), FileNotFoundError)
    assert "missing.pt: teacher model not found" in str(clear_error(error.value))


def test_compare_runs_each_teacher_first(tmp_path):
    from scripts.cli.compare import compare

    out = tmp_path / "compare"
    compare(data=str(SAMPLE), output=str(out), profile="smoke", rows="pseudo_refined2")
    rows = list(json.loads((out / "comparison.json").read_text()))
    assert [r.split(" (")[0].split(",")[0] for r in rows] == ["pseudo masks from the points", "pseudo masks"] + [
        "pseudo masks"
    ]
    assert len(rows) == 3
    record = json.loads((out / "seed0" / "pseudo_refined2" / "refined_labels" / "teacher.json").read_text())
    assert record["teacher_path"] == str(out / "seed0" / "pseudo_refined" / "model.pt")


def test_a_missing_refined_datalist_is_named(tmp_path):
    from scripts.engines.segmentation import segmentation_datalist

    with pytest.raises(ValueError, match="missing.json: refined datalist not found; run the refine workflow"):
        segmentation_datalist("refined", SAMPLE, refined_datalist=tmp_path / "missing.json")


def test_haematoxylin_outlines_move_some_nuclei_and_keep_the_points(tmp_path):
    assert json.loads((CONFIGS / "refine.json").read_text())["refine_outlines"] == "haematoxylin"  # the default
    _run(_refine(tmp_path / "run", iterations=2, refine_outlines="haematoxylin"))
    folder = tmp_path / "run" / "refined_labels"
    summary = json.loads((folder / "diagnostics.json").read_text())["summary"]
    assert 0 < summary["outlines_moved"] < summary["kept"] + summary["split"] + summary["filled"]
    for item in json.loads((folder / "datalist.json").read_text())["training"]:
        label = load_label(folder / item["label"])
        points = read_points(SAMPLE / "points" / f"{item['name']}.csv")
        pixel = np.floor(points + 0.5).astype(int)
        assert np.mean(label[pixel[:, 0], pixel[:, 1]] == np.arange(1, len(points) + 1)) > 0.95
        assert not ((load_label(folder / item["ignore"]) > 0) & (label > 0)).any()


def test_the_documented_command_runs_in_a_fresh_process(tmp_path):
    """``python -m monai.bundle run refine`` (as in the docs) in a new interpreter, where no test has imported the
    project's modules: every expression of refine.json must reach its code by itself."""
    import os
    import subprocess
    import sys

    configs = [str(CONFIGS / f) for f in ("train.json", "train_cpu.json", "refine.json")]
    settings = {
        "data_dir": str(SAMPLE), "teacher_path": str(SHIPPED), "output_dir": str(tmp_path / "run"), "iterations": 2,
        "epoch_length": 1, "val_interval": 1, "crop_size": 64, "amp": False, "flip_tta": False,
        "refine_outlines": "teacher", "refine_student_init": "teacher", "num_workers": 0,
    }  # fmt: skip
    arguments = [a for key, value in settings.items() for a in (f"--{key}", str(value))]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", "run", "refine", "--config_file", str(configs), *arguments]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model.pt").is_file()
    assert (tmp_path / "run" / "refined_labels" / "datalist.json").is_file()


def test_the_student_fine_tunes_its_teacher_when_asked(tmp_path):
    """``refine_student_init: teacher`` starts the student from the teacher's weights (a near-zero learning rate
    keeps them, so the saved student is the teacher); ``scratch`` starts from random weights."""
    import torch

    teacher = torch.load(SHIPPED, map_location="cpu", weights_only=True)

    def distance(run: Path) -> float:
        student = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
        return max(float((student[k].float() - v.float()).abs().max()) for k, v in teacher.items())

    for init, run in (("teacher", tmp_path / "tuned"), ("scratch", tmp_path / "new")):
        _run(_refine(run, iterations=2, lr=1e-12, refine_student_init=init))
    assert distance(tmp_path / "tuned") < 1e-5 < 0.01 < distance(tmp_path / "new")
    with pytest.raises(Exception) as error:
        _run(_refine(tmp_path / "bad", refine_student_init="teachers"))
    assert "refine_student_init must be one of" in str(clear_error(error.value))
    assert not (tmp_path / "bad" / "refined_labels").exists()  # refused before any tile is labelled
