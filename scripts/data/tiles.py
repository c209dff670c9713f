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
"""Data of the synthesis workflow: the tile datalist of a data folder and fixed validation crops."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.segmentation import relabel_sequential

from scripts.data.datalist import PrepareError, build_datalist, read_image_info
from scripts.data.images import load_tile
from transforms import EncodeMask, PointsToEllipseMask

__all__ = ["ValidationCrops", "tile_datalist", "validation_crops"]


def tile_datalist(
    data_dir: str | Path, crop_size: int | None = None, val_fraction: float = 0.25, seed: int = 0
) -> dict:
    """Datalist of a data folder with ``images/`` and ``points/``; ``split.json`` (``{"train": [...], "val": [...]}``)
    picks the validation tiles when present, else ``val_fraction`` of them are drawn with ``seed``.

    Dense labels are never listed: the synthesis workflow trains and selects models on images and points only.

    Raises:
        PrepareError: listing every problem (missing or unreadable files, points outside their tile, tiles smaller
            than ``crop_size``) or when there is no training tile.
    """
    data = Path(str(data_dir))
    if not data.is_dir():
        raise PrepareError([f"{data}: data folder not found (expected images/ and points/ inside)"])
    split = data / "split.json" if (data / "split.json").is_file() else None
    fraction = 0.0 if split is not None else val_fraction  # a split file decides the validation tiles
    datalist, problems = build_datalist(data / "images", data / "points", None, ".", split, fraction, seed)
    if crop_size is not None:
        for item in datalist["training"] + datalist["validation"]:
            h, w = read_image_info(item["image"]).size
            if min(h, w) < crop_size:
                problems.append(f"{item['image']}: tile is {h}x{w}, smaller than the {crop_size} px training crop")
    if not problems and not datalist["training"]:
        problems.append(f"{data}: no training tiles")
    if problems:
        raise PrepareError(problems)
    return datalist


@dataclass
class ValidationCrops:
    """Fixed validation crops: real images in [-1, 1], masks ``[h, v, np]`` sampled from their points,
    the instance maps and the source tile names."""

    images: torch.Tensor
    masks: torch.Tensor
    labels: np.ndarray
    names: list[str]


def validation_crops(
    items: list[dict], crop_size: int, max_crops: int = 8, seed: int = 0, **sampler_kwargs
) -> ValidationCrops:
    """Up to ``max_crops`` crops spread over the tiles (centre first), with pseudo masks from their points.

    Masks are sampled on the whole tile with a fixed seed, then cropped, so they are identical in every
    validation round and cut nuclei at the crop border as in training.
    """
    if not items:
        raise ValueError("validation_crops needs at least one tile.")
    per_tile = max(1, -(-max_crops // len(items)))
    images, masks, labels, names = [], [], [], []
    sampler = PointsToEllipseMask(**sampler_kwargs)
    for i, item in enumerate(items):
        image, points = load_tile(item)
        h, w = image.shape[1:]
        label = np.asarray(sampler.set_random_state(seed + i)(points, (h, w)))[0]
        for top, left in _crop_corners(h, w, crop_size, per_tile):
            crop = label[top : top + crop_size, left : left + crop_size]
            crop_label = relabel_sequential(crop)[0].astype(np.int32)
            masks.append(EncodeMask()(crop_label[None]))
            images.append(image[:, top : top + crop_size, left : left + crop_size] / 127.5 - 1.0)
            labels.append(crop_label)
            names.append(item.get("name", Path(item["image"]).stem))
    keep = slice(0, max_crops)
    return ValidationCrops(torch.stack(images[keep]), torch.stack(masks[keep]), np.stack(labels[keep]), names[keep])


def _crop_corners(h: int, w: int, size: int, count: int) -> list[tuple[int, int]]:
    centre = ((h - size) // 2, (w - size) // 2)
    corners = [centre, (0, 0), (h - size, w - size), (0, w - size), (h - size, 0)]
    return list(dict.fromkeys(corners))[:count]
