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
from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
)

from tests.helpers import SAMPLE, load_label
from transforms import AlignPointsd, LoadPoints, LoadPointsd, PointsFileError, PointsToMap, PointsToMapd, read_points

NAME = "TCGA-HE-7129-01Z-00-DX1_y200_x300"  # 111 nuclei


def sample_item(name: str = NAME) -> dict:
    return {
        "image": str(SAMPLE / "images" / f"{name}.png"),
        "label": str(SAMPLE / "labels" / f"{name}.png"),
        "points": str(SAMPLE / "points" / f"{name}.csv"),
    }


def loader() -> list:
    return [
        LoadImaged(["image", "label"], reader="PILReader", reverse_indexing=False, image_only=True),
        EnsureChannelFirstd("image"),
        EnsureChannelFirstd("label", channel_dim="no_channel"),
        LoadPointsd("points", ref_key="image"),
    ]


def test_load_points_keeps_yx_order_and_the_image_frame():
    out = Compose(loader())(sample_item())
    points = out["points"]
    assert isinstance(points, MetaTensor) and points.shape == (111, 2) and points.dtype == torch.float32
    assert torch.equal(points.affine, out["image"].affine)
    label = out["label"][0].numpy().astype(int)
    pixel = np.floor(points.numpy() + 0.5).astype(int)
    # row i of the point file is the centroid of label i + 1 (convex enough nuclei contain their centroid)
    assert (label[pixel[:, 0], pixel[:, 1]] == np.arange(1, 112)).mean() > 0.95


@pytest.mark.parametrize("seed", range(6))
def test_points_follow_crop_flip_and_rotation(seed, tmp_path):
    # points 0.2 px off their pixel centres, so that rounding is unambiguous after flips (no exact halves)
    pixel0 = np.floor(read_points(SAMPLE / "points" / f"{NAME}.csv") + 0.5).astype(int)
    points_file = tmp_path / "points.csv"
    points_file.write_text("y,x\n" + "\n".join(f"{y + 0.2},{x - 0.2}" for y, x in pixel0))
    # an image holding point i + 1 at point i's pixel goes through the same (exact) spatial transforms
    index_map = np.zeros((1, 256, 256), dtype=np.int32)
    index_map[0, pixel0[:, 0], pixel0[:, 1]] = np.arange(1, len(pixel0) + 1)
    assert len(np.unique(index_map)) == len(pixel0) + 1  # no two points share a pixel
    keys = ["image", "label", "index"]
    augment = Compose(
        [
            *loader(),
            RandSpatialCropd(keys, roi_size=(160, 120), random_size=False),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandRotate90d(keys, prob=0.75),
            AlignPointsd("points", ref_key="image"),
        ]
    ).set_random_state(seed)
    out = augment({**sample_item(), "points": str(points_file), "index": index_map})
    moved_index = out["index"][0].numpy()
    points = out["points"].numpy()
    assert 0 < len(points) < 111  # the crop removed some points
    assert points.min() >= -0.5 and (points < np.array(moved_index.shape) - 0.5).all()
    pixel = np.floor(points + 0.5).astype(int)
    # every surviving point sits exactly where its pixel went, and every point left in the crop survived
    found = moved_index[pixel[:, 0], pixel[:, 1]]
    assert (found > 0).all()
    assert sorted(found) == sorted(moved_index[moved_index > 0])
    assert torch.equal(out["points"].affine, out["image"].affine)


def test_points_to_map_and_dict_version():
    points = np.array([[0.0, 0.0], [10.2, 5.7], [31.4, 31.4], [50.0, 5.0]])
    point_map = PointsToMap((32, 32))(points)
    assert point_map.shape == (1, 32, 32) and point_map.dtype == torch.float32
    assert point_map.sum() == 3 and point_map[0, 10, 6] == 1 and point_map[0, 31, 31] == 1
    disc = PointsToMap((32, 32), radius=2)(points[1:2])
    assert disc.sum() == 13  # a radius-2 disc of pixels
    out = PointsToMapd("points", map_key="point_map", radius=1)({"image": torch.zeros(3, 32, 32), "points": points})
    assert out["point_map"].shape == (1, 32, 32) and out["point_map"].sum() == 3 + 5 + 3  # corner discs clipped


def test_bad_point_files_are_reported_with_the_file(tmp_path):
    missing = tmp_path / "missing.csv"
    with pytest.raises(PointsFileError, match="missing.csv: point file not found"):
        LoadPoints()(missing)
    outside = tmp_path / "outside.csv"
    outside.write_text("y,x\n10,10\n300,20\n")
    with pytest.raises(PointsFileError, match=r"outside.csv: .*outside the 256x256 image"):
        LoadPoints()(outside, (256, 256))
    no_header = tmp_path / "no_header.csv"
    no_header.write_text("10,10\n20,20\n")
    with pytest.raises(PointsFileError, match="does not name the columns 'y' and 'x'"):
        read_points(no_header)
    nan = tmp_path / "nan.csv"
    nan.write_text("y,x\n10,nan\n")
    with pytest.raises(PointsFileError, match="line 2: non-finite"):
        read_points(nan)
    dup = tmp_path / "dup.csv"
    dup.write_text("y,x\n10,10\n10,10\n")
    assert len(LoadPoints()(dup)) == 2
    with pytest.raises(PointsFileError, match="duplicate"):
        LoadPoints(allow_duplicates=False)(dup)
    with pytest.raises(ValueError, match=r"channel-first \(C, H, W\)"):
        LoadPointsd("points")({"image": torch.zeros(32, 32), "points": str(dup)})


def test_formats_agree(tmp_path):
    points = read_points(SAMPLE / "points" / f"{NAME}.csv")
    (tmp_path / "p.json").write_text(str(points.tolist()))
    xy = "\n".join(f"{x}\t{y}\tNucleus" for y, x in points.tolist())
    (tmp_path / "p.tsv").write_text("x\ty\tclass\n" + xy)
    feature = {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": (points[:, ::-1] + 0.5).tolist()}}
    (tmp_path / "p.geojson").write_text(str({"type": "FeatureCollection", "features": [feature]}).replace("'", '"'))
    np.save(tmp_path / "p.npy", points)
    for suffix in ("json", "tsv", "geojson", "npy"):
        np.testing.assert_allclose(read_points(tmp_path / f"p.{suffix}"), points, atol=1e-4)
    # a label image used as a point map gives one point per nucleus, at its centroid
    label = load_label(SAMPLE / "labels" / f"{NAME}.png")
    from PIL import Image

    Image.fromarray(label.astype(np.uint16)).save(tmp_path / "map.png")
    np.testing.assert_allclose(read_points(tmp_path / "map.png"), points, atol=0.06)
