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
"""Resolution-aware inference: images are read at the level nearest the model's microns per pixel, resampled to it
(``scripts.data.slides.ResampledSource``) and their outputs come back in the image's own pixel frame."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.draw import polygon
from skimage.transform import rescale

from scripts.data.generated_slide import make_slide
from scripts.data.slides import ArraySource, ResampledSource, at_mpp, open_image, tile_mpp_of
from scripts.data.writers import Nuclei
from scripts.evaluation.metrics import aji
from scripts.inference.infer import bundle_mpp, to_level_read
from tests.helpers import REPO, SAMPLE, DarkNuclei, parse_configs
from transforms import read_points

NAME = "TCGA-18-5592-01Z-00-DX1_y100_x600"
CONFIG = REPO / "bundle" / "configs" / "inference.json"


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> Path:
    """A 1024 x 1024 three-level pyramidal TIFF (0.25, 0.5, 1 um/px) of sample crops, tissue a disc over 30 % of it."""
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SAMPLE / "images").glob("*.png"))]
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    return make_slide(path, 1024, sources, fill=0.3, cell=256, tile=256, levels=3)


def _tile() -> np.ndarray:
    return np.asarray(Image.open(SAMPLE / "images" / f"{NAME}.png").convert("RGB"))


def _rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _label(path: str) -> np.ndarray:
    if path.endswith(".tif"):
        with tifffile.TiffFile(path) as tif:
            return tif.pages[0].asarray().astype(np.int64)
    return np.asarray(Image.open(path)).astype(np.int64)


def _rasterize(geojson: str, shape: tuple[int, int], scale: float) -> np.ndarray:
    """The GeoJSON's polygons (QuPath pixel corners), scaled by ``scale``, as an instance map of ``shape``."""
    out = np.zeros(shape, np.int64)
    for i, feature in enumerate(json.loads(Path(geojson).read_text())["features"], 1):
        ring = np.asarray(feature["geometry"]["coordinates"][0]) * scale - 0.5  # pixel centres
        rows, cols = polygon(ring[:, 1], ring[:, 0], shape)
        out[rows, cols] = i
    return out


def test_the_model_resolution_comes_from_the_bundle_metadata(tmp_path):
    meta = json.loads((REPO / "bundle" / "configs" / "metadata.json").read_text())
    assert bundle_mpp(REPO / "bundle") == meta["network_data_format"]["inputs"]["image"]["mpp"] == 0.25
    assert parse_configs(CONFIG).get_parsed_content("model_mpp") == 0.25
    assert bundle_mpp(tmp_path) is None  # no metadata: unknown, nothing is resampled


@pytest.mark.parametrize("mpp, model_mpp", [(0.5, 0.25), (0.25, 0.4), (0.25, 0.5), (0.3, 0.25)])
def test_resampled_regions_equal_the_whole_image_resampled(mpp, model_mpp):
    """Any region read on its own is the same region of the whole image resampled (so regions agree at seams);
    enlarging matches PIL's bicubic resize."""
    image = _tile()
    frame = at_mpp(ArraySource("tile", image, mpp), model_mpp)
    assert isinstance(frame, ResampledSource) and frame.mpp == model_mpp
    height, width = frame.shape
    assert (height, width) == (round(256 * mpp / model_mpp),) * 2 and frame.downsample == pytest.approx(model_mpp / mpp)
    whole = frame.read(0, 0, height, width)
    rng = np.random.default_rng(0)
    for _ in range(20):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        h, w = rng.integers(1, height - y + 1), rng.integers(1, width - x + 1)
        assert np.array_equal(frame.read(y, x, h, w), whole[y : y + h, x : x + w])
    if mpp / model_mpp == 2:
        pil = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)).astype(int)
        assert np.abs(pil - whole)[4:-4, 4:-4].max() <= 1


def test_no_resampling_without_both_resolutions_or_within_10_percent():
    image = _tile()
    for source_mpp, model_mpp in [(None, 0.25), (0.25, None), (0.26, 0.25), (0.25, 0.25)]:
        source = ArraySource("tile", image, source_mpp)
        assert at_mpp(source, model_mpp) is source


def test_slides_are_read_at_the_level_nearest_the_model(small_slide):
    for target, level in [(None, 0), (0.25, 0), (0.3, 0), (0.45, 1), (0.9, 2), (8.0, 2)]:
        with open_image(small_slide, backend="tifffile", target_mpp=target) as source:
            assert source.level == level, target
    with open_image(small_slide, level=2, backend="tifffile", target_mpp=0.25) as source:
        assert source.level == 2  # an explicit level wins


