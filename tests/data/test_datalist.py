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
"""Tests of ``scripts/data/datalist.py`` and ``scripts/cli/prepare.py``: datalist building, point formats, problem
reports and the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from PIL import Image

from scripts.data.datalist import PrepareError, build_datalist, read_image_info, write_datalist
from tests.helpers import MONUSEG, REPO, SAMPLE
from transforms.points_io import read_points

STEMS = sorted(p.stem for p in (SAMPLE / "images").glob("*.png"))
N_POINTS = {"TCGA-18-5592-01Z-00-DX1_y100_x600": 32, "TCGA-A7-A13F-01Z-00-DX1_y380_x420": 42}


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A copy of the embedded sample (images/, labels/, points/)."""
    return Path(shutil.copytree(SAMPLE, tmp_path / "data"))


def _folders(root: Path) -> dict[str, Path]:
    return {"images": root / "images", "points": root / "points", "labels": root / "labels"}


def test_sample_folder(sample: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "datalist.json"
    write_datalist(**_folders(sample), output=output)
    saved = json.loads(output.read_text())
    assert [item["name"] for item in saved["training"]] == STEMS and saved["validation"] == []
    first = saved["training"][0]
    assert first == {
        "image": f"../data/images/{STEMS[0]}.png",
        "points": f"../data/points/{STEMS[0]}.csv",
        "label": f"../data/labels/{STEMS[0]}.png",
        "name": STEMS[0],
    }
    meta = saved["metadata"]
    assert (meta["num_training"], meta["num_validation"], meta["num_points_training"]) == (4, 0, 217)
    assert meta["images"] == "../data/images" and meta["warnings"] == [] and meta["tiles_without_points"] == []
    assert sorted(p.name for p in output.parent.iterdir()) == ["datalist.json"]  # no temporary file left

    moved = Path(shutil.move(tmp_path, tmp_path.parent / f"{tmp_path.name}_moved"))  # the datalist is portable
    items = load_decathlon_datalist(moved / "out" / "datalist.json", data_list_key="training", base_dir=moved / "out")
    for item, stem in zip(items, STEMS, strict=True):
        for key, folder in (("image", "images"), ("points", "points"), ("label", "labels")):
            assert Path(item[key]).is_file() and Path(item[key]).parent == moved / "data" / folder, item[key]
        assert item["name"] == stem
    for stem, n in N_POINTS.items():
        assert len(read_points(moved / "data" / "points" / f"{stem}.csv")) == n


def test_split_file_and_random_split(sample: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": STEMS[1:], "val": STEMS[:1], "organ": {}}))
    output = tmp_path / "datalist.json"
    write_datalist(**_folders(sample), output=output, split=split)
    validation = load_decathlon_datalist(output, data_list_key="validation")
    assert [item["name"] for item in validation] == STEMS[:1] and Path(validation[0]["label"]).is_file()
    saved = json.loads(output.read_text())
    assert [item["name"] for item in saved["training"]] == STEMS[1:]
    assert saved["metadata"]["num_points_validation"] == N_POINTS[STEMS[0]]

    draws = [build_datalist(**_folders(sample), base_dir=tmp_path, val_fraction=0.5, seed=s)[0] for s in (3, 3, 4)]
    names = [sorted(item["name"] for item in d["validation"]) for d in draws]
    assert len(names[0]) == 2 and names[0] == names[1]  # seeded
    assert sorted(names[0] + [item["name"] for item in draws[0]["training"]]) == STEMS


def test_split_problems(sample: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": STEMS[1:3] + ["unknown-id"], "val": STEMS[:1]}))
    datalist, problems = build_datalist(**_folders(sample), base_dir=tmp_path, split=split)
    assert len(problems) == 2, problems
    assert "'unknown-id' matches no image" in problems[0] or "'unknown-id' matches no image" in problems[1]
    assert any(p.startswith(str(sample / "images" / f"{STEMS[3]}.png")) and "neither" in p for p in problems)
    assert len(datalist["training"]) == 2 and len(datalist["validation"]) == 1  # only the valid tiles


def _other_formats(points: np.ndarray) -> dict[str, str]:
    """The same ``(y, x)`` points as GeoJSON (QuPath: ``[x, y]``, pixel corners), a JSON list and a QuPath TSV."""
    geojson = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "MultiPoint", "coordinates": [[x + 0.5, y + 0.5] for y, x in points.tolist()]},
                "properties": {"objectType": "annotation", "classification": {"name": "Nucleus"}},
            }
        ],
    }
    tsv = "x\ty\tclass\n" + "".join(f"{x}\t{y}\tNucleus\n" for y, x in points.tolist())
    return {".geojson": json.dumps(geojson), ".json": json.dumps(points.tolist()), ".tsv": tsv}


