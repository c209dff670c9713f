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
from monai.transforms import ComputeHoVerMaps

from tests.helpers import SAMPLE, load_label
from transforms import EncodeMask, EncodeMaskd, HVMap, HVMapd


def test_equals_monai_on_sample_labels(sample_names):
    for name in sample_names:
        label = load_label(SAMPLE / "labels" / f"{name}.png")[None]
        ours = HVMap()(label)
        reference = ComputeHoVerMaps()(label)
        assert ours.shape == (2, *label.shape[1:]) and ours.dtype == torch.float32
        assert float((ours - torch.as_tensor(reference)).abs().max()) <= 1e-5
        assert float(ours.min()) >= -1 and float(ours.max()) <= 1


def test_equals_monai_on_a_full_tile(monuseg):
    label = load_label(monuseg / "labels" / "TCGA-18-5592-01Z-00-DX1.png")[None]  # 480 nuclei
    reference = ComputeHoVerMaps()(label)
    assert float((HVMap()(label) - torch.as_tensor(reference)).abs().max()) <= 1e-5


def test_labels_are_arbitrary():
    rng = np.random.default_rng(0)
    label = load_label(SAMPLE / "labels" / "TCGA-A7-A13F-01Z-00-DX1_y380_x420.png")
    ids = np.unique(label)[1:]
    remap = np.zeros(label.max() + 1, dtype=np.int64)
    remap[ids] = rng.permutation(ids.size) * 9_999_991 + 12_345  # shuffled, non-contiguous, up to ~1e9
    a, b = HVMap()(label[None]), HVMap()(remap[label][None])
    assert torch.equal(a, b)


def test_hand_worked_instance():
    label = np.zeros((1, 4, 5), dtype=np.int32)
    label[0, 1:3, 0:3] = 7  # a 2x3 block: centroid (1.5, 1); columns 0,1,2 -> -1, 0, 1; rows 1,2 -> -1, 1
    hv = HVMap()(label).numpy()
    np.testing.assert_allclose(hv[0, 1, 0:3], [-1, 0, 1])
    np.testing.assert_allclose(hv[1, 1:3, 0], [-1, 1])
    assert hv[:, :, 3:].max() == 0 and hv[:, 0].max() == 0


def test_empty_and_single_pixel():
    assert float(HVMap()(np.zeros((1, 8, 8), np.int32)).abs().max()) == 0
    label = np.zeros((1, 8, 8), np.int32)
    label[0, 3, 4] = 1
    assert float(HVMap()(label).abs().max()) == 0


def test_dict_version_and_errors():
    label = load_label(SAMPLE / "labels" / "TCGA-A7-A13F-01Z-00-DX1_y380_x420.png")[None]
    out = HVMapd("label")({"label": label})
    assert out["hv_label"].shape == (2, 256, 256) and out["label"] is label
    with pytest.raises(ValueError, match=r"\(1, H, W\)"):
        HVMap()(label[0])
    with pytest.raises(ValueError, match="non-integral"):
        HVMap()(label.astype(np.float32) + 0.5)


def test_encode_mask_is_hv_and_foreground():
    label = load_label(SAMPLE / "labels" / "TCGA-18-5592-01Z-00-DX1_y100_x600.png")[None]
    mask = EncodeMask()(label)
    assert mask.shape == (3, *label.shape[1:]) and mask.dtype == torch.float32
    assert torch.equal(mask[:2], torch.as_tensor(HVMap()(label)))
    assert torch.equal(mask[2], torch.from_numpy(label[0] > 0).float())
    assert torch.equal(EncodeMaskd("label", "mask")({"label": label})["mask"], mask)