@pytest.mark.parametrize("scale", [2.0, 1.25, 0.5, 0.8])
def test_label_rasters_come_back_by_one_nearest_neighbour_rule(scale):
    """Rasters of overlapping boxes of a resampled frame land on the level read as the whole frame does."""
    rng = np.random.default_rng(1)
    frame = rng.integers(1, 50, (90, 70)).astype(np.uint32)
    level_shape = (round(90 / scale) + 2, round(70 / scale) + 2)

    def back(box: tuple[int, int, int, int]) -> np.ndarray:
        y0, x0, y1, x1 = box
        nuclei = Nuclei(*(np.zeros(0),) * 5, raster=frame[y0:y1, x0:x1].copy(), origin=(y0, x0), core=box)
        to_level_read(nuclei, scale)
        canvas = np.zeros(level_shape, np.uint32)
        oy, ox = nuclei.origin
        canvas[oy : oy + nuclei.raster.shape[0], ox : ox + nuclei.raster.shape[1]] = nuclei.raster
        assert nuclei.core == pytest.approx(tuple(c / scale for c in box))
        return canvas

    whole = back((0, 0, 90, 70))
    rows = np.floor((np.arange(level_shape[0]) + 0.5) * scale).astype(int)
    cols = np.floor((np.arange(level_shape[1]) + 0.5) * scale).astype(int)
    inside = (rows[:, None] < 90) & (cols[None, :] < 70)
    expected = np.where(inside, frame[np.clip(rows, 0, 89)][:, np.clip(cols, 0, 69)], 0)
    assert np.array_equal(whole, expected)
    for box in [(0, 0, 40, 33), (17, 9, 90, 70), (31, 40, 64, 57)]:
        part = back(box)
        assert np.array_equal(part[part > 0], whole[part > 0])  # the same pixels, the same values


def test_resampled_slide_regions_count_each_nucleus_once(small_slide, tmp_path):
    """A slide resampled to the model (level 1 at 0.5 um/px, nearest to 0.4, enlarged 1.25x) and processed in 16
    regions: every nucleus once, the label map in level-1 pixels, coordinates and areas in level-0 pixels."""
    outputs = ["label", "csv", "geojson", "overlay"]

    def segment(name: str, region_size: int) -> dict:
        engine = DarkNuclei(
            None, small_slide, tmp_path / name, outputs=outputs, region_size=region_size, model_mpp=0.4,
            backend="tifffile", progress=False,
        )  # fmt: skip
        return engine.run()["images"][0]

    tiled, whole = segment("tiled", 192), segment("whole", 2048)
    assert tiled["level"] == 1 and tiled["scale"] == 1.25 and tiled["model_mpp"] == 0.4
    assert whole["regions"] == 1 and tiled["regions"] + tiled["skipped_regions"] == 16 and tiled["skipped_regions"]
    label, reference = _label(tiled["outputs"]["label"]), _label(whole["outputs"]["label"])
    assert label.shape == reference.shape == (512, 512)
    rows = _rows(tiled["outputs"]["csv"])
    features = json.loads(Path(tiled["outputs"]["geojson"]).read_text())["features"]
    ids = np.unique(label[label > 0])
    assert len(ids) == len(rows) == len(features) == tiled["nuclei"] > 20
    centres = read_points(tiled["outputs"]["csv"])
    assert not cKDTree(centres).query_pairs(3.0)  # no nucleus found twice
    assert (centres >= -0.5).all() and (centres < 1024).all()  # level-0 pixels
    level1 = np.array(ndimage.center_of_mass(label > 0, label, ids))
    offsets = np.linalg.norm((level1 + 0.5) * 2 - 0.5 - centres, axis=1)
    assert np.median(offsets) < 0.5 and offsets.max() < 3  # level-1 label map and level-0 CSV: the same nuclei
    areas = np.bincount(label.ravel())[ids] * 4  # level-1 px -> level-0 px
    assert np.median(np.array([float(r["area_px"]) for r in rows]) / areas) == pytest.approx(1, abs=0.1)
    assert abs(whole["nuclei"] - tiled["nuclei"]) <= 0.01 * whole["nuclei"] and aji(label, reference) >= 0.98
    assert Image.open(tiled["outputs"]["overlay"]).size == (512, 512)


def test_unknown_or_equal_resolution_is_not_resampled(tmp_path, caplog):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for p in sorted((SAMPLE / "images").glob("*.png"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())

    def labels(name: str, **kwargs) -> list[np.ndarray]:
        summary = DarkNuclei(None, folder, tmp_path / name, outputs=["label"], progress=False, **kwargs).run()
        assert all(r["scale"] == 1.0 for r in summary["images"])
        return [_label(r["outputs"]["label"]) for r in summary["images"]]

    before = labels("before")  # no model resolution: as before
    with caplog.at_level(logging.INFO, logger="scripts.inference.infer"):
        unknown = labels("unknown", model_mpp=0.25)
    said = [r for r in caplog.records if "resolution unknown" in r.getMessage()]
    assert len(said) == 1  # one line, however many images
    close = labels("close", model_mpp=0.25, tile_mpp=0.26)  # within 10 %
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(before, unknown, close, strict=True))


