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
"""Streaming nucleus instance inference on tiles, folders of tiles and whole slides (``inference.json``).

An image is cut into square **cores** (about ``region_size``) that tile the region of interest; each core is
post-processed in its **box**, the core with a ``margin`` of context. The network runs on large windows (``roi_size``,
768 px) of the whole image's sliding-window grid (MONAI's placement and Gaussian blending): a box's outputs are blended
from the windows it overlaps, each window runs once and is kept only while a later box needs it
(:class:`~scripts.inference.windows.WindowGrid`), so every pixel's network output equals whole-image inference and
costs ``(roi_size / stride)^2`` (1.19 at the defaults) network evaluations; an image of at most ``single_window``
(1024) px a side runs as one window. Each region is post-processed
(:class:`~transforms.HoVerNetInstances`) in a worker thread while the network runs on the next one, and
only the nuclei whose centroid lies in the core are kept: every nucleus is found once, whole, as long as the margin
exceeds the largest nucleus. Their outlines, measurements and pixels stream to the
writers of :mod:`scripts.data.writers` (memory does not grow with the slide's height; the window outputs waiting for
the next row of boxes take ~3 kB per px of its width). Slides skip background regions (saturation
of a thumbnail, :func:`~scripts.data.slides.tissue_mask`).

**Resolution**: the network works at the microns per pixel it was trained at (``model_mpp``, from the bundle's
``metadata.json``, :func:`bundle_mpp`). A slide is read at the level nearest it; an image whose resolution (slide
metadata, ``tile_mpp``, a ``meta.csv`` ``mpp`` column) differs from it by more than 10 % is resampled to it
(:class:`~scripts.data.slides.ResampledSource`, pixel for pixel the same whatever the region) and everything above runs
at that resolution; outlines, centroids and areas come back in level-0 pixels of the image, label maps and overlays
in pixels of the level read (nearest neighbour). An image of unknown resolution is processed as it is.

Many images (a folder, a CSV or a datalist, :func:`~scripts.data.slides.find_inputs`) are processed one after the other,
or shared between the processes of a ``torchrun`` run (``multi_gpu_inference.json``,
:func:`scripts.runtime.distributed.shard`).
Each image's record (``records/<name>.json``: its result, or its error) is written after all its outputs: a restarted
run skips the images recorded as done, and the main process writes ``summary.json`` / ``summary.csv`` of every image.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import HoVerNetBranch
from scipy import ndimage
from skimage.color import hed_from_rgb
from skimage.measure import find_contours
from tqdm import tqdm

from scripts.data.atomic import atomic_path, remove_stale_temporaries
from scripts.data.images import as_rgb8
from scripts.data.slides import (
    ArraySource,
    ImageSource,
    ResampledSource,
    at_mpp,
    find_inputs,
    open_image,
    tile_mpp_of,
    tissue_mask,
)
from scripts.data.writers import (
    CSVWriter,
    GeoJSONWriter,
    ImageInfo,
    LabelWriter,
    Nuclei,
    OutputWriter,
    OverlayWriter,
    PyramidLabelWriter,
    output_paths,
)
from scripts.inference.predict import MIN_IMAGE_SIDE, TilePredictor
from scripts.inference.windows import WindowGrid
from scripts.runtime import distributed
from scripts.runtime.settings import as_bool
from transforms import MONUSEG_RANGES, HoVerNetInstances, split_output

__all__ = [
    "NucleusInference",
    "Region",
    "SeamClaims",
    "bundle_mpp",
    "plan_regions",
    "region_nuclei",
    "simplify_ring",
    "to_level_read",
]

logger = logging.getLogger(__name__)

_NP, _HV = HoVerNetBranch.NP.value, HoVerNetBranch.HV.value
SEAM_BAND = 32  # px at the level read: how far outside its core a region may take a nucleus its neighbour left

RECORDS = "records"  # per-image records, in output_dir
SUMMARY_COLUMNS = ("image", "name", "status", "nuclei", "seconds", "rank", "outputs", "error")
COMPILE_MIN_PIXELS = 50_000_000  # compile="auto": from an image, or a run's images so far, of this many px on
NIFTI_MAX_PIXELS = 100_000_000  # NIfTI maps are built in memory: refuse larger regions of interest
# per-channel optical density of a uint8 value, as skimage.color.rgb2hed computes it
_OD = (np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / np.log(1e-6)).astype(np.float64)


@dataclass(frozen=True)
class Region:
    """A core (the pixels whose nuclei this region owns) and its box (core + margin)."""

    core: tuple[int, int, int, int]  # y0, x0, y1, x1 at the level read
    box: tuple[int, int, int, int]  # the core and a margin around it, inside the image


def _cuts(start: int, length: int, size: int, core: int, margin: int, window: int, stride: int) -> list[int]:
    """Core edges along one axis of an image of ``size`` px: ``start``, the inner edges, ``start + length``.

    Inner edges lie ``margin`` px before a window start of the whole image's grid (multiples of ``stride``) and
    ``core`` (a multiple of ``stride``) apart: a box then ends where a window starts, so that the windows two rows of
    boxes share are the few straddling their seam, and only ``~3 * margin`` px of them wait for the next row.
    """
    end = start + length
    if size <= window:  # one window along this axis: any cut is as good
        return [*range(start, end, core), end]
    cuts = [start]
    j = math.ceil((start + stride // 2 + margin) / core)
    while (b := j * core - margin) < end - stride // 2:
        cuts.append(b)
        j += 1
    return [*cuts, end]


def plan_regions(
    shape: Sequence[int],
    roi: Sequence[int],
    region_size: int,
    margin: int,
    window: int,
    overlap: float,
) -> list[Region]:
    """Cores of about ``region_size`` (rounded down to a multiple of the window stride, at least one, along axes
    longer than a window) tiling ``roi = (y, x, h, w)``, row by row, each
    with its box (the core and ``margin`` px around it, inside the image of ``shape``), seams placed for the
    whole image's sliding-window grid (:func:`_cuts`)."""
    stride = max(1, int(window * (1 - overlap)))  # MONAI's scan interval
    core = max(stride, int(region_size) // stride * stride)
    y, x, h, w = (int(v) for v in roi)
    small = max(1, int(region_size))  # along an axis shorter than a window, cores of region_size exactly
    rows = _cuts(y, h, int(shape[0]), core if shape[0] > window else small, margin, window, stride)
    cols = _cuts(x, w, int(shape[1]), core if shape[1] > window else small, margin, window, stride)
    regions = []
    for y0, y1 in zip(rows[:-1], rows[1:], strict=True):
        for x0, x1 in zip(cols[:-1], cols[1:], strict=True):
            box = (max(y0 - margin, 0), max(x0 - margin, 0), min(y1 + margin, shape[0]), min(x1 + margin, shape[1]))
            regions.append(Region((y0, x0, y1, x1), box))
    return regions


class SeamClaims:
    """What the regions processed so far emitted near the seams of the regions still to come.

    Regions are settled one at a time, in plan order (:meth:`turn`). A region emits the nuclei whose centroid (in its
    own segmentation) lies in its core, and also those whose centroid lies within ``band`` px outside it, inside the
    core of a region already settled (that region's segmentation put it on this side of the seam, so nobody has
    emitted it). It never emits a nucleus overlapping a pixel of one already emitted: two segmentations of the same
    nucleus, cut differently by their boxes, are counted once, by the earlier region, and nuclei never overlap.
    """

    def __init__(self, band: int) -> None:
        self.band = int(band)
        self._cores: list[tuple[int, int, int, int]] = []
        self._pixels: list[tuple[int, np.ndarray, np.ndarray]] = []  # (last row, rows, columns) of emitted nuclei
        self._settled = 0
        self._aborted = False
        self._condition = threading.Condition()

    @contextmanager
    def turn(self, index: int) -> Iterator[None]:
        """Wait until the regions before ``index`` (in plan order) are settled; settle ``index`` on leaving."""
        with self._condition:
            self._condition.wait_for(lambda: self._settled >= index or self._aborted)
            if self._aborted:
                raise RuntimeError("an earlier region failed")
        try:
            yield
        except BaseException:
            self.abort()
            raise
        with self._condition:
            self._settled = index + 1
            self._condition.notify_all()

    def abort(self) -> None:
        """Release every region waiting for its turn (an earlier one failed): they raise."""
        with self._condition:
            self._aborted = True
            self._condition.notify_all()

    def claimed(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """(h, w) bool: the pixels of ``box`` that belong to nuclei already emitted."""
        by0, bx0, by1, bx1 = box
        canvas = np.zeros((by1 - by0, bx1 - bx0), dtype=bool)
        for _, ys, xs in self._pixels:
            inside = (ys >= by0) & (ys < by1) & (xs >= bx0) & (xs < bx1)
            canvas[ys[inside] - by0, xs[inside] - bx0] = True
        return canvas

    def in_settled_core(self, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
        """Which centroids lie in the (roi-clipped) core of a region already settled."""
        found = np.zeros(gy.shape, dtype=bool)
        for y0, x0, y1, x1 in self._cores:
            found |= (gy >= y0 - 0.5) & (gy < y1 - 0.5) & (gx >= x0 - 0.5) & (gx < x1 - 0.5)
        return found

    def settle(self, core: tuple[int, int, int, int], emitted: np.ndarray, origin: tuple[int, int]) -> None:
        """Record a settled region: its roi-clipped ``core`` and the pixels of its emitted nuclei (``emitted``, a
        box-local bool map) that a later region can see (outside the core shrunk by ``3 * band``); forget what no
        later region can reach (regions come row by row)."""
        cy0, cx0, cy1, cx1 = core
        depth = 3 * self.band
        seam = emitted.copy()
        oy, ox = origin
        iy0, ix0 = max(cy0 + depth - oy, 0), max(cx0 + depth - ox, 0)
        iy1, ix1 = max(cy1 - depth - oy, iy0), max(cx1 - depth - ox, ix0)
        seam[iy0:iy1, ix0:ix1] = False
        ys, xs = np.nonzero(seam)
        top = cy0 - depth - self.band  # no later region's box starts above its core minus the margin
        self._pixels = [p for p in self._pixels if p[0] >= top]
        self._cores = [c for c in self._cores if c[2] + self.band >= top]
        if len(ys):
            self._pixels.append((int(ys.max()) + oy, (ys + oy).astype(np.int32), (xs + ox).astype(np.int32)))
        self._cores.append(core)


def simplify_ring(ring: np.ndarray) -> np.ndarray:
    """Drop the collinear vertices of a closed ring (first = last); the shape is unchanged."""
    points = ring[:-1]
    if len(points) < 4:
        return ring
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = points[np.abs(cross) > 1e-9]
    if len(keep) < 3:
        return ring
    return np.concatenate([keep, keep[:1]])


def _outline(mask: np.ndarray) -> np.ndarray | None:
    """The longest closed contour of a binary crop, (k, 2) (row, col), crop coordinates, first = last."""
    contours = find_contours(np.pad(mask, 1).astype(np.uint8), 0.5)
    if not contours:
        return None
    ring = max(contours, key=len) - 1.0
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.concatenate([ring, ring[:1]])
    return simplify_ring(ring)


def _label_sums(
    instances: np.ndarray, image: np.ndarray, n: int, band: int = 256
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label 0..n: pixel count, sums of row and column indices, sums of the RGB optical densities (n + 1, 3);
    in bands of rows, so that temporaries stay small."""
    area, rows, cols = np.zeros(n + 1), np.zeros(n + 1), np.zeros(n + 1)
    od = np.zeros((n + 1, 3))
    width = instances.shape[1]
    columns = np.arange(width, dtype=np.float64)
    for y0 in range(0, instances.shape[0], band):
        labels = instances[y0 : y0 + band].ravel()
        h = len(labels) // max(width, 1)
        area += np.bincount(labels, minlength=n + 1)
        rows += np.bincount(labels, weights=np.repeat(np.arange(y0, y0 + h, dtype=np.float64), width), minlength=n + 1)
        cols += np.bincount(labels, weights=np.tile(columns, h), minlength=n + 1)
        pixels = image[y0 : y0 + band].reshape(-1, 3)
        for c in range(3):
            od[:, c] += np.bincount(labels, weights=_OD[pixels[:, c]], minlength=n + 1)
    return area, rows, cols, od


def region_nuclei(
    instances: np.ndarray,
    image: np.ndarray,
    region: Region,
    downsample: float = 1.0,
    roi: Sequence[int] | None = None,
    image_shape: Sequence[int] | None = None,
    polygons: bool = True,
    raster: bool = True,
    keep_image: bool = False,
    claims: SeamClaims | None = None,
) -> tuple[Nuclei, int]:
    """The nuclei a region owns (centroid in its core and ``roi``), ids 1..n in label order.

    Args:
        instances: (h, w) instance map of the region's box.
        image: (h, w, 3) uint8 pixels of the box (for the H&E measurements).
        region: the region.
        downsample: level-0 px per px of the frame processed (the level read, or it resampled).
        roi: (y, x, h, w) region of interest (default: the core only decides).
        image_shape: the level's (height, width), to tell a box edge at the image border from one inside it.
        polygons, raster, keep_image: what to return besides the measurements.
        claims: the regions settled before this one (:class:`SeamClaims`; call within its ``turn``): nuclei already
            emitted are not emitted again, near-seam nuclei left to this region are taken, and this region is settled.

    Returns:
        the nuclei (level-0 coordinates, local ids) and the number of owned nuclei touching an inner box edge
        (cut by the box: the margin is too small for them).
    """
    by0, bx0, by1, bx1 = region.box
    cy0, cx0, cy1, cx1 = region.core
    if roi is not None:
        cy0, cx0 = max(cy0, roi[0]), max(cx0, roi[1])
        cy1, cx1 = min(cy1, roi[0] + roi[2]), min(cx1, roi[1] + roi[3])
    n = int(instances.max(initial=0))
    ids = np.arange(n + 1)
    overlap = None
    if claims is not None:  # the pixels of nuclei already emitted are not this region's
        taken = claims.claimed(region.box)
        overlap = np.bincount(instances[taken], minlength=n + 1)
        instances = np.where(taken, 0, instances)
    area, gy, gx, od = _label_sums(instances, image, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        gy, gx = gy / area + by0, gx / area + bx0
    owned = (ids > 0) & (area > 0) & (gy >= cy0 - 0.5) & (gy < cy1 - 0.5) & (gx >= cx0 - 0.5) & (gx < cx1 - 0.5)
    height, width = image_shape if image_shape is not None else (by1, bx1)
    if claims is not None:
        ry0, rx0, rh, rw = roi if roi is not None else (0, 0, height, width)
        ry1, rx1 = ry0 + rh, rx0 + rw
        b = claims.band
        near = (ids > 0) & (area > 0) & ~owned
        near &= (gy >= max(cy0 - b, ry0) - 0.5) & (gy < min(cy1 + b, ry1) - 0.5)
        near &= (gx >= max(cx0 - b, rx0) - 0.5) & (gx < min(cx1 + b, rx1) - 0.5)
        emitted = overlap >= area  # at least half of the nucleus (area + overlap before) is emitted already
        emitted[0] = False
        owned = (owned | (near & claims.in_settled_core(gy, gx))) & ~emitted
        claims.settle((cy0, cx0, cy1, cx1), owned[instances], (by0, bx0))
    owned_ids = ids[owned]
    hed = (od[owned_ids] / area[owned_ids, None]) @ hed_from_rgb
    slices = ndimage.find_objects(instances, max_label=n)
    cut, rings = 0, [] if polygons else None
    for i in owned_ids:
        sy, sx = slices[i - 1]
        if (sy.start == 0 and by0 > 0) or (sx.start == 0 and bx0 > 0):
            cut += 1
        elif (sy.stop == by1 - by0 and by1 < height) or (sx.stop == bx1 - bx0 and bx1 < width):
            cut += 1
        if polygons:
            ring = _outline(instances[sy, sx] == i)
            if ring is None:  # cannot happen for a nonempty mask; keep the ids aligned regardless
                ring = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
            # (row, col) box-local pixel centres -> (x, y) level-0 pixel corners
            xy = (ring[:, ::-1] + [sx.start + bx0 + 0.5, sy.start + by0 + 0.5]) * downsample
            rings.append(xy)
    label_raster = None
    if raster:
        lut = np.zeros(n + 1, dtype=np.uint32)
        lut[owned_ids] = np.arange(1, len(owned_ids) + 1, dtype=np.uint32)
        label_raster = lut[instances]
    core_image = None
    if keep_image:
        core_image = np.ascontiguousarray(image[cy0 - by0 : cy1 - by0, cx0 - bx0 : cx1 - bx0])
    nuclei = Nuclei(
        ids=np.arange(1, len(owned_ids) + 1, dtype=np.int64),
        centroids=(np.stack([gy[owned_ids], gx[owned_ids]], -1) + 0.5) * downsample - 0.5,
        area_px=area[owned_ids] * downsample**2,
        hematoxylin=hed[:, 0],
        eosin=hed[:, 1],
        polygons=rings,
        raster=label_raster,
        origin=(by0, bx0),
        core=(cy0, cx0, cy1, cx1),
        image=core_image,
    )
    return nuclei, cut


def _nearest_pixels(start: int, count: int, scale: float) -> tuple[int, np.ndarray]:
    """Nearest-neighbour map along one axis from the level read to a frame of ``scale`` px per px: the level pixels
    ``i`` whose frame pixel ``floor((i + 0.5) * scale)`` lies in ``start .. start + count``, as the first such ``i``
    and, per pixel, its frame pixel relative to ``start`` (one global rule, so that regions agree)."""
    candidates = np.arange(math.floor(start / scale) - 1, math.ceil((start + count) / scale) + 1)
    frame = np.floor((candidates + 0.5) * scale).astype(np.int64)
    inside = (frame >= start) & (frame < start + count)
    return int(candidates[inside][0]) if inside.any() else 0, frame[inside] - start


def to_level_read(nuclei: Nuclei, scale: float) -> Nuclei:
    """Move a region's label raster and core from a resampled frame (``scale`` px per px of the level read) to the
    level read, by nearest neighbour (outlines, centroids and areas are level-0 values already)."""
    if nuclei.raster is not None:
        y0, rows = _nearest_pixels(nuclei.origin[0], nuclei.raster.shape[0], scale)
        x0, cols = _nearest_pixels(nuclei.origin[1], nuclei.raster.shape[1], scale)
        nuclei.raster = np.ascontiguousarray(nuclei.raster[np.ix_(rows, cols)])
        nuclei.origin = (y0, x0)
    nuclei.core = tuple(c / scale for c in nuclei.core)
    return nuclei


def bundle_mpp(bundle_root: str | Path) -> float | None:
    """The microns per pixel the bundle's network works at: ``network_data_format.inputs.image.mpp`` of
    ``<bundle_root>/configs/metadata.json`` (``None`` when it is not given)."""
    path = Path(bundle_root) / "configs" / "metadata.json"
    try:
        image = json.loads(path.read_text())["network_data_format"]["inputs"]["image"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    mpp = image.get("mpp") if isinstance(image, dict) else None
    return float(mpp) if mpp is not None else None


def _offset_ids(nuclei: Nuclei, offset: int) -> Nuclei:
    nuclei.ids = nuclei.ids + offset
    if nuclei.raster is not None and offset:
        nuclei.raster[nuclei.raster > 0] += np.uint32(offset)
    return nuclei


class NucleusInference:
    """Segment the nuclei of a tile, a folder of tiles or a slide, and write the requested outputs.

    Args:
        network: the segmenter (weights loaded), returning MONAI HoVerNet's output dictionary.
        input: image file, folder of images, or CSV / datalist JSON (:func:`~scripts.data.slides.find_inputs`).
        output_dir: output folder (created).
        outputs: any of ``label``, ``geojson``, ``csv``, ``overlay``, ``nifti``.
        level: pyramid level to process (default: the one nearest ``model_mpp``, else 0); or ``mpp``: its microns per
            pixel (within 10 %).
        roi: ``[y, x, h, w]`` in level-0 pixels (default: the whole image).
        backend: slide reader (:func:`~scripts.data.slides.open_image`).
        region_size: core size in px (rounded down to a multiple of the window stride): the unit of post-processing.
        margin: context around each core for the post-processing, in px; more than the largest nucleus diameter.
        roi_size, overlap, sw_batch_size: sliding window of the network, on the whole image's grid
            (:class:`~scripts.inference.windows.WindowGrid`: each window runs once, whatever the regions).
        single_window: an image whose sides are all at most this many px (at the network's resolution) runs as one
            window, its sides rounded up to a multiple of 16 (a 1000 px tile: one 1008 px window instead of four
            768 px ones); 0: always ``roi_size`` windows.
        amp: bfloat16 autocast.
        compile: run the network through ``torch.compile`` (:meth:`~scripts.inference.predict.TilePredictor.compile`);
            ``"auto"``: once this engine has segmented :data:`COMPILE_MIN_PIXELS` px (a slide from its start, a
            folder of 1000 px tiles from its 50th), where the ~40 s of compilation pay off.
        flip_tta: flip test-time augmentation (:class:`~scripts.inference.predict.TilePredictor`; 4x the network).
        tissue: skip the background regions of slides (tiles are always processed whole).
        tissue_threshold: saturation threshold (``None``: Otsu on the thumbnail, clipped to [0.04, 0.15]).
        workers: post-processing threads running beside the network (0: inline).
        label_format: tile label maps as ``png`` (16-bit) or ``tif`` (uint32); slides always get a pyramidal TIFF.
        overlay_size: longest side of the overlay in px.
        tile_mpp: microns per pixel of tiles without a ``meta.csv`` ``mpp`` beside them (slides carry their own): areas
            in um^2, and resampling to ``model_mpp``.
        model_mpp: microns per pixel the network works at (``None``: process every image as it is). Slides are read at
            the level nearest it (unless ``level`` / ``mpp`` is given) and images more than 10 % off are resampled
            to it; ``region_size``, ``margin`` and ``roi_size`` are then pixels at ``model_mpp``.
        postprocessing: ``(np_logits, hv) -> (1, H, W)`` instances (default :class:`HoVerNetInstances` with the fixed
            normalisation ranges :data:`~transforms.MONUSEG_RANGES`, so that regions do not depend on each
            other's extremes; MONAI's per-input normalisation would make each region's markers differ).
        progress: show progress bars (the images bar on the main process only).
        overwrite: process every image again (default: skip the images recorded as done with all their outputs).
        datalist_key: the datalist section to read (default: ``testing``, ``training`` or ``validation``).
    """

    def __init__(
        self,
        network: torch.nn.Module | None,
        input: str | Path | None,
        output_dir: str | Path = "runs/inference",
        outputs: Sequence[str] = ("label", "geojson", "csv", "overlay"),
        level: int | None = None,
        mpp: float | None = None,
        roi: Sequence[int] | None = None,
        backend: str = "auto",
        region_size: int = 2048,
        margin: int = 64,
        roi_size: int = 768,
        overlap: float = 1 / 12,
        sw_batch_size: int = 1,
        single_window: int = 1024,
        amp: bool = False,
        compile: bool | str = False,
        flip_tta: bool = False,
        tissue: bool = True,
        tissue_threshold: float | None = None,
        workers: int = 1,
        label_format: str = "png",
        overlay_size: int = 4096,
        tile_mpp: float | None = None,
        model_mpp: float | None = None,
        postprocessing: Callable | None = None,
        progress: bool = True,
        overwrite: bool = False,
        datalist_key: str | None = None,
    ) -> None:
        self.network = network
        self.input, self.output_dir = input, Path(output_dir)
        self.outputs = tuple(outputs)
        output_paths(self.output_dir, "x", self.outputs, False, label_format)  # validates kinds and format
        self.level, self.mpp, self.roi, self.backend = level, mpp, roi, backend
        if int(region_size) < 1 or int(margin) < 0 or not 0 <= float(overlap) < 1 or int(workers) < 0:
            raise ValueError("need region_size >= 1, margin >= 0, 0 <= overlap < 1 and workers >= 0.")
        self.region_size, self.margin = int(region_size), int(margin)
        self.roi_size, self.overlap, self.sw_batch_size = int(roi_size), float(overlap), int(sw_batch_size)
        self._grid: WindowGrid | None = None
        self.single_window = int(single_window)
        self.compile = compile if compile == "auto" else as_bool(compile, "compile")
        self._pixels_seen = 0  # px of the images this engine has segmented (at the network's resolution)
        self.tissue, self.tissue_threshold = as_bool(tissue, "tissue"), tissue_threshold
        self.workers, self.label_format, self.overlay_size = int(workers), label_format, int(overlay_size)
        if model_mpp is not None and not float(model_mpp) > 0:
            raise ValueError(f"model_mpp must be a positive number of microns per pixel or null, got {model_mpp!r}.")
        self.tile_mpp, self.progress = tile_mpp, progress
        self.model_mpp = float(model_mpp) if model_mpp is not None else None
        self._told_unknown = False
        self.overwrite, self.datalist_key = as_bool(overwrite, "overwrite"), datalist_key
        self.postprocessing = postprocessing if postprocessing is not None else HoVerNetInstances(**MONUSEG_RANGES)
        self.predictor = (
            TilePredictor(
                network,
                roi_size=self.roi_size,
                sw_batch_size=sw_batch_size,
                overlap=self.overlap,
                amp=as_bool(amp, "amp"),
                flip_tta=as_bool(flip_tta, "flip_tta"),
            )
            if network is not None
            else None
        )

    def predict(self, image: np.ndarray, region: Region) -> dict[str, torch.Tensor]:
        """Network outputs (NP logits (2, h, w), HV maps (2, h, w)) of a region's box (``image``: its (h, w, 3) uint8
        pixels), from the windows of the whole image's grid (:class:`~scripts.inference.windows.WindowGrid`)."""
        return split_output(self._grid.outputs(region.box))

    def run(self) -> dict:
        """Process every image of ``input`` (this process's share under ``torchrun``) and return the summary of all
        of them, which the main process writes to ``output_dir/summary.json`` and ``summary.csv``.

        Images whose record says done, with all the requested outputs present, are skipped (unless ``overwrite``).
        An image that fails is logged and recorded as failed, and the others are processed; the first failure of
        this process is raised once the summary is written (so that the command exits non-zero).
        """
        if self.input in (None, ""):
            raise ValueError("no input: set `input` (e.g. --input slide.tif) to an image, folder, CSV or datalist.")
        paths = find_inputs(self.input, self.datalist_key)
        start = time.perf_counter()
        if distributed.is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.output_dir)
            remove_stale_temporaries(self.output_dir / RECORDS)
        todo = paths if self.overwrite else [p for p in paths if not self._complete(p)]
        distributed.barrier()  # every process has decided what is left before any record changes
        mine, many, failures = distributed.shard(todo), len(paths) > 1, []
        ranks = distributed.world_size()
        desc = "images" if ranks == 1 else f"images (rank 0 of {ranks})"
        show = self.progress and many and distributed.is_main_process()
        for path in tqdm(mine, desc=desc, unit="image", disable=not show, dynamic_ncols=True):
            error = self._process_and_record(path, progress=self.progress and not many)
            if error is not None:
                failures.append(error)
        distributed.barrier()  # every record is written
        summary = self._summary(paths, todo, time.perf_counter() - start)
        try:
            if distributed.is_main_process():
                self._write_summary(summary)
        finally:
            distributed.barrier()  # no process exits (raising) before the summary exists
        if failures:
            failures[0].add_note(
                f"{summary['failed']} of {len(paths)} image(s) failed: see {self.output_dir / 'summary.csv'}."
            )
            raise failures[0]
        return summary

    def _record(self, path: Path) -> Path:
        return self.output_dir / RECORDS / f"{path.stem}.json"

    def _read_record(self, path: Path) -> dict | None:
        try:
            record = json.loads(self._record(path).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _complete(self, path: Path) -> bool:
        """Whether ``path``'s record says done, for the same file, with every requested output present."""
        record = self._read_record(path)
        if record is None or record.get("status") != "done" or not record.get("input"):
            return False
        outputs = record.get("outputs") or {}
        return (
            Path(record["input"]).resolve() == path.resolve()
            and set(self.outputs) <= set(outputs)
            and all((self.output_dir / Path(f).name).is_file() for f in outputs.values())
        )

    def _process_and_record(self, path: Path, progress: bool) -> Exception | None:
        """Process one image and write its record (after its outputs); returns its error, if it failed."""
        record_path = self._record(path)
        record_path.unlink(missing_ok=True)  # a run killed while redoing the image must not find it done
        start, error = time.perf_counter(), None
        try:
            record = {"status": "done", **self.process(path, progress=progress)}
        except Exception as e:  # recorded; the other images go on, and run() raises it at the end
            logger.error(f"{path}: failed ({type(e).__name__}: {e})", exc_info=True)
            error = e
            record = {"input": str(path), "status": "failed", "error": f"{type(e).__name__}: {e}"}
            record["seconds"] = round(time.perf_counter() - start, 3)
        record.update(name=path.stem, rank=distributed.rank())
        with atomic_path(record_path) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")
        return error

    def _summary(self, paths: list[Path], todo: list[Path], seconds: float) -> dict:
        """Totals and the records of every image (``skipped`` ones from the run that did them)."""
        todo_set, images = set(todo), []
        for path in paths:
            record = self._read_record(path)
            if path not in todo_set:
                record = {**(record or {}), "status": "skipped"}
            elif record is None:
                error = "no record: its process stopped before finishing it"
                record = {"input": str(path), "name": path.stem, "status": "failed", "error": error}
            images.append(record)
        done = [r for r in images if r["status"] == "done"]
        megapixels = sum(r["megapixels"] for r in done)
        network_s, post_s = sum(r["network_s"] for r in done), sum(r["postprocess_s"] for r in done)
        return {
            "input": str(self.input),
            "images": images,
            **{status: sum(r["status"] == status for r in images) for status in ("done", "skipped", "failed")},
            "processes": distributed.world_size(),
            "nuclei": sum(r.get("nuclei", 0) for r in images if r["status"] != "failed"),
            "seconds": round(seconds, 3),
            "megapixels": round(megapixels, 3),
            "megapixels_per_s": round(megapixels / seconds, 4) if seconds else None,
            "regions_per_s": round(sum(r["regions"] for r in done) / seconds, 4) if seconds else None,
            "postprocess_share": round(post_s / (network_s + post_s), 3) if network_s + post_s else None,
        }

    def _write_summary(self, summary: dict) -> None:
        """``summary.json`` and ``summary.csv`` (one row per image, :data:`SUMMARY_COLUMNS`)."""
        with atomic_path(self.output_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
        with atomic_path(self.output_dir / "summary.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, SUMMARY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for r in summary["images"]:
                outputs = ";".join(str(v) for v in (r.get("outputs") or {}).values())
                writer.writerow({**r, "image": r.get("input"), "outputs": outputs})
        counts = f"{summary['done']} done, {summary['skipped']} skipped, {summary['failed']} failed"
        if summary["processes"] > 1:
            counts += f", {summary['processes']} processes"
        tqdm.write(
            f"{summary['nuclei']} nuclei in {len(summary['images'])} image(s) ({counts}), "
            f"{summary['megapixels']:.1f} Mpx processed in {summary['seconds']:.1f} s "
            f"({summary['megapixels_per_s']} Mpx/s, post-processing {summary['postprocess_share']} of the compute); "
            f"outputs in {self.output_dir}"
        )

    def __call__(self) -> dict:
        return self.run()

    def _roi(self, source: ImageSource) -> tuple[int, int, int, int]:
        height, width = source.shape
        if self.roi is None:
            return 0, 0, height, width
        if len(self.roi) != 4:
            raise ValueError(f"roi must be [y, x, h, w] in level-0 pixels, got {self.roi}.")
        ds = source.downsample
        y0, x0 = math.floor(self.roi[0] / ds), math.floor(self.roi[1] / ds)
        y1, x1 = math.ceil((self.roi[0] + self.roi[2]) / ds), math.ceil((self.roi[1] + self.roi[3]) / ds)
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
        if y1 <= y0 or x1 <= x0:
            h0, w0 = source.levels[0].shape
            raise ValueError(f"{source.path}: roi {list(self.roi)} lies outside the {h0}x{w0} (level 0) image.")
        return y0, x0, y1 - y0, x1 - x0

    def _writers(self, source: ImageSource, info: ImageInfo) -> dict[str, OutputWriter]:
        paths = output_paths(self.output_dir, source.name, self.outputs, source.is_slide, self.label_format)
        if "nifti" in paths and info.roi[2] * info.roi[3] > NIFTI_MAX_PIXELS:
            raise ValueError(
                f"{source.path}: a NIfTI label map of {info.roi[2]}x{info.roi[3]} px is built in memory; "
                f"use a roi of at most {NIFTI_MAX_PIXELS / 1e6:.0f} Mpx, or the pyramidal TIFF ('label')."
            )
        writers: dict[str, OutputWriter] = {}
        try:
            for kind, path in paths.items():
                if kind == "geojson":
                    writers[kind] = GeoJSONWriter(path, info)
                elif kind == "csv":
                    writers[kind] = CSVWriter(path, info)
                elif kind == "overlay":
                    writers[kind] = OverlayWriter(path, info, self.overlay_size)
                elif kind == "label" and source.is_slide:
                    writers[kind] = PyramidLabelWriter(path, info)
                else:
                    writers[kind] = LabelWriter(path, info)
        except BaseException:
            for writer in writers.values():
                writer.abort()
            raise
        return writers

    def process(
        self, path: str | Path | np.ndarray, progress: bool | None = None, sinks: dict[str, Any] | None = None
    ) -> dict:
        """Segment one image and write its outputs (all of them or, on any error, none).

        Args:
            path: an image file, or the ``(H, W, 3)`` pixels of a tile in memory (read by the rules of
                :func:`scripts.data.images.as_rgb8`; ``roi`` and ``level`` apply as to a one-level tile).
            progress: show a progress bar over the regions (default: the engine's ``progress``).
            sinks: in-memory receivers of the nuclei beside the file outputs, e.g.
                ``{"polygons": scripts.data.writers.PolygonCollector()}``; they are filled, not returned.
        """
        progress = self.progress if progress is None else progress
        start = time.perf_counter()
        if isinstance(path, np.ndarray):
            opened: ImageSource = ArraySource(Path("region"), as_rgb8(path, "the region's pixels"), self.tile_mpp)
        else:
            tile_mpp = tile_mpp_of(path)
            tile_mpp = self.tile_mpp if tile_mpp is None else tile_mpp
            opened = open_image(path, self.level, self.mpp, self.backend, tile_mpp, self.model_mpp)
        with opened as source:
            frame = self._frame(source)  # what the network sees: the level read, or it resampled to model_mpp
            factor = frame.scale if isinstance(frame, ResampledSource) else 1.0  # frame px per px of the level read
            roi = self._roi(source)
            frame_roi = self._roi(frame) if frame is not source else roi
            if min(frame_roi[2], frame_roi[3]) < MIN_IMAGE_SIDE:
                size = f"{frame_roi[2]}x{frame_roi[3]} px" + (f" at {frame.mpp} um/px" if factor != 1 else "")
                raise ValueError(
                    f"{source.path}: the image (or its roi) is {size} at level {source.level}, smaller "
                    f"than the {MIN_IMAGE_SIDE} px the segmenter needs."
                )
            window = max(self._window(frame.shape))
            regions = plan_regions(frame.shape, frame_roi, self.region_size, self.margin, window, self.overlap)
            thumbnail = None
            if source.is_slide and (self.tissue or "overlay" in self.outputs):
                thumbnail, scale = source.thumbnail()
            todo = regions
            threshold = None
            if source.is_slide and self.tissue:
                mask, threshold = tissue_mask(thumbnail, self.tissue_threshold)
                todo = [r for r in regions if _has_tissue(mask, scale / factor, r.core)]
                if not todo:
                    raise ValueError(
                        f"{source.path}: no tissue found (saturation threshold {threshold:.3f}) in the region of "
                        "interest; set tissue=false to process it anyway."
                    )
            info = ImageInfo(
                name=source.name,
                roi=roi,
                downsample=source.downsample,
                mpp=source.levels[0].mpp,
                level=source.level,
                is_slide=source.is_slide,
                thumbnail=thumbnail,
                extra={"level_shape": source.shape},
            )
            writers = {**self._writers(source, info), **(sinks or {})}
            try:
                stats = self._segment(frame, frame_roi, todo, writers, progress, factor)
                written = {kind: str(writer.commit()) for kind, writer in writers.items() if kind not in (sinks or {})}
                for sink in (sinks or {}).values():
                    sink.commit()
            except BaseException:
                for writer in writers.values():
                    writer.abort()
                raise
        seconds = time.perf_counter() - start
        megapixels = roi[2] * roi[3] / 1e6
        if stats["cut"]:
            logger.warning(
                f"{path}: {stats['cut']} nuclei touch a region's inner edge; raise `margin` (now {self.margin})."
            )
        return {
            "input": str(path) if not isinstance(path, np.ndarray) else None,
            "shape": list(source.shape),
            "level": source.level,
            "mpp": source.mpp,
            "model_mpp": self.model_mpp,
            "scale": round(factor, 6),
            "roi": list(roi),
            "regions": len(todo),
            "skipped_regions": len(regions) - len(todo),
            "tissue_threshold": threshold,
            "nuclei": stats["nuclei"],
            "seconds": round(seconds, 3),
            "megapixels": round(megapixels, 3),
            "windows": stats["windows"],
            "network_s": round(stats["network_s"], 3),
            "postprocess_s": round(stats["postprocess_s"], 3),
            "outputs": written,
        }

    def _window(self, shape: Sequence[int]) -> tuple[int, int]:
        """The network's window for an image of ``shape``: the image itself (sides rounded up to 16) when it fits in
        ``single_window``, else ``roi_size``."""
        if max(shape) <= self.single_window:
            return max(32, math.ceil(shape[0] / 16) * 16), max(32, math.ceil(shape[1] / 16) * 16)
        return self.roi_size, self.roi_size

    def _frame(self, source: ImageSource) -> ImageSource:
        """``source`` at ``model_mpp`` (:func:`~scripts.data.slides.at_mpp`); as it is when either resolution is
        unknown (said once per engine) or they agree within 10 %."""
        if self.model_mpp is not None and source.mpp is None and not self._told_unknown:
            logger.info(
                f"{source.path}: resolution unknown (and any later such image): processed as it is; the model works "
                f"at {self.model_mpp} um/px (give tile_mpp, or an mpp column in a meta.csv beside the tiles)."
            )
            self._told_unknown = True
        return at_mpp(source, self.model_mpp)

    def _segment(
        self,
        source: ImageSource,
        roi: tuple[int, int, int, int],
        regions: list[Region],
        writers: dict[str, OutputWriter],
        progress: bool,
        factor: float = 1.0,
    ) -> dict:
        """Segment the ``regions`` of ``source`` (the frame the network sees) and feed the writers; ``factor``: frame
        px per px of the level read, whose frame the label rasters and cores are moved back to."""
        polygons = any(writer.needs_polygons for writer in writers.values())
        raster = any(writer.needs_raster for writer in writers.values())
        keep_image = any(writer.needs_image for writer in writers.values())
        stats = {"nuclei": 0, "cut": 0, "network_s": 0.0, "postprocess_s": 0.0, "windows": 0}

        claims = SeamClaims(SEAM_BAND)
        if self.predictor is not None:
            self._pixels_seen += roi[2] * roi[3]
            if self.compile is True or (self.compile == "auto" and self._pixels_seen >= COMPILE_MIN_PIXELS):
                self.predictor.compile()
            self._grid = WindowGrid(
                source.read,
                source.shape,
                self._window(source.shape),
                self.overlap,
                self.predictor.forward,
                self.predictor.network_input,
                self.sw_batch_size,
            )
            self._grid.plan([region.box for region in regions])

        def post(
            image: np.ndarray, outputs: dict[str, torch.Tensor], region: Region, index: int
        ) -> tuple[Nuclei, int, float]:
            t = time.perf_counter()
            try:
                instances = self.postprocessing(outputs[_NP], outputs[_HV])[0]
            except BaseException:
                claims.abort()
                raise
            with claims.turn(index):  # regions settle their seams in plan order
                nuclei, cut = region_nuclei(
                    instances, image, region, source.downsample, roi, source.shape, polygons, raster, keep_image, claims
                )
            if factor != 1:
                to_level_read(nuclei, factor)
            return nuclei, cut, time.perf_counter() - t

        def consume(result: tuple[Nuclei, int, float]) -> None:
            nuclei, cut, seconds = result
            _offset_ids(nuclei, stats["nuclei"])
            for writer in writers.values():
                writer.add(nuclei)
            stats["nuclei"] += len(nuclei)
            stats["cut"] += cut
            stats["postprocess_s"] += seconds
            bar.set_postfix(nuclei=stats["nuclei"], refresh=False)

        def read(region: Region) -> np.ndarray:
            y0, x0, y1, x1 = region.box
            return source.read(y0, x0, y1 - y0, x1 - x0)

        show = progress and len(regions) > 1
        bar = tqdm(total=len(regions), desc=source.name, unit="tile", disable=not show, dynamic_ncols=True)
        pending: deque = deque()
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(max(self.workers, 1)) as pool:
            try:
                upcoming = reader.submit(read, regions[0]) if regions else None
                for i, region in enumerate(regions):
                    image = upcoming.result()
                    if i + 1 < len(regions):
                        upcoming = reader.submit(read, regions[i + 1])
                    t = time.perf_counter()
                    outputs = self.predict(image, region)
                    stats["network_s"] += time.perf_counter() - t
                    if self.workers == 0:
                        consume(post(image, outputs, region, i))
                    else:
                        pending.append(pool.submit(post, image, outputs, region, i))
                        while pending and (len(pending) > self.workers or pending[0].done()):
                            consume(pending.popleft().result())
                    bar.update(1)
                while pending:
                    consume(pending.popleft().result())
            except BaseException:
                claims.abort()
                for future in pending:
                    future.cancel()
                raise
            finally:
                bar.close()
        stats["windows"] = self._grid.windows_run if self.predictor is not None else 0
        return stats


def _has_tissue(mask: np.ndarray, scale: float, core: tuple[int, int, int, int]) -> bool:
    y0, x0, y1, x1 = core
    ty0, tx0 = int(y0 * scale), int(x0 * scale)
    ty1, tx1 = max(ty0 + 1, math.ceil(y1 * scale)), max(tx0 + 1, math.ceil(x1 * scale))
    return bool(mask[ty0:ty1, tx0:tx1].any())
