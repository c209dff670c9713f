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
"""Reading nucleus point annotations from the file formats users have.

Every reader returns an ``(N, 2)`` float32 array of pixel coordinates in ``(y, x)`` order, pixel
centres at integer coordinates (the convention of ``skimage.measure.regionprops`` centroids).

Supported formats (chosen by file extension):

- ``.csv`` / ``.tsv`` / ``.txt``: a header naming the columns ``y`` and ``x`` (any order, any further
  columns, comma, semicolon or tab separated). QuPath's "Export points" TSV (``x y class name``) is read;
  tables are taken as pixel-centre coordinates (QuPath's pixel-corner values are then 0.5 px off).
- ``.json``: a list of ``[y, x]`` pairs, a list of ``{"y": .., "x": ..}`` objects, or an object with such a
  list under ``"points"``; a JSON file holding GeoJSON is read as GeoJSON.
- ``.geojson``: a GeoJSON ``FeatureCollection``/``Feature``/geometry, e.g. a QuPath point annotation
  export. ``Point``/``MultiPoint`` give points, ``Polygon``/``MultiPolygon`` give their area centroids.
  GeoJSON uses QuPath's pixel-corner convention (pixel ``i`` spans ``[i, i+1)``), so 0.5 is subtracted.
- ``.npy``: an ``(N, 2)`` array in ``(y, x)`` order.
- ``.png`` / ``.tif`` / ``.tiff`` / ``.bmp``: a point map. A binary map gives one point per connected
  blob (its centroid); a label map (several distinct values) gives one point per label.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["PointsFileError", "read_points", "find_point_problems", "points_inside", "POINT_FILE_SUFFIXES"]

POINT_FILE_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".geojson", ".npy", ".png", ".tif", ".tiff", ".bmp")
_GEOJSON_TYPES = {
    "FeatureCollection",
    "Feature",
    "Point",
    "MultiPoint",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
}


def points_inside(points: np.ndarray, spatial_size: Sequence[int]) -> np.ndarray:
    """Boolean mask of the ``(y, x)`` points lying in a pixel of an image of ``spatial_size``
    (``-0.5 <= y < H - 0.5`` and likewise for ``x``)."""
    h, w = (int(s) for s in spatial_size)
    y, x = points[:, 0], points[:, 1]
    return (y >= -0.5) & (y < h - 0.5) & (x >= -0.5) & (x < w - 0.5)


class PointsFileError(ValueError):
    """A point file that cannot be read; the message names the file and the problem."""


def read_points(path: str | Path) -> np.ndarray:
    """Read a point file and return an ``(N, 2)`` float32 array of ``(y, x)`` pixel coordinates.

    Raises:
        PointsFileError: missing or unreadable file, unknown format, missing columns, non-numeric or
            non-finite values. Points outside an image are checked by :func:`find_point_problems`.
    """
    path = Path(path)
    if not path.is_file():
        raise PointsFileError(f"{path}: point file not found")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv", ".txt"):
        points = _read_table(path)
    elif suffix in (".json", ".geojson"):
        points = _read_json(path)
    elif suffix == ".npy":
        points = _read_npy(path)
    elif suffix in (".png", ".tif", ".tiff", ".bmp"):
        points = _read_point_map(path)
    else:
        raise PointsFileError(f"{path}: unknown point file format '{suffix}' (expected one of {POINT_FILE_SUFFIXES})")
    bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if bad.size:
        raise PointsFileError(f"{path}: {bad.size} point(s) with NaN or infinite coordinates (point index {bad[0]})")
    return points.astype(np.float32, copy=False).reshape(-1, 2)


def find_point_problems(
    points: np.ndarray, spatial_size: Sequence[int] | None = None, duplicate_distance: float | None = 0.5
) -> list[str]:
    """Describe what is wrong with a set of ``(y, x)`` points; an empty list means nothing.

    Checks: non-finite values, points outside an image of ``spatial_size`` (a point must lie in one of its
    pixels: ``-0.5 <= y < H - 0.5``), and points closer than ``duplicate_distance`` pixels to an earlier one
    (``None``: not checked).
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    problems = []
    finite = np.isfinite(points).all(axis=1)
    if not finite.all():
        problems.append(
            f"{int((~finite).sum())} point(s) with NaN or infinite coordinates (first: index {np.argmin(finite)})"
        )
    index = np.flatnonzero(finite)  # report indices into the caller's array
    points = points[finite]
    if spatial_size is not None:
        h, w = (int(s) for s in spatial_size)
        outside = ~points_inside(points, (h, w))
        if outside.any():
            first = points[np.argmax(outside)]
            problems.append(
                f"{int(outside.sum())} point(s) outside the {h}x{w} image "
                f"(first: y={first[0]:.1f}, x={first[1]:.1f}; points are (y, x) pixel coordinates)"
            )
    if len(points) > 1 and duplicate_distance is not None:
        from scipy.spatial import cKDTree

        pairs = cKDTree(points).query_pairs(duplicate_distance, output_type="ndarray")
        if len(pairs):
            i, j = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))[0]]
            problems.append(
                f"{len(pairs)} duplicate point pair(s) closer than {duplicate_distance} px "
                f"(first: index {index[i]} and {index[j]} at y={points[i, 0]:.1f}, x={points[i, 1]:.1f})"
            )
    return problems


