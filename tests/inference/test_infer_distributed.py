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
"""Many-image inference: image lists (CSV, datalist), restarts, failures, and sharding under ``torchrun``
(``multi_gpu_inference.json``, two CPU processes with the gloo backend)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.data.generated_slide import make_slide
from scripts.data.slides import find_inputs
from tests.helpers import REPO, SAMPLE, DarkNuclei, save_random_segmenter

CONFIGS = [str(REPO / "bundle" / "configs" / f) for f in ("inference.json", "multi_gpu_inference.json")]


class Counting(DarkNuclei):
    """:class:`DarkNuclei` that records the images it processes and fails on those named in ``fail``."""

    def __init__(self, *args, fail: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(None, *args, progress=False, **kwargs)
        self.fail, self.seen = fail, []

    def process(self, path, progress=None) -> dict:
        self.seen.append(Path(path).stem)
        return super().process(path, progress)

    def predict(self, image, region):
        if self.seen[-1] in self.fail:
            raise RuntimeError(f"simulated failure in {self.seen[-1]}")
        return super().predict(image, region)


@pytest.fixture(scope="module")
def tiles() -> list[Path]:
    return sorted((SAMPLE / "images").glob("*.png"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_and_datalist_inputs(tiles, tmp_path):
    names = [p.name for p in tiles]
    lists = tmp_path / "lists"
    lists.mkdir()
    # relative to the list's folder, absolute, a `path` column among others, and a single column without header
    relative = os.path.relpath(SAMPLE / "images", lists)
    (lists / "image.csv").write_text("id,Image\n" + "".join(f"{i},{relative}/{n}\n" for i, n in enumerate(names)))
    (lists / "path.csv").write_text("path,note\n" + "".join(f"{p},x\n" for p in reversed(tiles)))
    (lists / "bare.csv").write_text("".join(f"{p}\n\n" for p in tiles[:2]))
    assert find_inputs(lists / "image.csv") == [lists / relative / n for n in names]
    assert find_inputs(lists / "path.csv") == tiles and find_inputs(lists / "bare.csv") == tiles[:2]
    items = [{"image": f"{relative}/{n}", "label": "unused.png"} for n in names]
    (lists / "testing.json").write_text(json.dumps({"training": items[:1], "testing": items[1:]}))
    (lists / "train_val.json").write_text(json.dumps({"validation": items[:1], "training": items[1:3]}))
    (lists / "plain.json").write_text(json.dumps([str(p) for p in tiles]))
    assert [p.name for p in find_inputs(lists / "testing.json")] == names[1:]
    assert [p.name for p in find_inputs(lists / "train_val.json")] == names[1:3]
    assert [p.name for p in find_inputs(lists / "train_val.json", key="validation")] == names[:1]
    assert find_inputs(lists / "plain.json") == tiles

    summary = Counting(lists / "image.csv", tmp_path / "out", outputs=["csv"], tile_mpp=0.25).run()
    rows = _rows(tmp_path / "out" / "summary.csv")
    assert [r["name"] for r in rows] == [p.stem for p in tiles] and {r["status"] for r in rows} == {"done"}
    assert [int(r["nuclei"]) for r in rows] == [r["nuclei"] for r in summary["images"]] and summary["nuclei"] > 0
    assert {"image", "status", "nuclei", "seconds", "rank", "outputs"} <= set(rows[0])
    assert all(Path(r["outputs"]).is_file() and r["rank"] == "0" for r in rows)
    summary = Counting(lists / "testing.json", tmp_path / "testing", outputs=["csv"]).run()
    assert [r["name"] for r in summary["images"]] == [p.stem for p in tiles[1:]]


def test_bad_lists_are_refused_before_processing(tiles, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / tiles[0].name).write_bytes(tiles[0].read_bytes())
    (tmp_path / "notes.txt").write_text("not an image")
    cases = {
        "columns.csv": (
            "file,note\na.png,x\n",
            r"columns.csv: no column named 'image' or 'path' \(header: file, note\)",
        ),
        "empty.csv": ("image\n", "empty.csv: lists no images"),
        "missing.csv": (
            f"image\n{tiles[0]}\nnope.png\n{tmp_path / 'notes.txt'}\n",
            r"missing.csv: 2 of 3 listed images are unusable: row 3: .*nope.png not found; row 4: .*notes.txt is not",
        ),
        "blank.csv": (f"image,id\n{tiles[0]},1\n,2\n", r"blank.csv, row 3: no image path"),
        "twice.csv": (
            f"image\n{tiles[0]}\n{other / tiles[0].name}\n",
            rf"twice.csv: row 2 \(.*\) and row 3 \(.*other.*\) would write the same output names \({tiles[0].stem}_",
        ),
        "nokey.json": ('{"train": []}', r"nokey.json: no 'testing' / 'training' / 'validation' list \(keys: train\)"),
        "noimage.json": ('{"testing": [{"label": "x.png"}]}', r"noimage.json: testing\[0\] has no 'image' path"),
        "broken.json": ("{", "broken.json: cannot read the datalist"),
        "gone.json": (
            '{"testing": [{"image": "gone.tif"}]}',
            r"gone.json: 1 of 1 listed images .* testing\[0\]: .*gone",
        ),
    }
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        engine = Counting(tmp_path / name, tmp_path / "out" / name)
        with pytest.raises(ValueError, match=match):
            engine.run()
        assert engine.seen == [] and not (tmp_path / "out" / name).exists()
    with pytest.raises(ValueError, match=r"nokey.json: no 'testing' list"):
        find_inputs(tmp_path / "nokey.json", key="testing")


def test_restart_skips_finished_images(tiles, tmp_path):
    folder, out = tmp_path / "tiles", tmp_path / "out"
    folder.mkdir()
    for p in tiles:
        (folder / p.name).write_bytes(p.read_bytes())
    names = [p.stem for p in tiles]
    first = Counting(folder, out, outputs=["csv", "geojson", "label"])
    counts = {r["name"]: r["nuclei"] for r in first.run()["images"]}
    assert first.seen == names and sorted(p.name for p in (out / "records").iterdir()) == [f"{n}.json" for n in names]

    again = Counting(folder, out, outputs=["csv", "geojson"])  # fewer outputs than done: nothing to do
    summary = again.run()
    assert again.seen == [] and summary["skipped"] == 4 and summary["done"] == 0
    assert {r["name"]: r["nuclei"] for r in summary["images"]} == counts and summary["nuclei"] == sum(counts.values())
    assert [r["status"] for r in _rows(out / "summary.csv")] == ["skipped"] * 4

    # a run killed while processing an image leaves no record of it; a deleted output, or a new kind, means redo
    (out / "records" / f"{names[1]}.json").unlink()
    (out / f"{names[2]}_nuclei.geojson").unlink()
    (out / f"{names[3]}_nuclei.geojson").write_text("stale")
    (out / ".x.tmp").write_text("left by a killed run")
    redo = Counting(folder, out, outputs=["csv", "geojson"])
    summary = redo.run()
    assert redo.seen == names[1:3] and [r["status"] for r in summary["images"]] == [
        "skipped",
        "done",
        "done",
        "skipped",
    ]
    assert {r["name"]: r["nuclei"] for r in summary["images"]} == counts and not (out / ".x.tmp").exists()
    more = Counting(folder, out, outputs=["csv", "geojson", "overlay"])
    assert more.run()["done"] == 4 and more.seen == names

    forced = Counting(folder, out, outputs=["csv"], overwrite="true")  # as `--overwrite true` passes it
    assert forced.run()["done"] == 4 and forced.seen == names
    assert json.loads((out / f"{names[3]}_nuclei.geojson").read_text())["type"] == "FeatureCollection"


def test_a_failed_image_is_recorded_and_raised_after_the_others(tiles, tmp_path):
    names = [p.stem for p in tiles]
    out = tmp_path / "out"
    engine = Counting(SAMPLE / "images", out, outputs=["csv", "geojson"], fail=(names[1],))
    with pytest.raises(RuntimeError, match=f"simulated failure in {names[1]}") as failure:
        engine.run()
    assert engine.seen == names  # the images after the failed one were processed
    assert "1 of 4 image(s) failed" in "".join(failure.value.__notes__)
    rows = _rows(out / "summary.csv")
    assert [r["status"] for r in rows] == ["done", "failed", "done", "done"]
    assert rows[1]["error"] == f"RuntimeError: simulated failure in {names[1]}" and rows[1]["outputs"] == ""
    assert not list(out.glob(f"{names[1]}_*")) and len(list(out.glob("*_nuclei.*"))) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["failed"]) == (3, 1)
    retry = Counting(SAMPLE / "images", out, outputs=["csv", "geojson"])  # only the failed image is redone
    assert [r["status"] for r in retry.run()["images"]] == ["skipped", "done", "skipped", "skipped"]
    assert retry.seen == [names[1]]


def _slides(folder: Path, n: int = 4) -> list[Path]:
    """``n`` 512 x 512 two-level pyramidal TIFFs of sample crops (tissue over ~60 %), different per seed."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SAMPLE / "images").glob("*.png"))]
    return [
        make_slide(folder / f"slide{i}.tif", 512, sources, fill=0.6, cell=128, tile=256, levels=2, seed=i)
        for i in range(n)
    ]


