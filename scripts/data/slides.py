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
"""Reading H&E tiles and whole-slide images region by region, and finding their tissue.

:func:`open_image` returns an :class:`ImageSource` at one pyramid level: ``read(y, x, h, w)`` gives an RGB uint8
region in that level's pixels, ``thumbnail()`` a small overview. Kinds:

- tiles (PNG, JPEG, BMP, or a TIFF with one level of at most ``TILE_MAX_SIDE`` px): read whole (:class:`ArraySource`);
- tiled or striped TIFF / SVS slides with the tifffile backend (:class:`TiffSource`): only the TIFF tiles that
  overlap a region are read and decoded, so memory does not grow with the slide (MONAI's tifffile ``WSIReader``
  decodes the whole level for every patch);
- any slide with MONAI's ``WSIReader`` and the OpenSlide or cuCIM backend, when installed (:class:`WSIReaderSource`).

:func:`at_mpp` shows any of them at another resolution (:class:`ResampledSource`), e.g. the one a model was trained at.

Pixels follow the rules of :mod:`scripts.data.images` (the one reader): grayscale is copied to RGB, alpha is
composited onto white and 16-bit samples are scaled to 8 bits (both with a warning for a tile), other sample types
are refused. Levels are picked by index, by microns per pixel (``mpp``, within 10 %) or as the one nearest a
resolution (``target_mpp``); a missing one is an error that lists what the image has. Tiles carry no resolution:
it comes from ``tile_mpp`` or from the ``mpp`` column of a ``meta.csv`` beside them (:func:`tile_mpp_of`).
"""

from __future__ import annotations

import math
import threading
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from scripts.data.images import as_rgb8, decode_image

__all__ = [
    "SLIDE_SUFFIXES",
    "TILE_SUFFIXES",
    "ArraySource",
    "ImageSource",
    "LevelInfo",
    "ResampledSource",
    "TiffSource",
    "WSIReaderSource",
    "at_mpp",
    "find_inputs",
    "open_image",
    "tile_mpp_of",
    "tissue_mask",
]

SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".mrxs", ".bif", ".vms", ".vmu")
TIFF_SUFFIXES = (".tif", ".tiff")
TILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", *TIFF_SUFFIXES)
TILE_MAX_SIDE = 8192  # a one-level TIFF larger than this on a side is read as a slide (region by region)
MPP_RTOL = 0.1


@dataclass(frozen=True)
class LevelInfo:
    """One pyramid level: index, (height, width), downsample from level 0, microns per pixel (``None``: unknown)."""

    index: int
    shape: tuple[int, int]
    downsample: float
    mpp: float | None

    def describe(self) -> str:
        mpp = f", {self.mpp:.3f} um/px" if self.mpp else ""
        return f"level {self.index}: {self.shape[0]}x{self.shape[1]} px (downsample {self.downsample:g}{mpp})"


