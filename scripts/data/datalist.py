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
"""Turn a folder of H&E tiles and nucleus point files into a MONAI datalist JSON.

``python -m scripts prepare --images DIR --points DIR [--labels DIR] [--split split.json] --output datalist.json``

Images, point files (any format :func:`transforms.points_io.read_points` reads) and optional instance labels
are matched by file stem: ``images/A.png`` <-> ``points/A.csv`` (or ``A.geojson``, ...) <-> ``labels/A.png``.
The points folder may be the images folder. Every file is checked, reading image headers only, and every
problem is reported at once as ``file: reason``; the datalist is written (atomically) only when there is none,
or, with ``--nostrict``, with the valid tiles only. Paths in the datalist are relative to its folder, so
``monai.data.load_decathlon_datalist(path)`` resolves them wherever the tree is moved.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from scripts.data.atomic import atomic_path
from scripts.data.images import IMAGE_SUFFIXES, read_image, read_label
from transforms.points_io import POINT_FILE_SUFFIXES, PointsFileError, find_point_problems, read_points

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_SUFFIXES",
    "PrepareError",
    "ImageInfo",
    "read_image_info",
    "build_datalist",
    "write_datalist",
]

LABEL_SUFFIXES = (".png", ".tif", ".tiff")
_SECTIONS = {"training": ("train", "training"), "validation": ("val", "validation")}
# PIL mode -> (channels, numpy dtype)
_PIL_MODES = {
    "1": (1, "bool"),
    "L": (1, "uint8"),
    "P": (1, "uint8"),
    "LA": (2, "uint8"),
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "CMYK": (4, "uint8"),
    "YCbCr": (3, "uint8"),
    "I": (1, "int32"),
    "F": (1, "float32"),
    "I;16": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I;16N": (1, "uint16"),
}


class PrepareError(ValueError):
    """Problems found in the input files; ``problems`` lists them, one ``file: reason`` string each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) found, no datalist written:\n{lines}")


class ImageInfo(NamedTuple):
    """What an image header says: ``size`` is ``(H, W)``; ``dtype`` a numpy dtype name."""

    size: tuple[int, int]
    channels: int
    dtype: str
    frames: int = 1
    palette: bool = False
    description: str = ""


@dataclass(frozen=True)
class _Folders:
    images: Path
    points: Path
    labels: Path | None


def read_image_info(path: str | Path) -> ImageInfo:
    """Read the size, channels and dtype of an image from its header, without decoding the pixels.

    PIL opens the file and, for PNG, verifies every chunk checksum (so a truncated or corrupted PNG is caught);
    TIFFs that PIL cannot open are read with ``tifffile``.

    Raises:
        ValueError: the file cannot be read as an image.
    """
    path = Path(path)
    try:
        return _pil_info(path)
    except Exception as e:  # PIL raises many exception types on corrupt files
        error = e
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            return _tiff_info(path)
        except Exception:
            pass
    raise ValueError(f"cannot read the image ({type(error).__name__}: {error})")


def _pil_info(path: Path) -> ImageInfo:
    with Image.open(path) as im:
        mode, (width, height), frames, fmt = im.mode, im.size, getattr(im, "n_frames", 1), im.format
        im.verify()
    if mode not in _PIL_MODES:
        raise ValueError(f"unsupported PIL mode {mode!r}")
    channels, dtype = _PIL_MODES[mode]
    return ImageInfo((height, width), channels, dtype, frames, mode == "P", f"{fmt} mode {mode} {height}x{width}")


def _tiff_info(path: Path) -> ImageInfo:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype).name
    sizes = dict(zip(axes, shape, strict=True))
    height, width = sizes.pop("Y"), sizes.pop("X")
    channels = sizes.pop("S", 1)
    return ImageInfo(
        (height, width),
        channels,
        dtype,
        int(np.prod(list(sizes.values()), dtype=np.int64)),
        False,
        f"TIFF {dtype} shape {shape} axes {axes}",
    )


