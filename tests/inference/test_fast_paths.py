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
"""The fast inference paths agree with the plain ones on a real MoNuSeg tile with the shipped model: regions sharing
one window grid vs the whole tile, and bfloat16 vs float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from networks import HoVerUNet
from scripts.engines.checkpoint import load_network_weights
from scripts.evaluation.metrics import aji
from scripts.inference.infer import NucleusInference
from tests.helpers import REPO

TILE = "TCGA-18-5592-01Z-00-DX1"  # 1000 x 1000, ~480 nuclei
MODEL = REPO / "bundle" / "models" / "model.pt"


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    return load_network_weights(HoVerUNet(), MODEL, what="segmentation model")


def _label(network: torch.nn.Module, image: Path, output: Path, **kwargs) -> tuple[np.ndarray, dict]:
    engine = NucleusInference(network, image, output, outputs=["label"], progress=False, **kwargs)
    summary = engine.run()["images"][0]
    return np.asarray(Image.open(summary["outputs"]["label"])).astype(np.int32), summary


def test_regions_on_one_window_grid_match_the_whole_tile(network, monuseg, tmp_path):
    """9 regions sharing a grid of 256 px windows vs the tile in one region: AJI >= 0.998, each window run once."""
    image = monuseg / "images" / f"{TILE}.png"
    windows = dict(roi_size=256, overlap=0.25, single_window=0, amp=False)
    whole, a = _label(network, image, tmp_path / "whole", region_size=2048, **windows)
    engine = NucleusInference(network, image, tmp_path / "tiled", outputs=["label"], progress=False, region_size=384,
                              **windows)  # fmt: skip
    b = engine.run()["images"][0]
    tiled = np.asarray(Image.open(b["outputs"]["label"])).astype(np.int32)
    assert a["regions"] == 1 and b["regions"] == 9 and a["nuclei"] > 300
    assert engine._grid.windows_run == len(engine._grid.starts) == 25  # 5 x 5 windows, none run twice
    assert aji(tiled, whole) >= 0.998


def test_bfloat16_matches_float32(network, monuseg, tmp_path):
    """The default window (the whole tile, one 1008 px window) in bfloat16 autocast vs float32: AJI >= 0.98."""
    image = monuseg / "images" / f"{TILE}.png"
    fp32, a = _label(network, image, tmp_path / "fp32", amp=False)
    bf16, b = _label(network, image, tmp_path / "bf16", amp=True)
    assert abs(a["nuclei"] - b["nuclei"]) <= 0.02 * a["nuclei"]
    assert aji(bf16, fp32) >= 0.98


def test_compile_auto_for_large_images_only_and_compiled_outputs_match(tmp_path, monkeypatch):
    import scripts.inference.infer as infer
    from scripts.inference.predict import TilePredictor
    from scripts.runtime.settings import SettingError, check
    from tests.helpers import SAMPLE

    torch.manual_seed(0)
    network = HoVerUNet(features=(8, 8, 16, 16, 16, 8))
    predictor = TilePredictor(network, roi_size=64)
    x = torch.rand(2, 3, 64, 64) * 255
    eager = predictor.forward(x)
    predictor.compile()
    torch.testing.assert_close(predictor.forward(x), eager, atol=1e-4, rtol=1e-4)

    image = sorted((SAMPLE / "images").glob("*.png"))[0]  # 256 x 256
    kwargs = dict(outputs=["csv"], compile="auto", roi_size=64, overlap=0.25, amp=False, progress=False)
    small = NucleusInference(network, image, tmp_path / "small", **kwargs)
    small.run()
    assert small.predictor._compiled is None  # 0.07 Mpx: not worth compiling
    monkeypatch.setattr(infer, "COMPILE_MIN_PIXELS", 256 * 256)
    compiled = []
    monkeypatch.setattr(TilePredictor, "compile", lambda self: compiled.append(self))  # compiled above already
    large = NucleusInference(network, image, tmp_path / "large", **kwargs)
    large.run()
    assert compiled == [large.predictor]
    # a folder of tiles: compiled from the image that brings the run to COMPILE_MIN_PIXELS on
    folder = tmp_path / "tiles"
    folder.mkdir()
    for p in sorted((SAMPLE / "images").glob("*.png"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    monkeypatch.setattr(infer, "COMPILE_MIN_PIXELS", 2 * 256 * 256)
    compiled.clear()
    tiles = NucleusInference(network, folder, tmp_path / "folder", **kwargs)
    seen = []
    monkeypatch.setattr(TilePredictor, "compile", lambda self: seen.append(tiles._pixels_seen))
    tiles.run()
    assert seen == [2 * 256 * 256, 3 * 256 * 256]  # not for the first tile; from the second on
    with pytest.raises(SettingError, match="compile must be true, false or auto"):
        check(compile="sometimes")