def _read_table(path: Path) -> np.ndarray:
    text = _read_text(path)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise PointsFileError(f"{path}: empty file; expected a header line naming the columns 'y' and 'x'")
    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [h.strip().lower() for h in rows[0]]
    if "y" not in header or "x" not in header:
        raise PointsFileError(
            f"{path}: line 1: header {rows[0]} does not name the columns 'y' and 'x' "
            "(a header is required so that the coordinate order is never guessed)"
        )
    iy, ix = header.index("y"), header.index("x")
    points = np.empty((len(rows) - 1, 2), dtype=np.float64)
    n = 0
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            points[n] = float(row[iy]), float(row[ix])
        except (ValueError, IndexError):
            raise PointsFileError(f"{path}: line {line_no}: cannot read numbers y, x from {row}") from None
        if not math.isfinite(points[n, 0]) or not math.isfinite(points[n, 1]):
            raise PointsFileError(f"{path}: line {line_no}: non-finite coordinate in {row}")
        n += 1
    return points[:n]


def _read_json(path: Path) -> np.ndarray:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise PointsFileError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and data.get("type") in _GEOJSON_TYPES:
        return _geojson_points(data, path) - 0.5
    if isinstance(data, dict):
        if "points" not in data:
            raise PointsFileError(f"{path}: JSON object has no 'points' list and is not GeoJSON")
        data = data["points"]
    if not isinstance(data, list):
        raise PointsFileError(f"{path}: expected a JSON list of [y, x] pairs or {{'y', 'x'}} objects")
    points = np.empty((len(data), 2), dtype=np.float64)
    for i, item in enumerate(data):
        try:
            if isinstance(item, dict):
                points[i] = float(item["y"]), float(item["x"])
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                points[i] = float(item[0]), float(item[1])
            else:
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise PointsFileError(f"{path}: item {i}: expected [y, x] or {{'y': .., 'x': ..}}, got {item!r}") from None
    return points


def _geojson_points(obj: dict, path: Path) -> np.ndarray:
    """Collect ``(y, x)`` points (QuPath pixel-corner convention) from any GeoJSON object."""
    kind = obj.get("type")
    if kind == "FeatureCollection":
        parts = [_geojson_points(f, path) for f in obj.get("features", [])]
    elif kind == "Feature":
        geometry = obj.get("geometry")
        parts = [] if geometry is None else [_geojson_points(geometry, path)]
    elif kind == "GeometryCollection":
        parts = [_geojson_points(g, path) for g in obj.get("geometries", [])]
    else:
        coords = obj.get("coordinates")
        try:
            if kind == "Point":
                parts = [np.asarray([coords[:2]], dtype=np.float64)]
            elif kind == "MultiPoint":
                parts = [np.asarray([c[:2] for c in coords], dtype=np.float64).reshape(-1, 2)]
            elif kind == "Polygon":
                parts = [_polygon_centroid(np.asarray(coords[0], dtype=np.float64)[:, :2])]
            elif kind == "MultiPolygon":
                parts = [_polygon_centroid(np.asarray(p[0], dtype=np.float64)[:, :2]) for p in coords]
            else:
                raise PointsFileError(f"{path}: unsupported GeoJSON geometry type {kind!r}")
        except (TypeError, ValueError, IndexError):
            raise PointsFileError(f"{path}: malformed coordinates in GeoJSON {kind}") from None
        parts = [p[:, ::-1] for p in parts]  # GeoJSON is (x, y)
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, 2))


def _polygon_centroid(ring: np.ndarray) -> np.ndarray:
    """Area centroid ``(x, y)`` of a polygon ring (shoelace formula), the vertex mean if degenerate."""
    x, y = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x, -1), np.roll(y, -1)
    cross = x * y1 - x1 * y
    area = cross.sum() / 2
    if abs(area) < 1e-9:
        return ring.mean(axis=0, keepdims=True)
    return np.array([[((x + x1) * cross).sum() / (6 * area), ((y + y1) * cross).sum() / (6 * area)]])


def _read_npy(path: Path) -> np.ndarray:
    try:
        points = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise PointsFileError(f"{path}: cannot read .npy file ({e})") from None
    if points.ndim != 2 or points.shape[1] != 2 or not np.issubdtype(points.dtype, np.number):
        raise PointsFileError(f"{path}: expected a numeric (N, 2) array of (y, x), got {points.dtype} {points.shape}")
    return points.astype(np.float64)


def _read_point_map(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    from scipy import ndimage

    try:
        with Image.open(path) as im:
            point_map = np.asarray(im)
    except (UnidentifiedImageError, OSError) as e:
        raise PointsFileError(f"{path}: cannot read point map image ({e})") from None
    if point_map.ndim == 3:
        point_map = point_map.max(axis=-1)
    values = np.unique(point_map)
    values = values[values != 0]
    if values.size > 1:  # a label map: one point per label
        labels, index = point_map.astype(np.int64), values
    else:  # a binary map: one point per 8-connected blob
        labels, n = ndimage.label(point_map != 0, structure=np.ones((3, 3)))
        index = np.arange(1, n + 1)
    if index.size == 0:
        return np.zeros((0, 2))
    return np.asarray(ndimage.center_of_mass(np.ones_like(labels), labels, index), dtype=np.float64).reshape(-1, 2)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PointsFileError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise PointsFileError(f"{path}: cannot read file ({e})") from None
