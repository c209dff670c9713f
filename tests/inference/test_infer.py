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
"""Streaming inference (scripts.inference.infer, scripts.data.slides, scripts.data.writers, inference.json) on tiles
and small slides.

The stitching tests use oracle predictors whose network outputs come from a real label map (or from the image's dark
pixels), so that post-processing finds real nuclei without a trained network.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage

from networks import HoVerUNet, ImageToMaskNet
from scripts.data.generated_slide import make_slide
from scripts.data.slides import open_image
from scripts.evaluation.metrics import aji
from scripts.inference.infer import NucleusInference, Region, plan_regions
from scripts.inference.predict import TilePredictor
from scripts.inference.windows import WindowGrid
from tests.helpers import SAMPLE, DarkNuclei, load_label, outputs_of
from transforms import read_points

NAME = "TCGA-18-5592-01Z-00-DX1_y100_x600"
CONFIG = "bundle/configs/inference.json"


class LabelOracle(NucleusInference):
    """Network outputs of a perfect prediction of ``label`` (computed once, on the whole image), cropped per region."""

    def __init__(self, label: np.ndarray, fail_after: int | None = None, **kwargs) -> None:
        super().__init__(None, **kwargs)
        self.full, self.calls, self.fail_after = outputs_of(label), 0, fail_after

    def predict(self, image: np.ndarray, region: Region) -> dict[str, torch.Tensor]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated failure")
        y0, x0, y1, x1 = region.box
        return {k: v[:, y0:y1, x0:x1] for k, v in self.full.items()}


def _run(engine: NucleusInference) -> dict:
    return engine.run()["images"][0]


def _label(summary: dict) -> np.ndarray:
    return np.asarray(Image.open(summary["outputs"]["label"])).astype(np.int64)


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> Path:
    """A 1024 x 1024 three-level pyramidal TIFF of sample crops, tissue a disc over 30 % of it, 0.25 um/px."""
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((SAMPLE / "images").glob("*.png"))]
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    return make_slide(path, 1024, sources, fill=0.3, cell=256, tile=256, levels=3)


def test_regions_tile_the_roi_with_seams_before_window_starts():
    stride, window, margin = 192, 256, 64
    for shape, roi in [((1000, 1000), (0, 0, 1000, 1000)), ((1500, 900), (100, 50, 1300, 700)), ((200, 300), None)]:
        roi = roi or (0, 0, *shape)
        regions = plan_regions(shape, roi, 500, margin, window, 0.25)
        cover = np.zeros(shape, int)
        for r in regions:
            cy0, cx0, cy1, cx1 = r.core
            by0, bx0, by1, bx1 = r.box
            cover[cy0:cy1, cx0:cx1] += 1
            for c0, c1, b0, b1, n in ((cy0, cy1, by0, by1, shape[0]), (cx0, cx1, bx0, bx1, shape[1])):
                assert (b0, b1) == (max(c0 - margin, 0), min(c1 + margin, n))  # the core and its margin
                if n > window:
                    assert c1 - c0 <= 384 + stride // 2  # 500 rounded down to the stride (+ a short end merged)
                    if b1 < n and c1 < roi[0 if n == shape[0] else 1] + roi[2 if n == shape[0] else 3]:
                        assert b1 % stride == 0  # an inner seam: the box ends where a window starts
        y, x, h, w = roi
        assert cover[y : y + h, x : x + w].min() == 1 and cover.sum() == h * w


@pytest.mark.parametrize(
    "shape, window, overlap, region_size", [((300, 420), 128, 0.25, 100), ((100, 90), 128, 0.25, 64)]
)
def test_window_grid_equals_whole_image_sliding_window(shape, window, overlap, region_size):
    """Every box's outputs equal MONAI whole-image sliding-window inference (to float16 keeping), each window runs
    once, and nothing is kept after the last box."""
    torch.manual_seed(0)
    network = HoVerUNet(features=(8, 8, 16, 16, 16, 8))
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    predictor = TilePredictor(network, roi_size=window, overlap=overlap, sw_batch_size=2)
    whole = predictor.outputs(torch.from_numpy(image.transpose(2, 0, 1).copy()))
    whole = torch.cat([whole["nucleus_prediction"], whole["horizontal_vertical"]])
    read = lambda y, x, h, w: image[y : y + h, x : x + w]  # noqa: E731
    grid = WindowGrid(read, shape, window, overlap, predictor.forward, predictor.network_input, batch_size=2)
    regions = plan_regions(shape, (0, 0, *shape), region_size, 32, window, overlap)
    grid.plan([r.box for r in regions])
    for r in regions:
        y0, x0, y1, x1 = r.box
        torch.testing.assert_close(grid.outputs(r.box), whole[:, y0:y1, x0:x1], atol=3e-3, rtol=2e-3)
    assert grid.windows_run == len(grid.starts) and not grid._cache
    assert len(regions) > 1 and (len(grid.starts) > 1 or shape[0] < window)
    with pytest.raises(KeyError, match="not planned"):
        grid.outputs((0, 0, 5, 5))


@pytest.mark.parametrize("source", ["sample", "monuseg"])
def test_tiled_inference_matches_whole_tile(source, tmp_path, request):
    if source == "monuseg":
        data = request.getfixturevalue("monuseg")
        image_path, label = data / "images" / "TCGA-18-5592-01Z-00-DX1.png", None
        label = load_label(data / "labels" / "TCGA-18-5592-01Z-00-DX1.png")
    else:  # 2 x 2 sample crops: nuclei cut by the crops' seams are whole nuclei here
        label = load_label(SAMPLE / "labels" / f"{NAME}.png")
        label = np.block(
            [[label, label + 1000 * (label > 0)], [label + 2000 * (label > 0), label + 3000 * (label > 0)]]
        )
        image_path = tmp_path / "mosaic.png"
        image = np.asarray(Image.open(SAMPLE / "images" / f"{NAME}.png").convert("RGB"))
        Image.fromarray(np.tile(image, (2, 2, 1))).save(image_path)
    whole = _run(LabelOracle(label, input=image_path, output_dir=tmp_path / "whole", progress=False))
    tiled = _run(
        LabelOracle(label, input=image_path, output_dir=tmp_path / "tiled", region_size=200, margin=64, progress=False)
    )
    assert whole["regions"] == 1 and tiled["regions"] >= 4
    a, b = _label(whole), _label(tiled)
    if source == "sample":  # post-processing beside the network or after it: the same result
        inline = LabelOracle(label, input=image_path, output_dir=tmp_path / "inline", region_size=200, workers=0)
        assert np.array_equal(_label(_run(inline)), b)
    assert aji(b, a) >= 0.98
    assert abs(whole["nuclei"] - tiled["nuclei"]) <= 0.01 * whole["nuclei"]  # nothing duplicated, nothing lost
    assert len(np.unique(b)) - 1 == tiled["nuclei"] and b.max() == tiled["nuclei"]
    assert aji(a, label) > 0.8  # the oracle's nuclei are the real ones


class ShiftingOracle(NucleusInference):
    """Like :class:`LabelOracle`, but neighbouring regions see the nuclei shifted by a few pixels against each other,
    as boxes cut differently segment the same nucleus slightly differently: near-seam centroids fall on both sides."""

    def __init__(self, label: np.ndarray, shift: int, **kwargs) -> None:
        super().__init__(None, **kwargs)
        self.views = [outputs_of(np.roll(label, (k * shift, k * shift), axis=(0, 1))) for k in (-1, 0, 1)]

    def predict(self, image: np.ndarray, region: Region) -> dict[str, torch.Tensor]:
        y0, x0, y1, x1 = region.box
        core = self.region_size  # the image is smaller than a window: cores of region_size exactly
        view = self.views[(region.core[0] // core + 2 * (region.core[1] // core)) % 3]
        return {k: v[:, y0:y1, x0:x1] for k, v in view.items()}


@pytest.mark.parametrize("workers", [0, 2])
def test_seams_count_each_nucleus_once(tmp_path, workers):
    """Every nucleus once, whatever side of a seam each region's segmentation puts its centroid: the label map's ids,
    the CSV rows and the GeoJSON features are the same nuclei, each CSV area is its label-map area (no overlaps), and
    each real nucleus is found once."""
    label = load_label(SAMPLE / "labels" / f"{NAME}.png")
    label = np.block([[label, label + 1000 * (label > 0)], [label + 2000 * (label > 0), label + 3000 * (label > 0)]])
    image_path = tmp_path / "mosaic.png"
    Image.fromarray(np.tile(np.asarray(Image.open(SAMPLE / "images" / f"{NAME}.png").convert("RGB")), (2, 2, 1))).save(
        image_path
    )
    engine = ShiftingOracle(
        label, 1, input=image_path, output_dir=tmp_path, outputs=["label", "csv", "geojson"], region_size=192,
        workers=workers, progress=False,
    )  # fmt: skip
    summary = _run(engine)
    assert summary["regions"] == 9
    found = _label(summary)
    with open(summary["outputs"]["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    features = json.loads(Path(summary["outputs"]["geojson"]).read_text())["features"]
    ids = np.unique(found[found > 0])
    assert len(ids) == len(rows) == len(features) == summary["nuclei"]
    assert [int(r["id"]) for r in rows] == ids.tolist()
    areas = np.bincount(found.ravel(), minlength=ids.max() + 1)
    assert all(float(r["area_px"]) == areas[int(r["id"])] for r in rows)  # no nucleus painted over another
    truth = label
    matches = np.zeros(truth.max() + 1, int)  # per real nucleus: the found nuclei lying mostly on it
    for r in rows:
        values, counts = np.unique(truth[(found == int(r["id"])) & (truth > 0)], return_counts=True)
        if len(values):
            matches[values[np.argmax(counts)]] += 1
    real = np.unique(truth[truth > 0])
    touched = np.unique(truth[(found > 0) & (truth > 0)])
    assert matches.max() == 1  # never twice
    assert len(np.setdiff1d(real, touched)) <= 2  # and never missed (2 tiny nuclei at the border: not even whole)


def _polygon_is_simple(ring: np.ndarray) -> bool:
    p, q = ring[:-1], ring[1:]
    n = len(p)
    if n < 3:
        return False
    d = q - p
    for i in range(n):
        j = np.arange(n)
        far = (j != i) & (j != (i + 1) % n) & (j != (i - 1) % n)
        a, b, c, e = p[i], q[i], p[far], q[far]

        def orient(u, v, w):
            return np.sign(
                (v[..., 0] - u[..., 0]) * (w[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (w[..., 0] - u[..., 0])
            )

        crossing = (orient(a, b, c) * orient(a, b, e) < 0) & (orient(c, e, a) * orient(c, e, b) < 0)
        if crossing.any():
            return False
    return bool(np.abs(np.sum(d[:, 0] * (p[:, 1] + q[:, 1]))) > 0)


def test_tile_outputs_agree(tmp_path):
    from monai.transforms import LoadImage

    label = load_label(SAMPLE / "labels" / f"{NAME}.png")
    image_path = SAMPLE / "images" / f"{NAME}.png"
    outputs = ["label", "geojson", "csv", "overlay", "nifti"]
    summary = _run(
        LabelOracle(label, input=image_path, output_dir=tmp_path, outputs=outputs, tile_mpp=0.25, progress=False)
    )
    n = summary["nuclei"]
    assert n > 30
    collection = json.loads(Path(summary["outputs"]["geojson"]).read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == n
    for feature in collection["features"]:
        assert feature["properties"]["objectType"] == "detection"
        measurements = feature["properties"]["measurements"]
        assert {"ID", "Area px^2", "Area µm^2", "Hematoxylin OD mean", "Eosin OD mean"} <= set(measurements)
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert len(ring) >= 4 and np.array_equal(ring[0], ring[-1]) and _polygon_is_simple(ring)
        assert (ring >= 0).all() and (ring <= 256).all()
    with open(summary["outputs"]["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and [int(r["id"]) for r in rows] == list(range(1, n + 1))
    instances = _label(summary)
    assert len(np.unique(instances)) - 1 == n
    areas = np.bincount(instances.ravel())[1:]
    assert np.allclose([float(r["area_px"]) for r in rows], areas)
    assert np.allclose([float(r["area_um2"]) for r in rows], areas * 0.0625, atol=1e-3)
    # the CSV is a point file of nucleus centres; the GeoJSON polygons' centroids come back within a pixel
    centres = read_points(summary["outputs"]["csv"])
    assert np.abs(read_points(summary["outputs"]["geojson"]) - centres).max() < 1.0
    expected = np.array(ndimage.center_of_mass(instances > 0, instances, np.arange(1, n + 1)))
    assert np.allclose(expected, centres, atol=0.01)
    assert Image.open(summary["outputs"]["overlay"]).size == (256, 256)
    loader = LoadImage(image_only=True)
    nifti = np.asarray(loader(summary["outputs"]["nifti"]))
    assert np.array_equal(nifti, np.asarray(loader(summary["outputs"]["label"])))
    assert json.loads((tmp_path / "summary.json").read_text())["nuclei"] == n
    assert not list(tmp_path.glob(".*"))  # no temporaries left


def test_slide_pyramid_tissue_roi_and_levels(small_slide, tmp_path):
    from monai.data import WSIReader

    engine = DarkNuclei(
        None,
        small_slide,
        tmp_path / "out",
        outputs=["label", "geojson", "csv", "overlay"],
        region_size=192,
        backend="tifffile",
        progress=False,
    )
    summary = _run(engine)
    assert summary["skipped_regions"] > 0 and summary["regions"] > 0 and summary["nuclei"] > 20
    assert summary["mpp"] == pytest.approx(0.25)
    reader = WSIReader(backend="tifffile")
    wsi = reader.read(summary["outputs"]["label"])
    assert reader.get_level_count(wsi) == 3 and reader.get_size(wsi, 1) == (512, 512)
    assert reader.get_mpp(wsi, 0) == pytest.approx((0.25, 0.25))
    with tifffile.TiffFile(summary["outputs"]["label"]) as tif:
        level0, level1 = tif.pages[0].asarray(), tif.pages[1].asarray()
        assert tif.pages[0].is_tiled and level0.dtype == np.uint32
    assert np.array_equal(level1, level0[::2, ::2])
    assert len(np.unique(level0)) - 1 == summary["nuclei"]
    collection = json.loads(Path(summary["outputs"]["geojson"]).read_text())
    assert len(collection["features"]) == summary["nuclei"]
    patch, _ = WSIReader(backend="tifffile").get_data(reader.read(small_slide), location=(256, 256), size=(64, 64))
    with open_image(small_slide, backend="tifffile") as source:
        assert np.array_equal(np.moveaxis(np.asarray(patch), 0, -1), source.read(256, 256, 64, 64))
    assert Image.open(summary["outputs"]["overlay"]).size == (1024, 1024)

    # a region of interest (level-0 px) at level 1 (picked by mpp): nuclei only there, coordinates at level 0
    roi = [384, 320, 256, 320]
    part = _run(
        DarkNuclei(None, small_slide, tmp_path / "roi", outputs=["csv", "label"], mpp=0.5, roi=roi, progress=False)
    )
    assert part["level"] == 1 and part["roi"] == [192, 160, 128, 160] and part["nuclei"] > 0
    centres = read_points(part["outputs"]["csv"])
    assert (centres[:, 0] >= roi[0] - 1).all() and (centres[:, 0] < roi[0] + roi[2]).all()
    assert (centres[:, 1] >= roi[1] - 1).all() and (centres[:, 1] < roi[1] + roi[3]).all()
    with tifffile.TiffFile(part["outputs"]["label"]) as tif:
        assert tif.pages[0].shape == (128, 160)


def test_bad_inputs_give_clear_errors(small_slide, tmp_path):
    good = SAMPLE / "images" / f"{NAME}.png"
    data = good.read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    rgb = np.asarray(Image.open(good).convert("RGB"))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    for name, match in [
        ("truncated.png", "truncated.png: cannot read the image"),
        ("garbage.png", "garbage.png: cannot read the image"),
        ("missing.png", "missing.png: image not found"),
    ]:
        with pytest.raises(ValueError, match=match):
            open_image(tmp_path / name)
    slide_bytes = small_slide.read_bytes()
    (tmp_path / "cut.tif").write_bytes(slide_bytes[: len(slide_bytes) * 2 // 3])
    with pytest.raises(ValueError, match="cut.tif.*(truncated|damaged)"):
        open_image(tmp_path / "cut.tif", backend="tifffile")
    with pytest.raises(ValueError, match=r"has no level 5; it has level 0: 1024x1024 px .*level 2: 256x256"):
        open_image(small_slide, level=5, backend="tifffile")
    with pytest.raises(
        ValueError, match=r"no level at 0.33 um/px .* level 1: 512x512 px \(downsample 2, 0.500 um/px\)"
    ):
        open_image(small_slide, mpp=0.33, backend="tifffile")
    Image.fromarray(rgb[:10, :10]).save(tmp_path / "tiny.png")
    with pytest.raises(ValueError, match=r"tiny.png: the image \(or its roi\) is 10x10 px .* smaller than the 32 px"):
        DarkNuclei(None, tmp_path / "tiny.png", tmp_path / "tiny_out", progress=False).process(tmp_path / "tiny.png")
    blank = make_slide(tmp_path / "blank.tif", 512, [rgb], fill=0.0, cell=256, tile=256, levels=2)
    with pytest.raises(ValueError, match="blank.tif: no tissue found"):
        DarkNuclei(None, blank, tmp_path / "out", backend="tifffile", progress=False).run()
    failed = json.loads((tmp_path / "out" / "summary.json").read_text())  # written before the error is raised
    assert failed["failed"] == 1 and "no tissue found" in failed["images"][0]["error"]

    # the one reader's rules (scripts.data.images), each with a warning: RGBA composited onto white and 16 bit scaled
    # to 8 bits give the RGB tile's pixels, grayscale is copied to the three channels
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(tmp_path / "rgba.png")
    tifffile.imwrite(tmp_path / "deep.tif", rgb.astype(np.uint16) * 257)
    for name, match, expected in [
        ("rgba.png", "alpha channel", rgb),
        ("deep.tif", "16-bit image", rgb),
        ("gray.png", "grayscale image", np.repeat(rgb[..., :1], 3, axis=-1)),
    ]:
        with pytest.warns(UserWarning, match=match):
            source = open_image(tmp_path / name)
        assert np.array_equal(source.read(0, 0, 256, 256), expected)


def test_failed_run_leaves_no_output(tmp_path):
    label = load_label(SAMPLE / "labels" / f"{NAME}.png")
    engine = LabelOracle(
        label,
        fail_after=2,
        input=SAMPLE / "images" / f"{NAME}.png",
        output_dir=tmp_path,
        region_size=64,
        outputs=["label", "geojson", "csv", "overlay"],
        progress=False,
    )
    with pytest.raises(RuntimeError, match="simulated failure"):
        engine.run()
    # none of the image's outputs; its record and the summary say it failed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records", "summary.csv", "summary.json"]
    assert [p.name for p in (tmp_path / "records").iterdir()] == [f"{NAME}.json"]
    assert json.loads((tmp_path / "summary.json").read_text())["images"][0]["status"] == "failed"


def test_bundle_run_on_a_folder_and_a_mismatching_checkpoint(tmp_path):
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import run

    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(CONFIG)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    folder = tmp_path / "tiles"
    folder.mkdir()
    for p in sorted((SAMPLE / "images").glob("*.png"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(
            config_file=CONFIG,
            input=str(folder),
            output_dir=str(tmp_path / "out"),
            model_path=str(tmp_path / "model.pt"),
            outputs=["csv", "label"],
            num_threads=1,
        )
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["images"]) == 2 and sorted(p.name for p in (tmp_path / "out").glob("*_nuclei.csv")) == [
        f"{p.stem}_nuclei.csv" for p in sorted(folder.iterdir())
    ]
    with warnings.catch_warnings():  # `run inference` as the model-zoo bundles are run, with the shipped weights
        warnings.simplefilter("ignore")
        run("inference", config_file=CONFIG, input=str(folder), output_dir=str(tmp_path / "zoo"), num_threads=1)
    assert len(json.loads((tmp_path / "zoo" / "summary.json").read_text())["images"]) == 2
    torch.save(ImageToMaskNet(features=[8, 16], blocks_per_stage=1).state_dict(), tmp_path / "other.pt")
    bad = {"input": str(folder), "output_dir": str(tmp_path / "bad"), "model_path": str(tmp_path / "other.pt")}
    with pytest.raises(RuntimeError) as failure:  # MONAI's config error, caused by ours
        run(config_file=CONFIG, **bad)
    assert "do not match the configured segmentation model" in str(failure.value.__cause__)
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())


def test_fixed_normalisation_post_processing():
    from transforms import MONUSEG_RANGES, HoVerNetInstances

    label = load_label(SAMPLE / "labels" / f"{NAME}.png")
    outputs = outputs_of(label)
    fixed = HoVerNetInstances(**MONUSEG_RANGES).from_output(outputs)[0]
    per_input = HoVerNetInstances().from_output(outputs)[0]
    assert aji(fixed, label) > 0.8 and abs(aji(fixed, label) - aji(per_input, label)) < 0.05
    with pytest.raises(ValueError, match="give both hv_range and sobel_range"):
        HoVerNetInstances(hv_range=(-1, 1))
    with pytest.raises(ValueError, match="min < max"):
        HoVerNetInstances(hv_range=(1, -1), sobel_range=(-0.1, 0.1))