class ImageSource(ABC):
    """An RGB image at one level, read by region. Coordinates are (y, x) pixels of that level."""

    path: Path
    is_slide: bool
    levels: list[LevelInfo]
    level: int

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def info(self) -> LevelInfo:
        return self.levels[self.level]

    @property
    def shape(self) -> tuple[int, int]:
        return self.info.shape

    @property
    def downsample(self) -> float:
        """Level-0 pixels per pixel of the level read."""
        return self.info.downsample

    @property
    def mpp(self) -> float | None:
        return self.info.mpp

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 region of the level read; the region must lie inside the image."""
        return self.read_level(self.level, y, x, h, w)

    @abstractmethod
    def read_level(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """(h, w, 3) uint8 region of any level."""

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        """A reduced RGB copy of the level read, at most ``max_side`` px long, and its scale (thumbnail px per px).

        Read from the coarsest pyramid level that is still at least as fine as the thumbnail, block by block.
        """
        height, width = self.shape
        factor = max(1.0, max(height, width) / max_side)
        candidates = [lv for lv in self.levels if lv.downsample / self.downsample <= factor * 1.001]
        source = max(candidates, key=lambda lv: lv.downsample) if candidates else self.info
        relative = source.downsample / self.downsample  # level-read px per source px
        step = max(1, int(factor / relative))  # source px per thumbnail px, an integer block reduction
        sh, sw = source.shape
        out = np.zeros((math.ceil(sh / step), math.ceil(sw / step), 3), dtype=np.uint8)
        block = max(step, (2048 // step) * step)
        for y in range(0, sh, block):
            for x in range(0, sw, block):
                h, w = min(block, sh - y), min(block, sw - x)
                region = self.read_level(source.index, y, x, h, w)
                out[y // step : y // step + math.ceil(h / step), x // step : x // step + math.ceil(w / step)] = (
                    _block_mean(region, step)
                )
        return out, 1.0 / (relative * step)

    def close(self) -> None:  # noqa: B027 (nothing to release by default)
        """Release the file."""

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _block_mean(region: np.ndarray, step: int) -> np.ndarray:
    if step == 1:
        return region
    h, w = region.shape[:2]
    ph, pw = -h % step, -w % step
    if ph or pw:
        region = np.pad(region, ((0, ph), (0, pw), (0, 0)), mode="edge")
    blocks = region.reshape(region.shape[0] // step, step, region.shape[1] // step, step, 3)
    return (blocks.mean(axis=(1, 3)) + 0.5).astype(np.uint8)


class ArraySource(ImageSource):
    """A tile held in memory (one level)."""

    def __init__(self, path: str | Path, image: np.ndarray, mpp: float | None = None) -> None:
        self.path, self.image, self.is_slide, self.level = Path(path), image, False, 0
        self.levels = [LevelInfo(0, tuple(image.shape[:2]), 1.0, mpp)]

    def read_level(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.image[y : y + h, x : x + w]


def _tiff_mpp(tif, page) -> float | None:
    """Level-0 microns per pixel from SVS metadata or the resolution tags, else ``None``."""
    if getattr(tif, "is_svs", False):
        try:
            mpp = float(tif.svs_metadata.get("MPP", 0))
            if mpp > 0:
                return mpp
        except Exception:  # malformed description: fall back to the tags
            pass
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    numerator, denominator = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not numerator or not denominator or unit not in (2, 3):  # 2: inch, 3: centimetre
        return None
    per_unit = numerator / denominator  # pixels per unit
    return (25400.0 if unit == 2 else 10000.0) / per_unit


class TiffSource(ImageSource):
    """A (pyramidal) TIFF or SVS slide read with tifffile, decoding only the TIFF tiles/strips a region needs."""

    def __init__(self, path: str | Path) -> None:
        import tifffile

        self.path, self.is_slide, self.level = Path(path), True, 0
        self._lock = threading.Lock()
        try:
            self.tif = tifffile.TiffFile(self.path)
            series = self.tif.series[0]
            pages = [lv.keyframe for lv in series.levels]
        except Exception as e:
            raise ValueError(f"{self.path}: cannot read the TIFF ({type(e).__name__}: {e}).") from e
        self.pages = pages
        size = self.path.stat().st_size
        h0 = pages[0].imagelength
        mpp0 = _tiff_mpp(self.tif, pages[0])
        self.levels = []
        for i, page in enumerate(pages):
            self._check_page(page, i, size)
            ds = h0 / page.imagelength
            self.levels.append(
                LevelInfo(i, (page.imagelength, page.imagewidth), ds, mpp0 * ds if mpp0 is not None else None)
            )

    def _check_page(self, page, index: int, file_size: int) -> None:
        name = f"{self.path} (level {index})"
        if page.planarconfig != 1 and page.samplesperpixel > 1:
            raise ValueError(f"{name}: separate colour planes are not supported; convert to a chunky RGB TIFF.")
        offsets, counts = np.asarray(page.dataoffsets), np.asarray(page.databytecounts)
        if len(offsets) == 0 or int((offsets + counts).max()) > file_size:
            raise ValueError(f"{name}: the file is truncated (image data beyond its end, {file_size} bytes).")
        as_rgb8(np.zeros((1, 1, page.samplesperpixel), dtype=page.dtype), name, warn=False)
        first = int(np.flatnonzero(counts)[0]) if counts.any() else None
        if first is not None:
            try:
                self._decode(page, first)
            except Exception as e:
                raise ValueError(
                    f"{name}: cannot decode its {page.compression.name} data ({e}); install `imagecodecs`, or "
                    "use backend='openslide' with openslide-python and openslide-bin installed."
                ) from e

    def _decode(self, page, index: int) -> np.ndarray:
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        with self._lock:
            fh = self.tif.filehandle
            fh.seek(offset)
            data = fh.read(count)
        if len(data) != count:
            raise ValueError(f"{self.path}: truncated image data at byte {offset}.")
        segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        return segment.reshape(segment.shape[-3:])  # (rows, columns, samples)

    def read_level(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        page = self.pages[level]
        height, width = page.imagelength, page.imagewidth
        if page.is_tiled:
            ch, cw = page.tilelength, page.tilewidth
        else:
            ch, cw = page.rowsperstrip or height, width
        across = math.ceil(width / cw)
        out = np.zeros((h, w, page.samplesperpixel), dtype=page.dtype)
        for cy in range(y // ch, (y + h - 1) // ch + 1):
            for cx in range(x // cw, (x + w - 1) // cw + 1):
                index = cy * across + cx
                if not page.databytecounts[index]:
                    continue  # a sparse (empty) chunk: zeros
                try:
                    chunk = self._decode(page, index)
                except Exception as e:
                    raise ValueError(
                        f"{self.path}: cannot decode image data (level {level}, chunk {index}): {e}"
                    ) from e
                y0, x0 = cy * ch, cx * cw
                ty0, tx0 = max(y, y0), max(x, x0)
                ty1, tx1 = min(y + h, y0 + chunk.shape[0], height), min(x + w, x0 + chunk.shape[1], width)
                out[ty0 - y : ty1 - y, tx0 - x : tx1 - x] = chunk[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0]
        return as_rgb8(out, str(self.path), warn=False)

    def close(self) -> None:
        self.tif.close()


class WSIReaderSource(ImageSource):
    """A slide read with MONAI's ``WSIReader`` (``openslide`` or ``cucim`` backend)."""

    def __init__(self, path: str | Path, backend: str) -> None:
        from monai.data import WSIReader

        self.path, self.is_slide, self.level = Path(path), True, 0
        self.reader = WSIReader(backend=backend, channel_dim=-1)
        try:
            self.wsi = self.reader.read(str(self.path))
        except Exception as e:
            raise ValueError(f"{self.path}: cannot open the slide with {backend} ({type(e).__name__}: {e}).") from e
        self.levels = []
        for i in range(self.reader.get_level_count(self.wsi)):
            try:
                mpp = float(np.mean(self.reader.get_mpp(self.wsi, i)))
            except Exception:  # no resolution metadata
                mpp = None
            size = tuple(int(s) for s in self.reader.get_size(self.wsi, i))
            self.levels.append(LevelInfo(i, size, float(self.reader.get_downsample_ratio(self.wsi, i)), mpp))

    def read_level(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        ds = self.levels[level].downsample
        patch, _ = self.reader.get_data(self.wsi, location=(round(y * ds), round(x * ds)), size=(h, w), level=level)
        return as_rgb8(np.asarray(patch), str(self.path), warn=False)


class ResampledSource(ImageSource):
    """An image at another resolution: ``mpp`` microns per pixel instead of those of ``source``'s level.

    Pixels are interpolated by cubic convolution (Keys, a = -0.5, as PIL's bicubic when enlarging), after a Gaussian
    anti-aliasing filter when reducing (sigma ``(f - 1) / 2`` for a reduction by ``f``, as
    ``skimage.transform.rescale``), with the image's edge pixels repeated beyond it. Pixel ``p`` samples ``source`` at
    ``(p + 0.5) / scale - 0.5``, so a region read on its own equals the same region of the whole image resampled at
    once: regions agree at their seams. One level, whose ``downsample`` is level-0 pixels of ``source`` per pixel
    here: coordinates scaled by it land in the original level-0 frame.
    """

    def __init__(self, source: ImageSource, mpp: float) -> None:
        if not source.mpp or not mpp or mpp <= 0:
            raise ValueError(f"{source.path}: resampling needs both resolutions, got {source.mpp} and {mpp} um/px.")
        self.source, self.scale = source, source.mpp / mpp  # px here per px of the level read
        self.path, self.is_slide, self.level = source.path, source.is_slide, 0
        h, w = source.shape
        shape = (max(1, round(h * self.scale)), max(1, round(w * self.scale)))
        self.levels = [LevelInfo(source.level, shape, source.downsample / self.scale, mpp)]
        self.sigma = max(0.0, (1 / self.scale - 1) / 2)

    def read_level(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        pad = int(4.0 * self.sigma + 0.5) if self.sigma > 0 else 0  # scipy's Gaussian radius (truncate 4)
        height, width = self.source.shape
        y0, y1, rows, row_weights = _cubic_taps(y, h, self.scale, height, pad)
        x0, x1, cols, col_weights = _cubic_taps(x, w, self.scale, width, pad)
        patch = self.source.read(y0, x0, y1 - y0, x1 - x0).astype(np.float32)
        if self.sigma > 0:
            patch = ndimage.gaussian_filter(patch, (self.sigma, self.sigma, 0), mode="nearest", truncate=4.0)
        patch = sum(patch[rows[:, k]] * row_weights[:, k, None, None] for k in range(4))
        patch = sum(patch[:, cols[:, k]] * col_weights[None, :, k, None] for k in range(4))
        return np.clip(patch + 0.5, 0, 255).astype(np.uint8)

    def thumbnail(self, max_side: int = 2048) -> tuple[np.ndarray, float]:
        thumbnail, scale = self.source.thumbnail(max_side)
        return thumbnail, scale / self.scale

    def close(self) -> None:
        self.source.close()


def _cubic_taps(start: int, count: int, scale: float, size: int, pad: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Cubic-convolution taps along one axis for output pixels ``start .. start + count``: the span ``[a, b)`` of the
    source axis (``size`` px) to read, widened by ``pad``, and per output pixel its four source pixels (relative to
    ``a``, clamped to the axis) and their weights, (count, 4) each."""
    centres = (np.arange(start, start + count) + 0.5) / scale - 0.5
    first = np.floor(centres)
    distance = np.abs(centres[:, None] - (first[:, None] + np.arange(-1, 3)))  # (count, 4), in [0, 2]
    a = -0.5
    near = ((a + 2) * distance - (a + 3)) * distance**2 + 1
    far = ((a * distance - 5 * a) * distance + 8 * a) * distance - 4 * a
    weights = np.where(distance <= 1, near, far).astype(np.float32)
    taps = np.clip(first.astype(np.int64)[:, None] + np.arange(-1, 3), 0, size - 1)
    lo, hi = max(int(taps.min()) - pad, 0), min(int(taps.max()) + pad + 1, size)
    return lo, hi, taps - lo, weights


def at_mpp(source: ImageSource, mpp: float | None, rtol: float = MPP_RTOL) -> ImageSource:
    """``source`` seen at ``mpp`` microns per pixel (:class:`ResampledSource`); ``source`` itself when either
    resolution is unknown or they differ by at most ``rtol`` (relative to ``mpp``)."""
    if mpp is None or source.mpp is None or abs(source.mpp - mpp) <= rtol * mpp:
        return source
    return ResampledSource(source, mpp)


def tile_mpp_of(path: str | Path) -> float | None:
    """A tile's microns per pixel from the ``mpp`` column of the ``meta.csv`` beside it (row ``id`` = the file's stem);
    ``None`` when there is no such file, column or row.

    Raises:
        ValueError: the row's value is not a positive number.
    """
    import csv

    path = Path(path)
    meta = path.parent / "meta.csv"
    if not meta.is_file():
        return None
    with open(meta, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"id", "mpp"} <= set(reader.fieldnames or []):
            return None
        value = next(((r["mpp"] or "").strip() for r in reader if (r["id"] or "").strip() == path.stem), "")
    if not value:
        return None
    try:
        mpp = float(value)
    except ValueError:
        mpp = float("nan")
    if not mpp > 0:
        raise ValueError(f"{meta}: the mpp of {path.stem} must be a positive number, got {value!r}.")
    return mpp


def _choose_level(source: ImageSource, level: int | None, mpp: float | None, target_mpp: float | None = None) -> int:
    if level is not None and mpp is not None:
        raise ValueError("give either a level or an mpp, not both.")
    listing = "; ".join(lv.describe() for lv in source.levels)
    if mpp is not None:
        known = [lv for lv in source.levels if lv.mpp is not None]
        if not known:
            raise ValueError(f"{source.path}: has no resolution metadata, so mpp={mpp} cannot be found ({listing}).")
        best = min(known, key=lambda lv: abs(lv.mpp - mpp))
        if abs(best.mpp - mpp) > MPP_RTOL * mpp:
            raise ValueError(f"{source.path}: no level at {mpp} um/px (within {MPP_RTOL:.0%}); it has {listing}.")
        return best.index
    if level is None and target_mpp is not None:  # the level nearest the resolution wanted (by ratio), else 0
        known = [lv for lv in source.levels if lv.mpp is not None]
        return min(known, key=lambda lv: abs(math.log(lv.mpp / target_mpp))).index if known else 0
    level = 0 if level is None else int(level)
    if not 0 <= level < len(source.levels):
        raise ValueError(f"{source.path}: has no level {level}; it has {listing}.")
    return level


def _available_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    import importlib.util

    for name, module in (("openslide", "openslide"), ("cucim", "cucim")):
        if importlib.util.find_spec(module) is not None:
            if name == "cucim":
                import torch

                if not torch.cuda.is_available():
                    continue
            return name
    return "tifffile"


def open_image(
    path: str | Path,
    level: int | None = None,
    mpp: float | None = None,
    backend: str = "auto",
    tile_mpp: float | None = None,
    target_mpp: float | None = None,
) -> ImageSource:
    """Open a tile or a slide at a level (index, microns per pixel, or the one nearest a resolution).

    Args:
        path: image file.
        level: pyramid level (default: the one nearest ``target_mpp``, else 0).
        mpp: microns per pixel of the level to use instead of ``level`` (within 10 %).
        backend: slides: ``tifffile`` (region reads, built in), ``openslide``, ``cucim``, or ``auto`` (OpenSlide or,
            on a GPU, cuCIM when installed, else tifffile). Tiles are always read whole.
        tile_mpp: microns per pixel of tiles (they carry none).
        target_mpp: without ``level`` and ``mpp``: take the level whose resolution is nearest this one (by ratio;
            level 0 when the image has no resolution metadata).

    Raises:
        ValueError: missing, unreadable, truncated or unsupported files, gray images, missing levels.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: image not found.")
    suffix = path.suffix.lower()
    if suffix not in TILE_SUFFIXES + SLIDE_SUFFIXES:
        raise ValueError(f"{path}: unknown image type '{suffix}' (expected one of {TILE_SUFFIXES + SLIDE_SUFFIXES}).")
    slide = suffix in SLIDE_SUFFIXES
    if suffix in TIFF_SUFFIXES and not slide:
        slide = _tiff_is_slide(path)
    if not slide:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            source: ImageSource = ArraySource(path, as_rgb8(decode_image(path), str(path)), mpp=tile_mpp)
    else:
        backend = _available_backend(backend)
        if backend == "tifffile":
            if suffix not in TIFF_SUFFIXES + (".svs",):
                raise ValueError(f"{path}: '{suffix}' slides need backend='openslide' (openslide-python installed).")
            source = TiffSource(path)
        elif backend in ("openslide", "cucim"):
            source = WSIReaderSource(path, backend)
        else:
            raise ValueError(f"unknown backend '{backend}' (expected auto, tifffile, openslide or cucim).")
    try:
        source.level = _choose_level(source, level, mpp, target_mpp)
        if min(source.shape) < 1:
            raise ValueError(f"{path}: empty image ({source.shape[0]}x{source.shape[1]} px).")
    except Exception:
        source.close()
        raise
    return source


def _tiff_is_slide(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = series.levels[0].keyframe
            return len(series.levels) > 1 or max(page.imagelength, page.imagewidth) > TILE_MAX_SIDE
    except Exception as e:
        raise ValueError(f"{path}: cannot read the TIFF ({type(e).__name__}: {e}).") from e


DATALIST_KEYS = ("testing", "training", "validation")  # the datalist sections read when no key is given


def find_inputs(path: str | Path, key: str | None = None) -> list[Path]:
    """The image files to process, sorted: ``path`` itself (an image file), the tiles and slides of a folder (not
    recursive), or the images listed by a CSV file or a MONAI datalist JSON.

    A CSV lists one image per row in a column named ``image`` or ``path``, or in its only column (then without a
    header). A datalist holds items with an ``"image"`` (or plain path strings) under ``key`` (default: the first of
    ``testing``, ``training``, ``validation`` it has), or is such a list itself. Relative paths in a list are resolved
    against the list's folder.

    Raises:
        ValueError: nothing found or listed, a list without the expected column / key, listed files that are missing or
            not images (all named at once), or two files sharing a name stem (their outputs would collide).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TILE_SUFFIXES + SLIDE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no image files ({', '.join(TILE_SUFFIXES + SLIDE_SUFFIXES)}).")
        return _unique_stems(path, [(p.name, p) for p in files])
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder.")
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        return [path]
    entries = _csv_entries(path) if suffix == ".csv" else _datalist_entries(path, key)
    if not entries:
        raise ValueError(f"{path}: lists no images.")
    problems = [
        f"{where}: {file} not found" if not file.is_file() else f"{where}: {file} is not an image ('{file.suffix}')"
        for where, file in entries
        if not file.is_file() or file.suffix.lower() not in TILE_SUFFIXES + SLIDE_SUFFIXES
    ]
    if problems:
        unusable = f"{len(problems)} of {len(entries)} listed images are unusable"
        raise ValueError(f"{path}: {unusable}: " + "; ".join(problems))
    return sorted(_unique_stems(path, [(f"{where} ({file})", file) for where, file in entries]))


def _unique_stems(where: Path, entries: list[tuple[str, Path]]) -> list[Path]:
    stems: dict[str, str] = {}
    for name, p in entries:
        if p.stem in stems:
            raise ValueError(f"{where}: {stems[p.stem]} and {name} would write the same output names ({p.stem}_*).")
        stems[p.stem] = name
    return [p for _, p in entries]


def _listed(base: Path, value: object) -> Path:
    file = Path(str(value).strip()).expanduser()
    return file if file.is_absolute() else base / file


def _csv_entries(path: Path) -> list[tuple[str, Path]]:
    """``(row description, image path)`` of a CSV's rows (column ``image`` / ``path``, or a single unnamed one)."""
    import csv

    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [(i, row) for i, row in enumerate(csv.reader(f), 1) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip().lower() for cell in rows[0][1]]
    if "image" in header or "path" in header:
        column, rows = header.index("image" if "image" in header else "path"), rows[1:]
    elif len(header) == 1 and Path(header[0]).suffix in TILE_SUFFIXES + SLIDE_SUFFIXES:
        column = 0  # one column of paths, no header
    else:
        raise ValueError(f"{path}: no column named 'image' or 'path' (header: {', '.join(rows[0][1])}).")
    entries = []
    for i, row in rows:
        if column >= len(row) or not row[column].strip():
            raise ValueError(f"{path}, row {i}: no image path in column {column + 1}.")
        entries.append((f"row {i}", _listed(path.parent, row[column])))
    return entries


def _datalist_entries(path: Path, key: str | None) -> list[tuple[str, Path]]:
    """``(item description, image path)`` of a datalist's items under ``key`` (see :func:`find_inputs`).

    Unlike ``monai.data.load_decathlon_datalist``, this reader also takes a bare list, or path strings under any key,
    and names the file and item when one is malformed (MONAI's fails inside ``json`` or on an item's type).
    """
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the datalist ({type(e).__name__}: {e}).") from e
    if isinstance(data, dict):
        found = [key] if key is not None else [k for k in DATALIST_KEYS if k in data][:1]
        if not found or found[0] not in data:
            wanted = repr(key) if key is not None else " / ".join(repr(k) for k in DATALIST_KEYS)
            raise ValueError(f"{path}: no {wanted} list (keys: {', '.join(map(str, data)) or 'none'}).")
        key, data = found[0], data[found[0]]
    if not isinstance(data, list):
        raise ValueError(f"{path}: {key or 'the datalist'} must be a list of items with an 'image'.")
    entries = []
    for i, item in enumerate(data):
        image = item.get("image") if isinstance(item, dict) else item
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{path}: {key or 'item'}[{i}] has no 'image' path.")
        entries.append((f"{key or 'item'}[{i}]", _listed(path.parent, image)))
    return entries


def tissue_mask(thumbnail: np.ndarray, threshold: float | None = None, dilation: int = 2) -> tuple[np.ndarray, float]:
    """Tissue in an RGB thumbnail: saturation above ``threshold`` (``None``: Otsu, clipped to [0.04, 0.15]),
    dilated by ``dilation`` px. Returns the mask and the threshold used."""
    from skimage.filters import threshold_otsu

    rgb = thumbnail.astype(np.float32)
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = (high - low) / np.maximum(high, 1.0)
    if threshold is None:
        threshold = float(np.clip(threshold_otsu(saturation) if np.ptp(saturation) > 0 else 0.0, 0.04, 0.15))
    mask = saturation > threshold
    if dilation and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=dilation)
    return mask, float(threshold)
