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
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from scripts.cli.figures import augmentation_crops, augmentation_figure
from tests.helpers import REPO


@pytest.fixture
def synthetic_folder(tmp_path, monuseg):
    """A synthesize-style folder whose 'synthetic' pairs are two real MoNuSeg tiles with their dense labels."""
    names = json.loads((monuseg / "split.json").read_text())["train"][:2]
    items = [
        {"image": str(monuseg / "images" / f"{n}.png"), "label": str(monuseg / "labels" / f"{n}.png"), "name": n}
        for n in names
    ]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": items}))
    return tmp_path


def test_augmentation_crops_differ_only_by_the_randomisation(synthetic_folder, monuseg):
    datalist = str(synthetic_folder / "datalist.json")
    plain = augmentation_crops("synthetic", str(monuseg), False, 2, datalist)
    randomised = augmentation_crops("synthetic", str(monuseg), True, 2, datalist)
    again = augmentation_crops("synthetic", str(monuseg), True, 2, datalist)
    assert [c.shape for c in plain] == [(256, 256, 3)] * 2 and all(c.dtype == np.uint8 for c in plain)
    # seeded: the figure is reproducible
    assert all(np.array_equal(a, b) for a, b in zip(randomised, again, strict=True))
    assert any(np.abs(a.astype(int) - b).mean() > 2 for a, b in zip(plain, randomised, strict=True))
    # the same crops (positions, flips): the randomised image still follows the plain one's structure
    for a, b in zip(plain, randomised, strict=True):
        assert np.corrcoef(a.mean(-1).ravel(), b.mean(-1).ravel())[0, 1] > 0.5


def test_augmentation_figure_writes_three_rows(synthetic_folder, monuseg, tmp_path):
    out = augmentation_figure(str(synthetic_folder), data=str(monuseg), output=str(tmp_path / "f.jpg"), crops=3)
    assert Image.open(out).format == "JPEG" and [p.name for p in tmp_path.glob("*.jpg")] == ["f.jpg"]
    width, height = Image.open(out).size
    assert (width, height) == (3 * 260 + 4, 3 * 260 + 4)


def test_augmentation_figure_refuses_an_output_without_an_image_extension(synthetic_folder, monuseg, tmp_path):
    with pytest.raises(ValueError, match="no image file extension"):
        augmentation_figure(str(synthetic_folder), data=str(monuseg), output=str(tmp_path / "figure"))
    assert not list(tmp_path.glob("figure*"))


def test_augmentation_figure_names_a_missing_datalist(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "scripts", "augmentation_figure", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[0] == (
        f"error: {tmp_path / 'nope' / 'datalist.json'}: not found (is {tmp_path / 'nope'} a synthesize output folder?)"
    )