def build_datalist(
    images: str | Path,
    points: str | Path | None = None,
    labels: str | Path | None = None,
    base_dir: str | Path = ".",
    split: str | Path | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[dict, list[str]]:
    """Check every file and build a datalist of the valid tiles; nothing is written.

    Args:
        images: folder of images (``.png``, ``.tif``, ``.jpg``, ...).
        points: folder of point files matched to the images by stem; may be ``images``.
        labels: optional folder of integer instance label maps (``.png``, ``.tif``) matched by stem.
        base_dir: the folder the datalist's paths are made relative to (the datalist file's folder).
        split: optional JSON file ``{"train": [stems], "val": [stems]}``.
        val_fraction: without ``split``, the fraction of tiles drawn (with ``seed``) for validation.
        seed: seed of that random draw.

    Returns:
        ``(datalist, problems)``: the datalist ``{"training": [...], "validation": [...], "metadata": {...}}``
        holds only the tiles without problems; ``problems`` lists every problem as ``file: reason``.
        Tiles without points are kept and reported in ``metadata["warnings"]``, as are images that the reader
        converts (grayscale, alpha, 16 bit: :mod:`scripts.data.images`).
    """
    problems = _argument_problems(images, points, labels, split, val_fraction)
    if problems:
        return {"training": [], "validation": [], "metadata": {}}, problems
    folders = _Folders(Path(str(images)), Path(str(points)), None if labels is None else Path(str(labels)))
    image_files = _files_by_stem(folders.images, IMAGE_SUFFIXES)
    label_files = _files_by_stem(folders.labels, LABEL_SUFFIXES) if folders.labels else {}
    taken = {p.resolve() for files in (*image_files.values(), *label_files.values()) for p in files}
    point_files = _files_by_stem(folders.points, POINT_FILE_SUFFIXES, exclude=taken)
    if not image_files:
        problems.append(f"{folders.images}: no image files ({', '.join(IMAGE_SUFFIXES)})")

    entries, n_points, bad, notes = {}, {}, set(), []
    for stem in sorted(image_files.keys() | point_files.keys() | label_files.keys()):
        files = (image_files.get(stem, []), point_files.get(stem, []), label_files.get(stem, []))
        entry, count, stem_problems = _check_tile(stem, *files, folders, notes)
        problems += stem_problems
        if stem_problems or entry is None:
            bad.add(stem)
            continue
        entries[stem], n_points[stem] = entry, count

    if split is not None:
        sections, split_problems = _sections_from_file(Path(str(split)), image_files, folders.images)
    else:
        sections, split_problems = _random_sections(sorted(image_files), val_fraction, seed), []
    problems += split_problems
    bad |= {stem for stem in image_files if stem not in sections}

    datalist: dict = {"training": [], "validation": []}
    for stem, entry in entries.items():
        if stem not in bad:
            datalist[sections[stem]].append({k: _relative(v, base_dir) for k, v in entry.items()} | {"name": stem})
    empty = sorted(stem for stem in entries if stem not in bad and n_points[stem] == 0)
    metadata = {
        "description": "point-annotated nucleus tiles, made by `python -m scripts prepare`",
        **{k: None if v is None else _relative(v, base_dir) for k, v in vars(folders).items()},
        "split": None if split is None else _relative(split, base_dir),
        "val_fraction": val_fraction,
        "seed": seed,
        **{f"num_{k}": len(v) for k, v in datalist.items()},
        **{f"num_points_{k}": sum(n_points[item["name"]] for item in v) for k, v in datalist.items()},
        "tiles_without_points": empty,
        "warnings": [f"{entries[s]['points']}: no points (kept: a tile without nuclei is legitimate)" for s in empty]
        + notes,
    }
    return datalist | {"metadata": metadata}, problems


def write_datalist(
    images: str | Path,
    points: str | Path | None = None,
    labels: str | Path | None = None,
    output: str | Path = "datalist.json",
    split: str | Path | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    strict: bool = True,
) -> dict:
    """Check the files, then write the datalist JSON atomically and return it (see :func:`build_datalist`).

    Raises:
        PrepareError: listing every problem, when there is any and ``strict``, or when no tile is valid.
            Nothing is written then. Without ``strict`` the valid tiles are written and the problems are
            recorded in ``metadata["skipped"]``.
    """
    output = Path(str(output))
    datalist, problems = build_datalist(images, points, labels, output.parent, split, val_fraction, seed)
    if output.is_dir():
        fatal = [f"{output}: is a folder; give the datalist file's path, e.g. {output / 'datalist.json'}"]
        raise PrepareError(fatal + problems)
    if problems and (strict or not (datalist["training"] or datalist["validation"])):
        raise PrepareError(problems)
    if problems:
        datalist["metadata"]["skipped"] = problems
    try:
        _write_json_atomic(output, datalist)
    except OSError as e:
        raise PrepareError([f"{output}: cannot write the datalist ({e})"]) from None
    return datalist


def _argument_problems(images, points, labels, split, val_fraction) -> list[str]:
    problems = []
    if points is None:
        problems.append("--points: missing; give the folder of point files (it may be the images folder)")
    for flag, folder in (("--images", images), ("--points", points), ("--labels", labels)):
        if folder is not None and not Path(str(folder)).is_dir():
            problems.append(f"{folder}: {flag} folder not found")
    if labels is not None and images is not None and Path(str(labels)).resolve() == Path(str(images)).resolve():
        problems.append(f"{labels}: --labels must be a folder other than --images (files are matched by stem)")
    if split is not None and not Path(str(split)).is_file():
        problems.append(f"{split}: --split file not found")
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        problems.append(f"--val_fraction: {val_fraction!r} is not a number in [0, 1)")
    elif split is not None and val_fraction > 0:
        problems.append("--val_fraction: give either --split or --val_fraction, not both")
    return problems


def _files_by_stem(folder: Path, suffixes: Sequence[str], exclude: Container[Path] = ()) -> dict[str, list[Path]]:
    """Map stem -> files in ``folder`` (not its subfolders) whose suffix is in ``suffixes``; hidden files skipped."""
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.resolve() not in exclude:
            found.setdefault(path.stem, []).append(path)
    return found


def _check_tile(
    stem: str, images: list[Path], points: list[Path], labels: list[Path], folders: _Folders, notes: list[str]
) -> tuple[dict[str, Path] | None, int, list[str]]:
    """Check one tile's files; return its entry (``None`` without an image), its point count and its problems;
    append to ``notes`` what the image reader converts."""
    problems = [
        f"{files[0]}: {len(files)} {kind} files share the stem '{stem}' ({', '.join(f.name for f in files)}); keep one"
        for kind, files in (("image", images), ("point", points), ("label", labels))
        if len(files) > 1
    ]
    if not images:
        orphans = [*points[:1], *labels[:1]]
        problems += [f"{f}: no image named '{stem}.*' in {folders.images}" for f in orphans]
        return None, 0, problems
    entry = {"image": images[0]}
    size = _check_image(images[0], problems, notes)
    count = 0
    if not points:
        problems.append(f"{images[0]}: no point file named '{stem}.*' in {folders.points}")
    else:
        entry["points"] = points[0]
        count = _check_points(points[0], size, problems)
    if folders.labels is not None:
        if not labels:
            problems.append(f"{images[0]}: no label named '{stem}.*' ({', '.join(LABEL_SUFFIXES)}) in {folders.labels}")
        else:
            entry["label"] = labels[0]
            _check_label(labels[0], size, problems)
    return entry, count, problems


def _check_image(path: Path, problems: list[str], notes: list[str]) -> tuple[int, int] | None:
    """Read the image with the project's one reader (:func:`scripts.data.images.read_image`), so that whatever
    ``prepare`` accepts, training and inference read the same way. Append its problems, and to ``notes`` the
    reader's conversions; return its ``(H, W)``, ``None`` when it cannot be read."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = read_image(path, warn=True)
    except ValueError as e:
        problems.append(str(e))
        return None
    notes += [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return image.shape[:2]


def _check_points(path: Path, size: tuple[int, int] | None, problems: list[str]) -> int:
    """Append the point file's problems (points checked against ``size`` if known); return the point count."""
    try:
        points = read_points(path)
    except PointsFileError as e:
        problems.append(str(e))
        return 0
    problems += [f"{path}: {p}" for p in find_point_problems(points, size)]
    return len(points)


def _check_label(path: Path, size: tuple[int, int] | None, problems: list[str]) -> None:
    """Append the label's problems (:func:`scripts.data.images.read_label`: unreadable, not a single-channel
    integer map) or a size other than the image's ``size``."""
    try:
        shape = read_label(path).shape
    except ValueError as e:
        problems.append(str(e))
        return
    if size is not None and shape != size:
        problems.append(f"{path}: label is {shape[0]}x{shape[1]} but its image is {size[0]}x{size[1]}")


def _sections_from_file(
    split: Path, image_files: dict[str, list[Path]], images_dir: Path
) -> tuple[dict[str, str], list[str]]:
    """Read a split JSON; return stem -> ``"training"``/``"validation"`` and the split's problems."""
    try:
        data = json.loads(split.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, [f"{split}: cannot read the split file ({e})"]
    if not isinstance(data, dict) or not any(k in data for keys in _SECTIONS.values() for k in keys):
        return {}, [f"{split}: expected a JSON object with lists 'train' and 'val' of image stems"]
    sections, problems = {}, []
    for section, keys in _SECTIONS.items():
        key = next((k for k in keys if k in data), keys[0])
        ids = data.get(key, [])
        if not isinstance(ids, list):
            problems.append(f"{split}: '{key}': expected a list of image stems, got {type(ids).__name__}")
            continue
        for stem in map(str, ids):
            if stem in sections:
                problems.append(f"{split}: '{key}': '{stem}' is listed more than once")
            elif stem not in image_files:
                problems.append(f"{split}: '{key}': '{stem}' matches no image in {images_dir}")
            sections[stem] = section
    for stem, files in image_files.items():
        if stem not in sections:
            problems.append(f"{files[0]}: '{stem}' is in neither 'train' nor 'val' of {split}")
    return sections, problems


def _random_sections(stems: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Assign ``round(val_fraction * n)`` stems (at least 1, at most n - 1 when > 0) to validation at random."""
    order = list(stems)
    random.Random(seed).shuffle(order)
    n_val = round(val_fraction * len(order))
    if val_fraction > 0 and len(order) > 1:
        n_val = min(max(n_val, 1), len(order) - 1)
    return {stem: "validation" if i < n_val else "training" for i, stem in enumerate(order)}


def _relative(path: str | Path, base_dir: str | Path) -> str:
    """``path`` relative to ``base_dir``, with ``/`` separators (absolute if on another drive)."""
    path = os.path.abspath(path)
    try:
        return Path(os.path.relpath(path, os.path.abspath(base_dir))).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that ``path`` is never half-written (see :func:`scripts.data.atomic.atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "x", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