def test_point_formats_give_the_csv_points(sample: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for stem, suffix in zip(STEMS, (".geojson", ".json", ".tsv"), strict=False):
        csv_points = read_points(sample / "points" / f"{stem}.csv").astype(np.float64)
        (mixed / f"{stem}{suffix}").write_text(_other_formats(csv_points)[suffix])
        np.testing.assert_allclose(read_points(mixed / f"{stem}{suffix}"), csv_points, atol=1e-4, err_msg=suffix)
    shutil.copy(sample / "points" / f"{STEMS[3]}.csv", mixed)
    csv_only = build_datalist(**_folders(sample), base_dir=tmp_path)[0]["metadata"]
    datalist, problems = build_datalist(sample / "images", mixed, sample / "labels", base_dir=tmp_path)
    assert problems == []
    assert sorted(Path(item["points"]).suffix for item in datalist["training"]) == [".csv", ".geojson", ".json", ".tsv"]
    assert datalist["metadata"]["num_points_training"] == csv_only["num_points_training"] == 217


def test_points_next_to_images(sample: Path, tmp_path: Path) -> None:
    for csv in (sample / "points").iterdir():
        shutil.move(csv, sample / "images")
    datalist, problems = build_datalist(sample / "images", sample / "images", base_dir=sample)
    assert problems == []
    assert [(item["image"], item["points"]) for item in datalist["training"]] == [
        (f"images/{s}.png", f"images/{s}.csv") for s in STEMS
    ]


def _bad_folder(sample: Path) -> dict[str, str]:
    """Tiles with one problem each (plus a valid tile and a tile without points); return stem -> the bad file."""
    images, points, labels = (sample / k for k in ("images", "points", "labels"))
    image, csv, label = images / f"{STEMS[0]}.png", points / f"{STEMS[0]}.csv", labels / f"{STEMS[0]}.png"
    rows = csv.read_text().splitlines()
    for stem in ("good", "corrupt", "outside", "nan", "duplicate", "small_label", "rgb_label", "no_points", "empty"):
        shutil.copy(image, images / f"{stem}.png")
        shutil.copy(label, labels / f"{stem}.png")
        shutil.copy(csv, points / f"{stem}.csv")
    for p in (*images.glob("TCGA*"), *points.glob("TCGA*"), *labels.glob("TCGA*")):
        p.unlink()
    (images / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(2000))
    (points / "outside.csv").write_text("\n".join([*rows, "300.0,12.0"]) + "\n")
    (points / "nan.csv").write_text("\n".join([*rows[:3], "nan,40.0", *rows[3:]]) + "\n")
    (points / "duplicate.csv").write_text("\n".join([*rows, rows[5]]) + "\n")
    (points / "empty.csv").write_text("y,x\n")
    (points / "no_points.csv").unlink()
    (points / "orphan.csv").write_text("y,x\n10,10\n")
    (points / "ambiguous.json").write_text("[[10, 10]]")  # two point files for one image
    for folder, suffix in ((images, ".png"), (labels, ".png"), (points, ".csv")):
        shutil.copy(folder / f"good{suffix}", folder / f"ambiguous{suffix}")
    Image.fromarray(np.zeros((200, 256), np.uint16)).save(labels / "small_label.png")
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(labels / "rgb_label.png")
    return {
        "corrupt": "images/corrupt.png",
        "outside": "points/outside.csv",
        "nan": "points/nan.csv",
        "duplicate": "points/duplicate.csv",
        "small_label": "labels/small_label.png",
        "rgb_label": "labels/rgb_label.png",
        "no_points": "images/no_points.png",
        "orphan": "points/orphan.csv",
        "ambiguous": "points/ambiguous.csv",
    }


def test_every_problem_reported_at_once(sample: Path, tmp_path: Path) -> None:
    bad = _bad_folder(sample)
    output = tmp_path / "out" / "datalist.json"
    output.parent.mkdir()
    output.write_text("old datalist")
    with pytest.raises(PrepareError) as caught:
        write_datalist(**_folders(sample), output=output)
    problems = caught.value.problems
    assert len(problems) == len(bad), "\n".join(problems)
    for stem, file in bad.items():
        assert sum(p.startswith(f"{sample / file}: ") for p in problems) == 1, (stem, problems)
        assert str(sample / file) in str(caught.value)
    for stem in ("good", "empty"):
        assert not any(f"/{stem}." in p for p in problems)
    reasons = {stem: next(p for p in problems if p.startswith(str(sample / file))) for stem, file in bad.items()}
    assert "cannot read the image" in reasons["corrupt"]
    assert "line 4: non-finite" in reasons["nan"]
    assert "outside the 256x256 image" in reasons["outside"] and "duplicate" in reasons["duplicate"]
    assert "200x256 but its image is 256x256" in reasons["small_label"] and "integer" in reasons["rgb_label"]
    assert "no point file" in reasons["no_points"] and "no image named 'orphan.*'" in reasons["orphan"]
    assert "2 point files share the stem 'ambiguous' (ambiguous.csv, ambiguous.json)" in reasons["ambiguous"]
    assert output.read_text() == "old datalist" and [p.name for p in output.parent.iterdir()] == ["datalist.json"]

    datalist = write_datalist(**_folders(sample), output=output, strict=False)  # the valid tiles only
    assert sorted(item["name"] for item in datalist["training"]) == ["empty", "good"]
    assert datalist["metadata"]["skipped"] == problems and datalist["metadata"]["tiles_without_points"] == ["empty"]
    assert json.loads(output.read_text()) == datalist


def test_image_headers(tmp_path: Path) -> None:
    import tifffile

    tifffile.imwrite(tmp_path / "rgb16.tif", np.zeros((10, 12, 3), np.uint16), photometric="rgb")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((10, 12), np.float32))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 10, 12), np.uint8))
    Image.fromarray(np.zeros((10, 12, 4), np.uint8)).save(tmp_path / "rgba.png")
    assert read_image_info(tmp_path / "rgb16.tif")[:2] == ((10, 12), 3)
    assert read_image_info(tmp_path / "float.tif").dtype == "float32"
    assert read_image_info(tmp_path / "stack.tif").frames == 2
    assert read_image_info(tmp_path / "rgba.png")[:3] == ((10, 12), 4, "uint8")
    png = (SAMPLE / "images" / f"{STEMS[0]}.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(ValueError, match="cannot read the image"):
        read_image_info(tmp_path / "truncated.png")


@pytest.mark.parametrize("command", [["scripts.cli.prepare"], ["scripts", "prepare"]], ids=" ".join)
def test_cli(command: list[str], sample: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", *command]
    if command[-1] == "prepare":  # the documented command; one successful run is enough (start-up takes seconds)
        good = tmp_path / "good.json"
        args = ["--images", str(sample / "images"), "--points", str(sample / "points"), "--output", str(good)]
        run = subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert "4 training / 0 validation" in run.stdout and len(json.loads(good.read_text())["training"]) == 4

    bad = _bad_folder(sample)
    output = tmp_path / "bad.json"
    args = [f"--{k}={v}" for k, v in _folders(sample).items()] + [f"--output={output}"]
    run = subprocess.run([*command, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "Traceback" not in run.stdout + run.stderr
    assert f"{len(bad)} problem(s)" in run.stderr
    assert all(str(sample / file) in run.stderr for file in bad.values()), run.stderr
    assert not output.exists()


@pytest.mark.skipif(not (MONUSEG / "split.json").is_file(), reason=f"shared MoNuSeg data not found at {MONUSEG}")
def test_shared_monuseg(tmp_path: Path) -> None:
    folders = _folders(MONUSEG)
    split = json.loads((MONUSEG / "split.json").read_text())
    datalist = write_datalist(**folders, output=tmp_path / "datalist.json", split=MONUSEG / "split.json")
    meta = datalist["metadata"]
    assert (meta["num_training"], meta["num_validation"]) == (23, 7) and meta["warnings"] == []
    assert [item["name"] for item in datalist["validation"]] == sorted(split["val"])
    items = load_decathlon_datalist(tmp_path / "datalist.json", data_list_key="training")
    assert all(Path(item["label"]).is_file() and Path(item["points"]).is_file() for item in items)
    assert meta["num_points_training"] + meta["num_points_validation"] == 16959