def _torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
    command += [f"--nproc_per_node={nproc}", "-m", "monai.bundle", "run", "--config_file", str(CONFIGS), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_torchrun_shards_slides_between_processes(tmp_path):
    from monai.bundle.scripts import run

    slides = _slides(tmp_path / "slides")
    model = save_random_segmenter(tmp_path / "model.pt", seed=2)  # a seed that finds nuclei
    common = {"model_path": str(model), "outputs": ["geojson", "csv"], "backend": "tifffile"}
    with warnings.catch_warnings():  # one process, same configs (no torchrun: no process group), one thread
        warnings.simplefilter("ignore")
        run(
            config_file=CONFIGS,
            input=str(tmp_path / "slides"),
            output_dir=str(tmp_path / "one"),
            num_threads=1,
            **common,
        )
    reference = json.loads((tmp_path / "one" / "summary.json").read_text())
    expected = {r["name"]: r["nuclei"] for r in reference["images"]}
    assert reference["processes"] == 1 and len(expected) == 4 and sum(expected.values()) > 100

    out = tmp_path / "two"
    cli = ["--model_path", str(model), "--outputs", "['geojson','csv']", "--backend", "tifffile"]
    done = _torchrun(2, "--input", str(tmp_path / "slides"), "--output_dir", str(out), *cli)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = _rows(out / "summary.csv")
    assert [r["name"] for r in rows] == [p.stem for p in slides] and {r["status"] for r in rows} == {"done"}
    assert [int(r["rank"]) for r in rows] == [0, 1, 0, 1]  # every slide by exactly one process, both used
    assert {r["name"]: int(r["nuclei"]) for r in rows} == expected
    for slide in slides:  # each slide's outputs exactly once, no temporaries
        assert sorted(p.name for p in out.glob(f"{slide.stem}_*")) == [
            f"{slide.stem}_nuclei.{s}" for s in ("csv", "geojson")
        ]
        csv_name = f"{slide.stem}_nuclei.csv"
        assert (out / csv_name).read_bytes() == (tmp_path / "one" / csv_name).read_bytes()
    assert not list(out.glob(".*")) and json.loads((out / "summary.json").read_text())["processes"] == 2

    # restart with one more, unreadable slide in a CSV: the four are skipped, the bad one fails on its process
    # (the other process does not wait for it forever), the summary lists all five and the command exits non-zero
    (tmp_path / "slides" / "broken.tif").write_bytes(slides[0].read_bytes()[:3000])
    (tmp_path / "list.csv").write_text("image\n" + "".join(f"slides/{p.name}\n" for p in [*slides, Path("broken.tif")]))
    failed = _torchrun(2, "--input", str(tmp_path / "list.csv"), "--output_dir", str(out), *cli)
    assert failed.returncode != 0 and "broken.tif" in failed.stdout + failed.stderr
    rows = _rows(out / "summary.csv")
    assert [r["status"] for r in rows] == ["failed"] + ["skipped"] * 4 and "broken.tif" in rows[0]["error"]
    assert rows[0]["rank"] == "0" and {r["name"]: int(r["nuclei"]) for r in rows[1:]} == expected
