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
"""Helpers shared by the tests (not a test module): data locations, label reading, config parsing, model weights,
network-free inference engines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from PIL import Image
from scipy import ndimage

from scripts.inference.infer import NucleusInference, Region
from transforms import HVMap

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "bundle" / "sample_data"
MONUSEG = REPO.parent / "shared" / "data" / "monuseg"


def load_label(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int32)


def parse_configs(*files: Path, **overrides) -> ConfigParser:
    """A MONAI ConfigParser of the merged config ``files`` with ``overrides`` (as ``--key value`` would give)."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(overrides)
    return parser


def save_random_segmenter(path: Path, seed: int = 0) -> Path:
    """A bare state dict of the shipped segmenter (``HoVerUNet``, as train.json writes it) with seeded weights."""
    from networks import HoVerUNet

    torch.manual_seed(seed)
    torch.save(HoVerUNet().state_dict(), path)
    return path


def outputs_of(label: np.ndarray) -> dict[str, torch.Tensor]:
    """The network outputs (NP logits, HV maps) of a perfect prediction of the instance map ``label``."""
    foreground = (label > 0).astype(np.float32)
    logits = np.stack([1 - foreground, foreground]) * 8 - 4
    return {
        "nucleus_prediction": torch.from_numpy(logits),
        "horizontal_vertical": torch.from_numpy(np.asarray(HVMap()(label[None]), dtype=np.float32)),
    }


class DarkNuclei(NucleusInference):
    """Nuclei = dark pixels of each region (no network): works on any image, slides included."""

    def predict(self, image: np.ndarray, region: Region) -> dict[str, torch.Tensor]:
        dark = ndimage.binary_opening(image.mean(axis=-1) < 110, iterations=2)
        return outputs_of(ndimage.label(dark)[0].astype(np.int32))
