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
"""Pictures for people: instance maps, contours, points and HoVer maps as RGB, and titled image grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from skimage.color import label2rgb
from skimage.segmentation import find_boundaries


def instances_rgb(label: np.ndarray) -> np.ndarray:
    """Instance map -> uint8 RGB, each nucleus a colour (stable per label value), background black."""
    palette = np.random.default_rng(0).uniform(0.25, 1.0, size=(4096, 3))
    return (label2rgb(label % 4096, colors=palette[1:], bg_label=0) * 255).astype(np.uint8)


def contours_on(image: np.ndarray, label: np.ndarray, colour: Sequence[int] = (0, 255, 0)) -> np.ndarray:
    """Draw the inner boundaries of every nucleus of ``label`` on an RGB uint8 image."""
    out = image.copy()
    out[find_boundaries(label, mode="inner")] = colour
    return out


def points_on(
    image: np.ndarray, points: np.ndarray, colour: Sequence[int] = (255, 255, 0), radius: int = 2
) -> np.ndarray:
    """Mark ``(y, x)`` points as small squares on an RGB uint8 image."""
    out = image.copy()
    h, w = out.shape[:2]
    for y, x in np.floor(np.asarray(points).reshape(-1, 2) + 0.5).astype(int):
        out[max(y - radius, 0) : min(y + radius + 1, h), max(x - radius, 0) : min(x + radius + 1, w)] = colour
    return out


def hv_rgb(hv: np.ndarray) -> np.ndarray:
    """``(2, H, W)`` HoVer maps in [-1, 1] -> RGB: horizontal in red, vertical in blue, grey at 0."""
    h, v = np.asarray(hv)[0], np.asarray(hv)[1]
    rgb = np.stack([(h + 1) / 2, np.full_like(h, 0.5), (v + 1) / 2], axis=-1)
    return (rgb * 255).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] = (), pad: int = 4) -> Image.Image:
    """Tile equally sized RGB uint8 images into a grid with a title line above every column."""
    h, w = rows[0][0].shape[:2]
    head = 16 if titles else 0
    canvas = Image.new("RGB", (len(rows[0]) * (w + pad) + pad, head + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(titles):
        draw.text((pad + j * (w + pad), 2), title, fill="black")
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            canvas.paste(Image.fromarray(image), (pad + j * (w + pad), head + pad + i * (h + pad)))
    return canvas
