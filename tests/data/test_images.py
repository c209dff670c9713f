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
"""Tests of ``scripts/data/images.py``, the one reader of tiles and labels: one test per documented rule, and the
same pixels through every path (function, MONAI ``LoadImage``, ``prepare``, slides)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from monai.transforms import LoadImage
from PIL import Image

from scripts.data.datalist import build_datalist
from scripts.data.images import LabelReader, TileReader, read_image, read_label
from scripts.data.slides import open_image
from tests.helpers import SAMPLE

NAME = "TCGA-18-5592-01Z-00-DX1_y100_x600"


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.asarray(Image.open(SAMPLE / "images" / f"{NAME}.png").convert("RGB"))


def test_rgb_as_stored_and_through_monai(rgb):
    path = SAMPLE / "images" / f"{NAME}.png"
    image = read_image(path)
    assert image.dtype == np.uint8 and image.flags.writeable and np.array_equal(image, rgb)
    loaded = LoadImage(reader=TileReader(), image_only=True)(path)
    assert loaded.shape == (256, 256, 3) and np.array_equal(np.asarray(loaded), rgb)
    assert np.array_equal(open_image(path).read(0, 0, 256, 256), rgb)


def test_grayscale_is_copied_to_rgb(rgb, tmp_path):
    Image.fromarray(rgb[..., 1]).save(tmp_path / "gray.png")
    with pytest.warns(UserWarning, match="gray.png: grayscale image"):
        image = read_image(tmp_path / "gray.png", warn=True)
    assert np.array_equal(image, np.repeat(rgb[..., 1:2], 3, axis=-1))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_onto_white(rgb, tmp_path, mode):
    colour = rgb if mode == "RGBA" else rgb[..., :1]
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[:, 128:] = 255  # left half transparent, right half opaque
    alpha[:10, :10] = 128
    Image.fromarray(np.dstack([colour, alpha]).squeeze(), mode).save(tmp_path / "alpha.png")
    with pytest.warns(UserWarning, match="alpha channel"):
        image = read_image(tmp_path / "alpha.png", warn=True)
    expected = np.repeat(colour, 3 // colour.shape[-1], axis=-1)
    assert (image[:, 10:128] == 255).all() and np.array_equal(image[:, 128:], expected[:, 128:])
    half = np.floor(expected[:10, :10] * (128 / 255) + 255 * (1 - 128 / 255) + 0.5)
    assert np.array_equal(image[:10, :10], half.astype(np.uint8))


def test_16_bit_is_scaled_by_257_rounded(tmp_path):
    values = np.array([[0, 128, 129, 385], [386, 65535, 257 * 200, 257 * 200 + 129]], np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", np.dstack([values] * 3))
    Image.fromarray(values).save(tmp_path / "deep_gray.png")
    expected = np.array([[0, 0, 1, 1], [2, 255, 200, 201]], np.uint8)
    for name in ("deep.tif", "deep_gray.png"):
        with pytest.warns(UserWarning, match="16-bit image"):
            image = read_image(tmp_path / name, warn=True)
        assert np.array_equal(image, np.dstack([expected] * 3)), name


def test_palette_is_expanded(rgb, tmp_path):
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    expected = np.asarray(Image.open(tmp_path / "palette.png").convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "palette.png"), expected)


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((8, 8, 3), np.float32), "unsupported pixel type float32"),
        (np.zeros((8, 8, 3), np.int16), "unsupported pixel type int16"),
        (np.zeros((8, 8, 5), np.uint8), "1 to 4 channels"),
    ],
)
def test_other_images_are_refused_naming_the_file(tmp_path, array, match):
    np.save(tmp_path / "odd.npy", array)
    with pytest.raises(ValueError, match=f"odd.npy: .*{match}"):
        read_image(tmp_path / "odd.npy")


def test_labels(tmp_path):
    label = np.zeros((6, 7), np.uint16)
    label[1:3, 1:3], label[4:, 4:] = 1, 300
    Image.fromarray(label).save(tmp_path / "label.png")
    np.save(tmp_path / "label.npy", label.astype(np.int64))
    for name in ("label.png", "label.npy"):
        got = read_label(tmp_path / name)
        assert got.dtype == np.int32 and np.array_equal(got, label)
    loaded = LoadImage(reader=LabelReader(), image_only=True)(tmp_path / "label.png")
    assert np.array_equal(np.asarray(loaded), label)
    Image.fromarray(np.zeros((6, 7, 3), np.uint8)).save(tmp_path / "colour.png")
    np.save(tmp_path / "float.npy", np.full((6, 7), 0.5))
    np.save(tmp_path / "negative.npy", np.full((6, 7), -1))
    for name, match in [("colour.png", "single-channel"), ("float.npy", "float64 values"), ("negative.npy", "in \\[0")]:
        with pytest.raises(ValueError, match=f"{name}: .*{match}"):
            read_label(tmp_path / name)


def test_prepare_accepts_what_training_reads(rgb, tmp_path):
    """A grayscale or RGBA tile passes ``prepare`` with a warning, and training's ``LoadImage`` reads it as RGB."""
    images, points = tmp_path / "images", tmp_path / "points"
    images.mkdir()
    points.mkdir()
    Image.fromarray(rgb[..., 0]).save(images / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(images / "rgba.png")
    tifffile.imwrite(images / "float.tif", rgb.astype(np.float32), photometric="rgb")
    for stem in ("gray", "rgba", "float"):
        (points / f"{stem}.csv").write_text("y,x\n10,10\n")
    datalist, problems = build_datalist(images, points)
    assert [item["name"] for item in datalist["training"]] == ["gray", "rgba"]
    assert len(problems) == 1 and "float.tif: unsupported pixel type float32" in problems[0]
    notes = datalist["metadata"]["warnings"]
    assert any("gray.png: grayscale image" in n for n in notes) and any("rgba.png" in n for n in notes)
    for item in datalist["training"]:
        assert LoadImage(reader=TileReader(), image_only=True)(item["image"]).shape == (256, 256, 3)
