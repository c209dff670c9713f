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
"""Region seams on a generated 3072 x 3072 pyramidal slide, segmented by the shipped (trained) model with
``inference.json``: no nucleus counted twice, no two nuclei overlapping, the label TIFF, the CSV and the GeoJSON
holding the same nuclei with the same areas, and the same nuclei as one whole-slide region."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy.spatial import cKDTree

from scripts.data.generated_slide import make_slide
from scripts.evaluation.metrics import aji
from tests.helpers import REPO, SAMPLE, parse_configs

SIZE = 3072


def _segment(slide: Path, output: Path, region_size: int) -> dict:
    parser = parse_configs(
        REPO / "bundle" / "configs" / "inference.json",
        input=str(slide),
        output_dir=str(output),
        outputs=["label", "csv", "geojson"],
        region_size=region_size,
        tissue=False,
        progress=False,
    )
    return parser.get_parsed_content("evaluator").run()["images"][0]


@pytest.mark.slow
def test_no_nucleus_counted_twice_at_region_seams(tmp_path):
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SAMPLE / "images").glob("*.png"))]
    slide = make_slide(tmp_path / "slide.tif", SIZE, sources, cell=256, tile=512)
    tiled = _segment(slide, tmp_path / "tiled", 1024)  # cores of 960 px: 16 regions, seams at 960, 1920, 2880
    assert tiled["regions"] == 16 and tiled["nuclei"] > 3000
    with tifffile.TiffFile(tiled["outputs"]["label"]) as tif:
        label = tif.pages[0].asarray().astype(np.int64)
    with open(tiled["outputs"]["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    features = json.loads(Path(tiled["outputs"]["geojson"]).read_text())["features"]
    ids = np.unique(label[label > 0])
    assert len(ids) == len(rows) == len(features) == tiled["nuclei"]  # label TIFF ids == CSV ids == GeoJSON
    assert [int(r["id"]) for r in rows] == ids.tolist()
    areas = np.bincount(label.ravel(), minlength=int(ids.max()) + 1)
    differing = [r["id"] for r in rows if float(r["area_px"]) != areas[int(r["id"])]]
    assert not differing  # no nucleus painted over another
    centroids = np.array([[float(r["y"]), float(r["x"])] for r in rows])
    assert not cKDTree(centroids).query_pairs(3.0)  # no nucleus found twice

    whole = _segment(slide, tmp_path / "whole", SIZE)  # one region: no seams at all
    assert whole["regions"] == 1
    with tifffile.TiffFile(whole["outputs"]["label"]) as tif:
        reference = tif.pages[0].asarray().astype(np.int64)
    assert abs(whole["nuclei"] - tiled["nuclei"]) <= 0.005 * whole["nuclei"]
    assert aji(label, reference) >= 0.98
