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
"""Shared fixtures: the embedded sample (always present) and the full MoNuSeg training data (if beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "bundle" / "sample_data"
MONUSEG = REPO.parent / "shared" / "data" / "monuseg"

# Workflows run in the test process must not restart it with the allocator setting (scripts.runtime.configure).
os.environ.setdefault("POINTSYNTH_NO_REEXEC", "1")


@pytest.fixture(scope="session")
def sample_names() -> list[str]:
    return sorted(p.stem for p in (SAMPLE / "images").glob("*.png"))


@pytest.fixture(scope="session")
def monuseg() -> Path:
    if not (MONUSEG / "split.json").is_file():
        pytest.skip(f"MoNuSeg training data not found at {MONUSEG}")
    return MONUSEG


def load_label(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int32)


def parse_configs(*files: Path, **overrides) -> ConfigParser:
    """A MONAI ConfigParser of the merged config ``files`` with ``overrides`` (as ``--key value`` would give)."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(overrides)
    return parser


def save_random_segmenter(path: Path, features=(16, 32, 64, 128, 256), seed: int = 0) -> Path:
    """A bare ``ImageToMaskNet`` state dict (as train.json writes it; the shipped CPU segmenter by default) with
    seeded weights and non-trivial BatchNorm statistics."""
    from networks import ImageToMaskNet

    torch.manual_seed(seed)
    state = ImageToMaskNet(features=list(features), blocks_per_stage=1).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0.0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
    torch.save(state, path)
    return path
