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
"""The ignore band along pseudo-mask outlines (``pseudo_outline_ignore`` of the cpu profile) and the gap between
touching nuclei in the nucleus-pixel target (``np_touching_gap``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from scripts.data.images import read_label
from tests.helpers import REPO, SAMPLE, parse_configs
from transforms import OutlineBandd, SeparateTouchingd, outline_band, touching_borders

CONFIGS = REPO / "bundle" / "configs"


def _square_pair() -> np.ndarray:
    label = np.zeros((40, 60), np.int32)
    label[10:30, 10:30] = 1
    label[10:30, 30:50] = 2  # touching nucleus 1 along x = 30
    return label


def test_the_band_straddles_every_outline_by_width_pixels():
    label = _square_pair()
    for width in (1, 2, 3):
        band = outline_band(label, width)
        inside = ndi.distance_transform_cdt(label > 0, metric="chessboard")  # 1 on the nuclei's edge pixels
        outside = ndi.distance_transform_cdt(label == 0, metric="chessboard")
        assert np.array_equal(band[label == 0], outside[label == 0] <= width)
        assert not band[20, 20]  # the centre of nucleus 1 is taught
        assert band[20, 30 - width : 30 + width].all() and not band[20, 30 - width - 1]  # the shared outline
        assert band[label > 0][inside[label > 0] <= width].all()
    assert not outline_band(label, 0).any()
    with pytest.raises(ValueError, match="width must be >= 0"):
        outline_band(label, -1)


def test_the_transform_adds_to_an_existing_mask_and_width_0_changes_nothing():
    label = _square_pair()[None]
    existing = np.zeros_like(label, dtype=np.uint8)
    existing[0, 0, 0] = 1
    out = OutlineBandd("label", width=2)({"label": label, "ignore": existing})
    assert out["ignore"].shape == label.shape and out["ignore"][0, 0, 0] == 1
    assert np.array_equal(out["ignore"][0] > 0, outline_band(label[0], 2) | (existing[0] > 0))
    assert "ignore" not in OutlineBandd("label", width=0)({"label": label})


def test_the_cpu_profile_ignores_pseudo_outlines_only_when_asked():
    settings = {"data_dir": str(SAMPLE), "training_data": "pseudo", "crop_size": 64, "amp": False}
    plain = parse_configs(CONFIGS / "train.json", CONFIGS / "train_cpu.json", **settings)
    assert "ignore" not in next(iter(plain.get_parsed_content("train#dataloader")))
    banded = parse_configs(CONFIGS / "train.json", CONFIGS / "train_cpu.json", pseudo_outline_ignore=2, **settings)
    batch = next(iter(banded.get_parsed_content("train#dataloader")))
    ignore, foreground = batch["ignore"][:, 0] > 0, batch["label_np"][:, 1] > 0
    assert 0 < ignore.float().mean() < 0.5 and (foreground & ~ignore).any()
    dense = parse_configs(
        CONFIGS / "train.json",
        CONFIGS / "train_cpu.json",
        pseudo_outline_ignore=2,
        **{**settings, "training_data": "dense"},
    )
    assert "ignore" not in next(iter(dense.get_parsed_content("train#dataloader")))  # real outlines are taught


def test_the_touching_border_is_a_band_on_both_sides_of_a_shared_outline_only():
    label = _square_pair()
    label[32:38, 5:9] = 3  # an isolated nucleus: nothing of it is removed
    for width in (1, 2):
        gap = touching_borders(label, width)
        expected = np.zeros_like(gap)
        expected[10:30, 30 - width : 30 + width] = True  # both sides of the outline x = 30, not the outer outlines
        assert np.array_equal(gap, expected), width
    assert not touching_borders(label, 0).any() and not touching_borders(np.zeros((5, 5), np.int32), 1).any()
    with pytest.raises(ValueError, match="width must be >= 0"):
        touching_borders(label, -1)


def test_separating_real_nuclei_leaves_no_two_nuclei_adjacent(sample_names):
    """On the sample's real MoNuSeg crops: after the gap no pixel of a nucleus touches another nucleus (8-connected),
    only shared-outline pixels are removed, and they are a small part of the nuclei."""
    touching_crops = 0
    for name in sample_names:
        label = read_label(SAMPLE / "labels" / f"{name}.png").astype(np.int32)[None]
        out = SeparateTouchingd("label_np", width=1)({"label_np": label})["label_np"]
        assert out.shape == label.shape and out.dtype == label.dtype
        removed = (label > 0) & (out == 0)
        assert np.array_equal(removed[0], touching_borders(label[0], 1))
        assert not touching_borders(out[0], 1).any()
        assert removed.sum() < 0.1 * (label > 0).sum()
        touching_crops += bool(removed.any())
    assert touching_crops >= 2  # the crops do hold touching nuclei
    label = _square_pair()[None]
    assert SeparateTouchingd("label_np", width=0)({"label_np": label})["label_np"] is label


def test_the_training_target_has_the_gap_only_when_asked(sample_names):
    """``np_touching_gap: 1`` (the ``cpu`` profile's default): the NP target of a real crop is the nuclei minus their
    touching borders, while the HoVer target still covers the whole nuclei; 0 (``train.json``'s default) teaches the
    whole nuclei."""
    from monai.transforms import Compose

    label = read_label(SAMPLE / "labels" / f"{sample_names[0]}.png").astype(np.int32)[None]
    image = np.zeros((3, *label.shape[1:]), np.uint8)
    settings = {"data_dir": str(SAMPLE), "training_data": "dense", "amp": False}
    hv = None
    for gap in (0, 1):
        parser = parse_configs(CONFIGS / "train.json", CONFIGS / "train_cpu.json", np_touching_gap=gap, **settings)
        out = Compose(parser.get_parsed_content("train#targets"))({"image": image, "label": label})
        expected = (label[0] > 0) & ~touching_borders(label[0], gap)
        assert np.array_equal(np.asarray(out["label_np"][1]) > 0, expected)
        hv = np.asarray(out["hv_label"]) if hv is None else hv
        assert np.array_equal(np.asarray(out["hv_label"]), hv)  # the HoVer target does not change
    assert (expected != (label[0] > 0)).any()  # the crop holds touching nuclei
    defaults = parse_configs(CONFIGS / "train.json", CONFIGS / "train_cpu.json", **settings)
    assert defaults.get_parsed_content("np_touching_gap") == 1
    assert parse_configs(CONFIGS / "train.json").get_parsed_content("np_touching_gap") == 0
