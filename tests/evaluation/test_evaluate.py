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
"""The evaluation report (``scripts.evaluation.evaluate``) on the embedded sample, against metrics computed directly."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.segmentation import expand_labels, find_boundaries

from scripts.evaluation.evaluate import (
    GT_COLOUR,
    PRED_COLOUR,
    evaluate,
    format_comparison,
    markdown_table,
    read_organs,
)
from scripts.evaluation.metrics import METRIC_NAMES, POINT_ERRORS, instance_metrics
from tests.helpers import SAMPLE, load_label
from transforms import read_points

ORGANS = {  # the sample's crops are named <id>_y.._x..; G9 and A7 in one group to test a 2-image mean
    "TCGA-18-5592-01Z-00-DX1": "liver",
    "TCGA-A7-A13F-01Z-00-DX1": "breast",
    "TCGA-G9-6336-01Z-00-DX1": "breast",
}  # TCGA-HE-7129 deliberately absent -> "unknown"


def _items(names: list[str]) -> list[dict]:
    return [
        {
            "image": str(SAMPLE / "images" / f"{n}.png"),
            "label": str(SAMPLE / "labels" / f"{n}.png"),
            "points": str(SAMPLE / "points" / f"{n}.csv"),
        }
        for n in names
    ]


def _gt(item: dict) -> np.ndarray:
    return load_label(Path(item["label"]))


def _relabelled_gt(item: dict) -> np.ndarray:
    """The ground truth with other label values (same partition): a perfect prediction."""
    gt = _gt(item)
    return np.where(gt > 0, gt * 7 + 3, 0)


def _degraded(item: dict) -> np.ndarray:
    """Every other nucleus removed; the rest eroded by 1 px (even tiles) or dilated by 1 px (odd tiles)."""
    gt = _gt(item)
    ids = np.unique(gt[gt > 0])
    kept = np.where(np.isin(gt, ids[::2]), gt, 0)
    if sorted(SAMPLE.joinpath("images").glob("*.png")).index(Path(item["image"])) % 2:
        return expand_labels(kept, 1)
    footprint = np.ones((3, 3), bool)
    inner = (ndimage.grey_erosion(kept, footprint=footprint) == kept) & (
        ndimage.grey_dilation(kept, footprint=footprint) == kept
    )
    return np.where(inner, kept, 0)


@pytest.fixture(scope="module")
def degraded_run(tmp_path_factory, sample_names) -> tuple[Path, dict, list[dict]]:
    out = tmp_path_factory.mktemp("degraded")
    items = _items(sample_names)
    return out, evaluate(items, _degraded, out, organs=ORGANS, progress=False), items


def test_perfect_prediction(tmp_path, sample_names):
    items = _items(sample_names)
    report = evaluate(items, _relabelled_gt, tmp_path, progress=False)
    assert report["n_images"] == 4 and report["n_images_with_points"] == 4 and report["std_ddof"] == 0
    assert set(report["mean"]) == {*METRIC_NAMES, *POINT_ERRORS}
    assert all(report["mean"][m] == 0.0 for m in POINT_ERRORS)  # the labels' nuclei each hold their one point
    assert "## Detection errors against the points" in (tmp_path / "metrics.md").read_text()
    for m in METRIC_NAMES:  # PQ/SQ/DQ carry MONAI's 1e-6 smoothing
        assert report["mean"][m] == pytest.approx(1.0, abs=1e-6), m
        assert report["std"][m] == pytest.approx(0.0, abs=1e-6), m
    assert report["per_organ"] == {}
    assert [report["per_image"][n]["n_gt"] for n in sample_names] == [32, 42, 32, 111]
    assert all(r["n_pred"] == r["n_gt"] and r["predict_s"] >= 0 for r in report["per_image"].values())
    assert json.loads((tmp_path / "metrics.json").read_text()) == report
    assert {p.name for p in tmp_path.iterdir()} == {"metrics.json", "metrics.csv", "metrics.md", "overlays"}
    for item, name in zip(items, sample_names, strict=True):
        overlay = np.asarray(Image.open(tmp_path / "overlays" / f"{name}.png"))
        image = np.asarray(Image.open(item["image"]))
        assert overlay.shape == image.shape == (256, 256, 3)
        edge = find_boundaries(_gt(item), mode="inner")
        # prediction == ground truth: the green contours cover the yellow ones exactly; elsewhere the image
        assert np.all(overlay[edge] == PRED_COLOUR)
        np.testing.assert_array_equal(overlay[~edge], image[~edge])
    md = (tmp_path / "metrics.md").read_text()
    assert "| images | IoU | F1 | obj Dice | AJI | AJI+ | PQ | point F1 |" in md
    assert "| all (4 images) | 1.000 ± 0.000 | 1.000 ± 0.000 |" in md and "yellow" in md and "green" in md


def test_imperfect_prediction_matches_direct_metrics(degraded_run):
    out, report, items = degraded_run
    per_image = report["per_image"]
    for item in items:
        name = Path(item["image"]).stem
        direct = instance_metrics(_degraded(item), _gt(item), points=read_points(item["points"]))
        got = {m: per_image[name][m] for m in (*METRIC_NAMES, *POINT_ERRORS)}
        assert got == pytest.approx(direct, abs=1e-12)
        assert all(0.0 < got[m] < 1.0 for m in METRIC_NAMES), got
        # every other nucleus removed: its point is missed; nothing merged, every predicted nucleus holds its point
        n = per_image[name]["n_gt"]
        assert [got[m] for m in POINT_ERRORS] == pytest.approx([0.0, (n // 2) / n, 0.0]), name
        assert per_image[name]["n_pred"] == (per_image[name]["n_gt"] + 1) // 2
        # ground-truth-only boundaries show in yellow, predicted ones in green
        overlay = np.asarray(Image.open(out / "overlays" / f"{name}.png"))
        pred_edge = find_boundaries(_degraded(item), mode="inner")
        gt_only = find_boundaries(_gt(item), mode="inner") & ~pred_edge
        assert np.all(overlay[pred_edge] == PRED_COLOUR) and np.all(overlay[gt_only] == GT_COLOUR)
    for m in METRIC_NAMES:
        values = [per_image[n][m] for n in per_image]
        assert report["mean"][m] == pytest.approx(np.mean(values), abs=1e-12)
        assert report["std"][m] == pytest.approx(np.std(values), abs=1e-12)  # population std (ddof=0)
        assert report["std"][m] > 0
    assert json.loads((out / "metrics.json").read_text()) == report


def test_per_organ_and_csv(degraded_run, sample_names):
    out, report, _ = degraded_run
    per_image = report["per_image"]
    assert [per_image[n]["organ"] for n in sample_names] == ["liver", "breast", "breast", None]
    assert list(report["per_organ"]) == ["breast", "liver", "unknown"]
    assert {o: g["n"] for o, g in report["per_organ"].items()} == {"breast": 2, "liver": 1, "unknown": 1}
    breast = [per_image[sample_names[1]], per_image[sample_names[2]]]
    for m in METRIC_NAMES:
        assert report["per_organ"]["breast"]["mean"][m] == pytest.approx(np.mean([r[m] for r in breast]))
        assert report["per_organ"]["breast"]["std"][m] == pytest.approx(np.std([r[m] for r in breast]))
        assert report["per_organ"]["liver"]["mean"][m] == per_image[sample_names[0]][m]
        assert report["per_organ"]["liver"]["std"][m] == 0.0
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == sample_names
    assert list(rows[0]) == ["name", "organ", *METRIC_NAMES, *POINT_ERRORS, "n_pred", "n_gt", "predict_s"]
    assert [r["organ"] for r in rows] == ["liver", "breast", "breast", ""]
    for r in rows:
        assert {m: float(r[m]) for m in METRIC_NAMES} == {m: per_image[r["name"]][m] for m in METRIC_NAMES}
        assert (int(r["n_pred"]), int(r["n_gt"])) == (per_image[r["name"]]["n_pred"], per_image[r["name"]]["n_gt"])
    md = (out / "metrics.md").read_text()
    assert "## Per organ" in md and "| organ | n | IoU |" in md and "| breast | 2 |" in md
    assert f"| {sample_names[3]} | – |" in md  # per-image table: no organ for TCGA-HE-7129


def test_errors(tmp_path, sample_names):
    calls = []

    def predict(item):
        calls.append(item)
        return _gt(item)

    with pytest.raises(ValueError, match="no items"):
        evaluate([], predict, tmp_path, progress=False)
    items = _items(sample_names[:2])
    items[1]["label"] = str(tmp_path / "gone.png")
    with pytest.raises(FileNotFoundError, match="label file not found: .*gone.png"):
        evaluate(items, predict, tmp_path, progress=False)
    assert calls == []  # checked before any prediction
    with pytest.raises(ValueError, match=r"prediction for .*_y100_x600.png has shape \(256, 255\)"):
        evaluate(_items(sample_names[:1]), lambda item: _gt(item)[:, :-1], tmp_path, progress=False)
    with pytest.raises(ValueError, match="duplicate image names"):
        evaluate(_items(sample_names[:1]) * 2, predict, tmp_path, progress=False)
    shutil.copy(SAMPLE / "labels" / f"{sample_names[0]}.png", tmp_path / "label.png")
    Image.fromarray(np.zeros((200, 256), np.uint16)).save(tmp_path / "small.png")
    item = {"image": str(SAMPLE / "images" / f"{sample_names[0]}.png"), "label": str(tmp_path / "small.png")}
    with pytest.raises(ValueError, match=r"small.png has shape \(200, 256\)"):
        evaluate([item], predict, tmp_path, progress=False)
    assert not (tmp_path / "metrics.json").exists()  # nothing written by a failed run


def test_without_points_and_overlays(tmp_path, sample_names):
    items = [{k: v for k, v in item.items() if k != "points"} | {"name": "tile"} for item in _items(sample_names[:1])]
    report = evaluate(items, _degraded, tmp_path, overlays=False, progress=False)
    assert list(report["per_image"]) == ["tile"] and "point_f1" not in report["mean"]
    direct = instance_metrics(_degraded(items[0]), _gt(items[0]))
    assert {m: report["per_image"]["tile"][m] for m in direct} == pytest.approx(direct, abs=1e-12)
    assert not (tmp_path / "overlays").exists()
    md = (tmp_path / "metrics.md").read_text()
    assert "| images | IoU | F1 | obj Dice | AJI | AJI+ | PQ |\n" in md and "| all (1 image) |" in md


def test_format_comparison(tmp_path, degraded_run, sample_names):
    out, degraded, _ = degraded_run
    perfect = evaluate(_items(sample_names), _relabelled_gt, tmp_path, progress=False)
    table = format_comparison({"dense": perfect, "points": out / "metrics.json"})
    lines = table.strip().splitlines()
    assert lines[0] == "| run | n | IoU | F1 | obj Dice | AJI | AJI+ | PQ | point F1 |"
    assert len(lines) == 4 and lines[2].startswith("| dense | 4 | 1.000 ± 0.000 |")
    cells = [c.strip() for c in lines[3].strip("|").split("|")]
    mean, std = degraded["mean"], degraded["std"]
    cols = ["pixel_iou", "pixel_f1", "object_dice", "aji", "aji_plus", "pq", "point_f1"]
    assert cells == ["points", "4", *(f"{mean[m]:.3f} ± {std[m]:.3f}" for m in cols)]
    with pytest.raises(ValueError, match="'broken'"):
        format_comparison({"broken": {"per_image": {}}})
    generic = markdown_table({"a": {"aji": 0.5, "pq": (0.25, 0.125)}, "b": {"aji": 1}}, first="x", digits=2)
    assert generic.splitlines() == ["| x | AJI | PQ |", "|---|---|---|", "| a | 0.50 | 0.25 ± 0.12 |", "| b | 1 | – |"]


def test_read_organs(tmp_path):
    assert read_organs(tmp_path) == {}
    (tmp_path / "meta.csv").write_text("id,organ,n_nuclei\nTCGA-A,liver,480\nTCGA-B,breast,12\n,colon,3\nTCGA-C,,4\n")
    assert read_organs(tmp_path) == {"TCGA-A": "liver", "TCGA-B": "breast"}
    assert read_organs(tmp_path / "meta.csv") == read_organs(tmp_path)
    (tmp_path / "meta.csv").write_text("organ\nliver\n")
    with pytest.raises(ValueError, match="'id'"):
        read_organs(tmp_path)


def test_meta_csv_without_organs_is_accepted(tmp_path, caplog, sample_names):
    """A data folder whose meta.csv has other columns only (e.g. ``mpp``): organs unknown, said once."""
    (tmp_path / "meta.csv").write_text("id,mpp\nTCGA-A,0.25\n")
    with caplog.at_level(logging.INFO, logger="scripts.evaluation.evaluate"):
        organs = read_organs(tmp_path)
    assert organs == {}
    assert [r.getMessage() for r in caplog.records if "organ" in r.getMessage()] == [
        f"{tmp_path / 'meta.csv'}: no 'organ' column (has ['id', 'mpp']): organs unknown, no per-organ breakdown."
    ]
    report = evaluate(_items(sample_names[:1]), _relabelled_gt, tmp_path / "out", organs=organs, progress=False)
    assert report["per_organ"] == {} and report["per_image"][sample_names[0]]["organ"] is None


def test_read_organs_monuseg(monuseg):
    organs = read_organs(monuseg)
    assert len(organs) == 30
    assert set(organs.values()) == {"bladder", "breast", "colon", "kidney", "liver", "prostate", "stomach"}
