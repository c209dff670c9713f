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
"""Re-create the embedded sample (``bundle/sample_data``) from a MoNuSeg training folder.

``python -m scripts.cli.make_sample_data --src ../shared/data/monuseg``: four 256x256 crops of MoNuSeg
*training* tiles (four organs), with relabelled 16-bit instance maps and regionprops centroids.
"""

from __future__ import annotations

from pathlib import Path

import fire
import numpy as np
from PIL import Image
from skimage.measure import regionprops
from skimage.segmentation import relabel_sequential

# (tile id, top, left): training tiles of four organs, crops chosen to show dense and sparse tissue
SAMPLE_CROPS = (
    ("TCGA-A7-A13F-01Z-00-DX1", 380, 420),  # breast
    ("TCGA-HE-7129-01Z-00-DX1", 200, 300),  # kidney, crowded
    ("TCGA-G9-6336-01Z-00-DX1", 500, 200),  # prostate
    ("TCGA-18-5592-01Z-00-DX1", 100, 600),  # liver (lung cohort)
)
CROP = 256


def make_sample_data(src: str = "../shared/data/monuseg", dst: str = "bundle/sample_data") -> None:
    """Write the sample crops (image PNG, 16-bit label PNG, ``y,x`` point CSV) under ``dst``."""
    src_dir, dst_dir = Path(src), Path(dst)
    for sub in ("images", "labels", "points"):
        (dst_dir / sub).mkdir(parents=True, exist_ok=True)
    for tile, top, left in SAMPLE_CROPS:
        name = f"{tile}_y{top}_x{left}"
        window = np.s_[top : top + CROP, left : left + CROP]
        image = np.asarray(Image.open(src_dir / "images" / f"{tile}.png").convert("RGB"))[window]
        label = relabel_sequential(np.asarray(Image.open(src_dir / "labels" / f"{tile}.png")).astype(np.int32)[window])[
            0
        ]
        Image.fromarray(image).save(dst_dir / "images" / f"{name}.png", optimize=True)
        Image.fromarray(label.astype(np.uint16)).save(dst_dir / "labels" / f"{name}.png")
        rows = ["y,x"] + [f"{r.centroid[0]:.1f},{r.centroid[1]:.1f}" for r in regionprops(label)]
        (dst_dir / "points" / f"{name}.csv").write_text("\n".join(rows) + "\n")
        print(f"{name}: {label.max()} nuclei")


if __name__ == "__main__":
    fire.Fire(make_sample_data)
