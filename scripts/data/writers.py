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
"""Streaming writers of nucleus instances: GeoJSON, CSV, instance label maps, overlay.

Each writer receives the nuclei of one region at a time (:class:`Nuclei`, global ids and coordinates) and writes
into a hidden temporary file beside its output (``.<name>.<random>.tmp``); :meth:`OutputWriter.commit` renames
it into place, :meth:`OutputWriter.abort` deletes it, so a failed or killed run never leaves a file that looks
complete. Memory stays bounded for slides: GeoJSON features and CSV rows go straight to disk, the slide label map
goes through an on-disk store of compressed fragments (:class:`TileStore`) that is assembled into a tiled pyramidal
TIFF at the end, and the overlay is a fixed-size downsampled canvas.

Coordinates: CSV ``y, x`` are level-0 pixel centres (the convention of the project's point files, so the CSV is a
valid point file); GeoJSON polygons use QuPath's pixel-corner convention (pixel ``i`` spans ``[i, i+1)``) in level-0
pixels. Label maps are at the resolution processed and cover the region of interest (``origin`` in the summary).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import uuid
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scripts.data.atomic import TMP_SUFFIX

__all__ = [
    "CSVWriter",
    "GeoJSONWriter",
    "LabelWriter",
    "Nuclei",
    "OutputWriter",
    "OverlayWriter",
    "PolygonCollector",
    "PyramidLabelWriter",
    "TileStore",
    "output_paths",
]

OUTPUT_KINDS = ("label", "geojson", "csv", "overlay", "nifti")
NUCLEUS_COLOUR = (0, 200, 0)
PNG_MAX_LABEL = 65535


@dataclass
class Nuclei:
    """The nuclei one region owns.

    Attributes:
        ids: (n,) global ids (1, 2, ...; the label map's values).
        centroids: (n, 2) level-0 ``(y, x)``, pixel centres.
        area_px: (n,) areas in level-0 pixels.
        hematoxylin, eosin: (n,) mean optical densities (colour deconvolution, Ruifrok-Johnston stains).
        polygons: n (k, 2) outlines as level-0 ``(x, y)`` in QuPath's pixel-corner convention (first = last), or
            ``None`` when no writer needs them.
        raster: (h, w) uint32 global ids of the owned nuclei (0 elsewhere) at the level read, or ``None``.
        origin: ``(y, x)`` of ``raster``'s corner, level pixels.
        core: ``(y0, x0, y1, x1)`` of the region's core, level pixels.
        image: the core's RGB pixels (for the overlay), or ``None``.
    """

    ids: np.ndarray
    centroids: np.ndarray
    area_px: np.ndarray
    hematoxylin: np.ndarray
    eosin: np.ndarray
    polygons: list[np.ndarray] | None = None
    raster: np.ndarray | None = None
    origin: tuple[int, int] = (0, 0)
    core: tuple[int, int, int, int] = (0, 0, 0, 0)
    image: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ImageInfo:
    """What the writers need to know about the image: its name, the processed ROI and the scales."""

    name: str
    roi: tuple[int, int, int, int]  # (y, x, h, w) at the level read
    downsample: float  # level-0 px per px of the level read
    mpp: float | None  # at level 0
    level: int = 0
    is_slide: bool = False
    thumbnail: np.ndarray | None = None  # the whole level, reduced (slides: the overlay's background)
    extra: dict = field(default_factory=dict)


def output_paths(output_dir: str | Path, name: str, outputs: Sequence[str], is_slide: bool, label_format: str) -> dict:
    """Output file of every requested kind, by kind."""
    unknown = sorted(set(outputs) - set(OUTPUT_KINDS))
    if unknown:
        raise ValueError(f"unknown outputs {unknown}; choose from {list(OUTPUT_KINDS)}.")
    if label_format not in ("png", "tif"):
        raise ValueError(f"label_format must be 'png' or 'tif', got '{label_format}'.")
    out = Path(output_dir)
    names = {
        "label": f"{name}_instances.{'tif' if is_slide else label_format}",
        "geojson": f"{name}_nuclei.geojson",
        "csv": f"{name}_nuclei.csv",
        "overlay": f"{name}_overlay.png",
        "nifti": f"{name}_instances.nii.gz",
    }
    return {kind: out / names[kind] for kind in OUTPUT_KINDS if kind in outputs}


class OutputWriter:
    """Writes into a hidden temporary file beside ``path``; ``commit`` renames it into place, ``abort`` deletes it.

    ``needs_polygons``, ``needs_raster``, ``needs_image``: what the writer reads of each region's :class:`Nuclei`
    (so that the inference computes only that).
    """

    needs_polygons = False
    needs_raster = False
    needs_image = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")

    def add(self, nuclei: Nuclei) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Complete ``self.tmp``."""

    def commit(self) -> Path:
        self.finish()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Release open files without completing them."""


def _measurements(nuclei: Nuclei, mpp: float | None) -> dict[str, np.ndarray]:
    area_um2 = nuclei.area_px * mpp**2 if mpp else None
    return {"area_um2": area_um2} if area_um2 is not None else {}


class GeoJSONWriter(OutputWriter):
    """A GeoJSON ``FeatureCollection`` of nucleus polygons that QuPath imports as detections (File > Import objects).

    Every feature: ``geometry`` Polygon (level-0 pixels, pixel corners), ``properties``: ``objectType`` detection,
    ``classification`` Nucleus, ``measurements``: ID, Area px^2, Area µm^2 (when the resolution is known), Centroid
    X/Y px (pixel corners, as QuPath shows them), Hematoxylin OD mean, Eosin OD mean.
    """

    needs_polygons = True

    def __init__(self, path: str | Path, info: ImageInfo, decimals: int = 2) -> None:
        super().__init__(path)
        self.info, self.decimals, self.count = info, decimals, 0
        self.file = open(self.tmp, "w", encoding="utf-8")
        self.file.write('{"type": "FeatureCollection", "features": [')

    def add(self, nuclei: Nuclei) -> None:
        extra = _measurements(nuclei, self.info.mpp)
        d = self.decimals
        for i in range(len(nuclei)):
            ring = np.round(nuclei.polygons[i], d).tolist()
            measurements = {
                "ID": int(nuclei.ids[i]),
                "Area px^2": round(float(nuclei.area_px[i]), d),
                "Centroid X px": round(float(nuclei.centroids[i, 1]) + 0.5, d),
                "Centroid Y px": round(float(nuclei.centroids[i, 0]) + 0.5, d),
                "Hematoxylin OD mean": round(float(nuclei.hematoxylin[i]), 4),
                "Eosin OD mean": round(float(nuclei.eosin[i]), 4),
            }
            if "area_um2" in extra:
                measurements["Area µm^2"] = round(float(extra["area_um2"][i]), 3)
            feature = {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": "Nucleus", "color": list(NUCLEUS_COLOUR)},
                    "measurements": measurements,
                },
            }
            self.file.write(("\n" if self.count == 0 else ",\n") + json.dumps(feature, ensure_ascii=False))
            self.count += 1

    def finish(self) -> None:
        self.file.write("\n]}\n")
        self.file.close()

    def close(self) -> None:
        self.file.close()


class CSVWriter(OutputWriter):
    """One row per nucleus: id, y, x (level-0 pixel centres), area_px, area_um2, hematoxylin_od, eosin_od."""

    columns = ("id", "y", "x", "area_px", "area_um2", "hematoxylin_od", "eosin_od")

    def __init__(self, path: str | Path, info: ImageInfo) -> None:
        super().__init__(path)
        self.info = info
        self.file = open(self.tmp, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.writer.writerow(self.columns)

    def add(self, nuclei: Nuclei) -> None:
        area_um2 = _measurements(nuclei, self.info.mpp).get("area_um2")
        for i in range(len(nuclei)):
            self.writer.writerow(
                (
                    int(nuclei.ids[i]),
                    f"{nuclei.centroids[i, 0]:.2f}",
                    f"{nuclei.centroids[i, 1]:.2f}",
                    f"{nuclei.area_px[i]:.1f}",
                    f"{area_um2[i]:.3f}" if area_um2 is not None else "",
                    f"{nuclei.hematoxylin[i]:.4f}",
                    f"{nuclei.eosin[i]:.4f}",
                )
            )

    def finish(self) -> None:
        self.file.close()

    def close(self) -> None:
        self.file.close()


def _paint(target: np.ndarray, raster: np.ndarray, y: int, x: int) -> None:
    """Copy the nonzero pixels of ``raster`` into ``target`` at ``(y, x)`` (clipped)."""
    h, w = target.shape
    ty0, tx0, ty1, tx1 = max(y, 0), max(x, 0), min(y + raster.shape[0], h), min(x + raster.shape[1], w)
    if ty0 >= ty1 or tx0 >= tx1:
        return
    src = raster[ty0 - y : ty1 - y, tx0 - x : tx1 - x]
    np.copyto(target[ty0:ty1, tx0:tx1], src, where=src > 0)


class LabelWriter(OutputWriter):
    """The ROI's instance map in memory (tiles, small slide regions), written as 16-bit PNG, uint32 TIFF or NIfTI.

    The NIfTI holds the map as MONAI's default image readers orient 2-D images (first axis x), with the pixel
    spacing in mm when the resolution is known, so ``LoadImage()`` of the tile and of the NIfTI align.
    """

    needs_raster = True

    def __init__(self, path: str | Path, info: ImageInfo) -> None:
        super().__init__(path)
        self.info = info
        self.format = "nifti" if self.path.name.endswith(".nii.gz") else self.path.suffix.lower().lstrip(".")
        self.label = np.zeros(info.roi[2:], dtype=np.uint32)

    def add(self, nuclei: Nuclei) -> None:
        if nuclei.raster is not None:
            _paint(self.label, nuclei.raster, nuclei.origin[0] - self.info.roi[0], nuclei.origin[1] - self.info.roi[1])

    def finish(self) -> None:
        from PIL import Image

        if self.format == "png":
            if self.label.max(initial=0) > PNG_MAX_LABEL:
                raise ValueError(
                    f"{self.path}: {self.label.max()} nuclei do not fit a 16-bit PNG; use label_format='tif'."
                )
            Image.fromarray(self.label.astype(np.uint16)).save(self.tmp, format="PNG")
        elif self.format == "tif":
            import tifffile

            tifffile.imwrite(self.tmp, self.label, compression="zlib", photometric="minisblack", metadata=None)
        else:
            import gzip

            import nibabel as nib

            spacing = self.info.mpp * self.info.downsample * 1e-3 if self.info.mpp else 1.0
            affine = np.diag([spacing, spacing, 1.0, 1.0])
            image = nib.Nifti1Image(np.ascontiguousarray(self.label.T), affine)
            with gzip.open(self.tmp, "wb", compresslevel=6) as f:
                f.write(image.to_bytes())


class TileStore:
    """A label map on disk as zlib-compressed fragments per output tile, assembled tile by tile.

    ``add`` splits a raster along the tile grid and appends its nonzero fragments to an anonymous temporary file in
    ``folder`` (deleted by the system even if the process dies); ``tile`` paints a tile's fragments in order. Memory:
    the fragment index only.
    """

    def __init__(self, shape: Sequence[int], tile: int, folder: str | Path) -> None:
        self.shape, self.tile = (int(shape[0]), int(shape[1])), int(tile)
        self.grid = (math.ceil(self.shape[0] / tile), math.ceil(self.shape[1] / tile))
        self.file = tempfile.TemporaryFile(dir=folder, prefix=".tilestore", suffix=TMP_SUFFIX)
        self.index: dict[tuple[int, int], list[tuple[int, int, int, int, int, int]]] = defaultdict(list)
        self.end = 0

    def add(self, y: int, x: int, raster: np.ndarray) -> None:
        t = self.tile
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + raster.shape[0], self.shape[0]), min(x + raster.shape[1], self.shape[1])
        for ty in range(y0 // t, (y1 - 1) // t + 1 if y1 > y0 else 0):
            for tx in range(x0 // t, (x1 - 1) // t + 1 if x1 > x0 else 0):
                fy0, fx0 = max(y0, ty * t), max(x0, tx * t)
                fy1, fx1 = min(y1, (ty + 1) * t), min(x1, (tx + 1) * t)
                fragment = raster[fy0 - y : fy1 - y, fx0 - x : fx1 - x]
                if not fragment.any():
                    continue
                data = zlib.compress(np.ascontiguousarray(fragment, dtype=np.uint32).tobytes(), 1)
                self.file.seek(self.end)
                self.file.write(data)
                self.index[(ty, tx)].append((self.end, len(data), fy0 - ty * t, fx0 - tx * t, fy1 - fy0, fx1 - fx0))
                self.end += len(data)

    def read_tile(self, ty: int, tx: int) -> np.ndarray:
        """The (tile, tile) uint32 tile ``(ty, tx)`` (zero beyond the map)."""
        out = np.zeros((self.tile, self.tile), dtype=np.uint32)
        for offset, size, y, x, h, w in self.index.get((ty, tx), ()):
            self.file.seek(offset)
            fragment = np.frombuffer(zlib.decompress(self.file.read(size)), dtype=np.uint32).reshape(h, w)
            np.copyto(out[y : y + h, x : x + w], fragment, where=fragment > 0)
        return out

    def close(self) -> None:
        self.file.close()


class PyramidLabelWriter(OutputWriter):
    """A slide's instance map as a tiled, zlib-compressed, pyramidal uint32 TIFF (levels halve until one tile).

    Levels are top-level pages (reduced-resolution ones flagged as such), as in SVS files, so tifffile and MONAI's
    ``WSIReader`` see every level. Fragments go to a :class:`TileStore` while the slide is processed; each level is
    streamed into the TIFF in tile order and feeds the next level's store.
    """

    needs_raster = True

    def __init__(self, path: str | Path, info: ImageInfo, tile: int = 256) -> None:
        super().__init__(path)
        self.info, self.tile = info, tile
        self.store = TileStore(info.roi[2:], tile, self.path.parent)

    def add(self, nuclei: Nuclei) -> None:
        if nuclei.raster is not None:
            y, x = nuclei.origin[0] - self.info.roi[0], nuclei.origin[1] - self.info.roi[1]
            self.store.add(y, x, nuclei.raster)

    def finish(self) -> None:
        import tifffile

        description = json.dumps(
            {
                "content": "nucleus instance labels",
                "origin_yx": list(self.info.roi[:2]),
                "level": self.info.level,
                "downsample": self.info.downsample,
            }
        )
        store, scale = self.store, 1
        with tifffile.TiffWriter(self.tmp, bigtiff=True) as tif:
            while True:
                last = max(store.shape) <= self.tile
                following = (
                    None if last else TileStore([math.ceil(s / 2) for s in store.shape], self.tile, self.path.parent)
                )
                kwargs = {}
                if self.info.mpp:
                    per_cm = 1e4 / (self.info.mpp * self.info.downsample * scale)
                    kwargs = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
                tif.write(
                    _pyramid_tiles(store, following),
                    shape=store.shape,
                    dtype=np.uint32,
                    tile=(self.tile, self.tile),
                    compression="zlib",
                    photometric="minisblack",
                    subfiletype=0 if scale == 1 else 1,
                    description=description if scale == 1 else None,
                    metadata=None,
                    **kwargs,
                )
                store.close()
                if following is None:
                    break
                store, scale = following, scale * 2
        self.store = store

    def close(self) -> None:
        self.store.close()


def _pyramid_tiles(store: TileStore, following: TileStore | None):
    half = store.tile // 2
    for ty in range(store.grid[0]):
        for tx in range(store.grid[1]):
            tile = store.read_tile(ty, tx)
            if following is not None:
                following.add(ty * half, tx * half, tile[::2, ::2])
            yield tile


class OverlayWriter(OutputWriter):
    """The image with nucleus outlines in green, downsampled to at most ``max_side`` px (PNG).

    Slides start from their thumbnail, so skipped background shows too; processed cores are pasted at the overlay's
    resolution and outlines are drawn on a separate mask, composited at the end.
    """

    needs_polygons = True
    needs_image = True

    def __init__(self, path: str | Path, info: ImageInfo, max_side: int = 4096) -> None:
        from PIL import Image

        super().__init__(path)
        self.info = info
        h, w = info.roi[2:]
        self.scale = min(1.0, max_side / max(h, w))
        self.size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))  # PIL (width, height)
        self.canvas = Image.new("RGB", self.size, "white")
        if info.thumbnail is not None:
            self._paste_thumbnail(info.thumbnail)
        self.outline = Image.new("L", self.size, 0)

    def _paste_thumbnail(self, thumbnail: np.ndarray) -> None:
        from PIL import Image

        roi_y, roi_x, h, w = self.info.roi
        th, tw = thumbnail.shape[:2]
        full_h, full_w = self.info.extra.get("level_shape", (h, w))
        sy, sx = th / full_h, tw / full_w
        box = (roi_x * sx, roi_y * sy, (roi_x + w) * sx, (roi_y + h) * sy)
        self.canvas.paste(Image.fromarray(thumbnail).resize(self.size, Image.Resampling.BILINEAR, box=box))

    def _to_canvas(self, y: float, x: float) -> tuple[int, int]:
        return round((y - self.info.roi[0]) * self.scale), round((x - self.info.roi[1]) * self.scale)

    def add(self, nuclei: Nuclei) -> None:
        from PIL import Image, ImageDraw

        if nuclei.image is not None:
            y0, x0, y1, x1 = nuclei.core
            (cy0, cx0), (cy1, cx1) = self._to_canvas(y0, x0), self._to_canvas(y1, x1)
            if cy1 > cy0 and cx1 > cx0:
                piece = Image.fromarray(nuclei.image)
                if piece.size != (cx1 - cx0, cy1 - cy0):
                    piece = piece.resize((cx1 - cx0, cy1 - cy0), Image.Resampling.BOX)
                self.canvas.paste(piece, (cx0, cy0))
        if nuclei.polygons:
            draw = ImageDraw.Draw(self.outline)
            factor = self.scale / self.info.downsample
            oy, ox = self.info.roi[0] * self.scale, self.info.roi[1] * self.scale
            for ring in nuclei.polygons:
                points = ring * factor - [ox + 0.5, oy + 0.5]
                draw.line([tuple(p) for p in points.tolist()], fill=255, width=1)

    def finish(self) -> None:
        from PIL import Image

        self.canvas.paste(Image.new("RGB", self.size, NUCLEUS_COLOUR), mask=self.outline)
        self.canvas.save(self.tmp, format="PNG")


class PolygonCollector:
    """Nucleus outlines kept in memory instead of a file (an in-process caller such as the MONAI Label app): one
    open ``(k, 2)`` ring per nucleus (the closing vertex dropped), level-0 ``(x, y)`` pixel corners as in the GeoJSON,
    in id order. Has the writers' ``add`` / ``commit`` / ``abort``; ``commit`` returns the rings."""

    needs_polygons = True
    needs_raster = False
    needs_image = False

    def __init__(self) -> None:
        self.polygons: list[np.ndarray] = []

    def add(self, nuclei: Nuclei) -> None:
        for ring in nuclei.polygons or []:
            closed = len(ring) > 1 and np.array_equal(ring[0], ring[-1])
            self.polygons.append(np.asarray(ring[:-1] if closed else ring, dtype=np.float64))

    def commit(self) -> list[np.ndarray]:
        return self.polygons

    def abort(self) -> None:
        self.polygons = []