def test_meta_csv_gives_the_tiles_resolution(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    Image.fromarray(_tile()).save(folder / "a.png")
    Image.fromarray(_tile()).save(folder / "b.png")
    (folder / "meta.csv").write_text("id,organ,mpp\na,liver,0.5\nb,liver,\n")
    assert tile_mpp_of(folder / "a.png") == 0.5 and tile_mpp_of(folder / "b.png") is None
    summary = DarkNuclei(None, folder, tmp_path / "out", outputs=["label", "csv"], model_mpp=0.25, progress=False).run()
    a, b = summary["images"]
    assert (a["scale"], a["mpp"], b["scale"], b["mpp"]) == (2.0, 0.5, 1.0, None)
    assert _label(a["outputs"]["label"]).shape == (256, 256)  # the tile's own pixels
    assert (read_points(a["outputs"]["csv"]) < 256).all()
    (folder / "meta.csv").write_text("id,mpp\na,abc\n")
    with pytest.raises(ValueError, match="mpp of a must be a positive number"):
        tile_mpp_of(folder / "a.png")


def test_shipped_model_without_resolution_is_unchanged(tmp_path, caplog):
    """The bundle's inference on a tile of unknown resolution: not resampled, the same nuclei as with resolution
    handling switched off (``model_mpp`` null)."""

    def run(name: str, **overrides) -> dict:
        parser = parse_configs(
            CONFIG, input=str(SAMPLE / "images" / f"{NAME}.png"), output_dir=str(tmp_path / name), outputs=["label"],
            progress=False, **overrides,
        )  # fmt: skip
        return parser.get_parsed_content("evaluator").run()["images"][0]

    with caplog.at_level(logging.INFO, logger="scripts.inference.infer"):
        default = run("default")
    assert default["model_mpp"] == 0.25 and default["scale"] == 1.0 and default["mpp"] is None
    assert any("resolution unknown" in r.getMessage() for r in caplog.records)
    off = run("off", model_mpp=None)
    assert off["model_mpp"] is None and default["nuclei"] == off["nuclei"] > 20
    assert np.array_equal(_label(default["outputs"]["label"]), _label(off["outputs"]["label"]))


@pytest.mark.slow
def test_half_resolution_tile_segments_as_the_full_one(monuseg, tmp_path):
    """A MoNuSeg tile (0.25 um/px) and the same tile reduced 2x (0.5 um/px, resampled back to the model's 0.25):
    the shipped model finds the same nuclei, reported in the reduced tile's own pixels."""
    name = "TCGA-18-5592-01Z-00-DX1"
    image = np.asarray(Image.open(monuseg / "images" / f"{name}.png").convert("RGB"))
    (tmp_path / "half").mkdir()
    half = rescale(image, 0.5, anti_aliasing=True, channel_axis=-1, preserve_range=True)
    Image.fromarray(np.clip(half + 0.5, 0, 255).astype(np.uint8)).save(tmp_path / "half" / f"{name}.png")

    def segment(path: Path, tile_mpp: float, name: str) -> dict:
        parser = parse_configs(
            CONFIG, input=str(path), output_dir=str(tmp_path / name), outputs=["label", "csv", "geojson"],
            tile_mpp=tile_mpp, progress=False,
        )  # fmt: skip
        return parser.get_parsed_content("evaluator").run()["images"][0]

    full = segment(monuseg / "images" / f"{name}.png", 0.25, "full")
    reduced = segment(tmp_path / "half" / f"{name}.png", 0.5, "reduced")
    assert full["scale"] == 1.0 and reduced["scale"] == 2.0
    reference = _label(full["outputs"]["label"])
    label = _label(reduced["outputs"]["label"])
    assert label.shape == (500, 500)  # the reduced tile's pixels
    enlarged = np.repeat(np.repeat(label, 2, axis=0), 2, axis=1)  # back to the full-resolution frame
    assert enlarged.shape == reference.shape == (1000, 1000)
    # the outlines (computed at the model's resolution) scaled back to the full tile
    outlines = aji(_rasterize(reduced["outputs"]["geojson"], reference.shape, 2.0), reference)
    blocks = aji(enlarged, reference)
    print(f"AJI against the full-resolution result: outlines {outlines:.3f}, 2 x 2 label blocks {blocks:.3f}")
    assert outlines >= 0.85
    # the label map is quantised to 2 x 2 blocks (the ground truth loses 0.07 AJI that way)
    assert blocks >= 0.80
    centres = (read_points(reduced["outputs"]["csv"]) + 0.5) * 2 - 0.5
    distance, _ = cKDTree(read_points(full["outputs"]["csv"])).query(centres)
    assert np.median(distance) < 1.0 and abs(reduced["nuclei"] - full["nuclei"]) <= 0.05 * full["nuclei"]
