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
"""Generated whole-slide images (pyramidal TIFFs of real tile crops) for benchmarks and tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from scripts import CODE_ROOT, SAMPLE_DATA

__all__ = ["make_slide", "slide_sources"]

REPO = CODE_ROOT
MONUSEG = REPO.parent / "shared" / "data" / "monuseg"


def slide_sources(size: int = 512) -> tuple[list[np.ndarray], str]:
    """H&E tiles to build benchmark images from: the MoNuSeg training images if ``../shared`` is there, else the
    embedded sample crops, each mosaicked up to at least ``size`` px."""
    from PIL import Image

    folder = MONUSEG / "images" if (MONUSEG / "images").is_dir() else SAMPLE_DATA / "images"
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    reps = [max(1, math.ceil(size / min(t.shape[:2]))) for t in tiles]
    return [np.tile(t, (r, r, 1)) if r > 1 else t for t, r in zip(tiles, reps, strict=True)], str(folder)


def make_slide(
    path: str | Path,
    size: int,
    sources: list[np.ndarray],
    fill: float = 1.0,
    cell: int = 512,
    tile: int = 512,
    mpp: float = 0.25,
    levels: int | None = None,
    seed: int = 0,
    background: int = 243,
) -> Path:
    """Write a ``size`` x ``size`` pyramidal RGB TIFF (tiled, zlib, levels halving to ~1024 px), tile by tile.

    Tissue is a centred disc covering ``fill`` of the area (``fill >= 1``: everything), made of ``cell`` x ``cell``
    crops of ``sources`` (random crop, tile and rotation per cell, seeded) on a plain ``background``. Memory does not
    depend on ``size``.
    """
    import functools

    import tifffile

    rng = np.random.default_rng(seed)
    n = math.ceil(size / cell)
    centre = (np.arange(n) + 0.5) * cell / size - 0.5
    radius2 = fill / math.pi
    tissue = np.ones((n, n), bool) if fill >= 1 else (centre[:, None] ** 2 + centre[None, :] ** 2 <= radius2)
    choice = rng.integers(len(sources), size=(n, n))
    offsets = rng.random((n, n, 2))
    turns = rng.integers(4, size=(n, n))
    if levels is None:
        levels = 1
        while math.ceil(size / 2**levels) >= 1024 and cell >> levels >= 1:
            levels += 1

    @functools.lru_cache(maxsize=4 * n + 64)
    def cell_pixels(k: int, i: int, j: int) -> np.ndarray | None:
        if not tissue[i, j]:
            return None
        src = sources[choice[i, j]]
        y = int(offsets[i, j, 0] * (src.shape[0] - cell + 1))
        x = int(offsets[i, j, 1] * (src.shape[1] - cell + 1))
        pixels = np.rot90(src[y : y + cell, x : x + cell], turns[i, j])
        f = 2**k
        return (pixels.reshape(cell // f, f, cell // f, f, 3).mean(axis=(1, 3)) + 0.5).astype(np.uint8)

    def tiles(k: int):
        side, step = math.ceil(size / 2**k), cell >> k
        for y0 in range(0, side, tile):
            for x0 in range(0, side, tile):
                out = np.full((tile, tile, 3), background, np.uint8)
                for i in range(y0 // step, min(n, math.ceil(min(y0 + tile, side) / step))):
                    for j in range(x0 // step, min(n, math.ceil(min(x0 + tile, side) / step))):
                        pixels = cell_pixels(k, i, j)
                        if pixels is None:
                            continue
                        ty0, tx0 = max(i * step, y0), max(j * step, x0)
                        ty1, tx1 = min((i + 1) * step, y0 + tile, side), min((j + 1) * step, x0 + tile, side)
                        out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = pixels[
                            ty0 - i * step : ty1 - i * step, tx0 - j * step : tx1 - j * step
                        ]
                yield out

    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for k in range(levels):
            side = math.ceil(size / 2**k)
            per_cm = 1e4 / (mpp * 2**k)
            tif.write(
                tiles(k),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": 1},
                subfiletype=0 if k == 0 else 1,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
            cell_pixels.cache_clear()
    return path
