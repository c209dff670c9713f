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
"""Point-constrained training labels from a teacher's instance map (the ``refine`` stage).

The user's points are hard constraints on a teacher's prediction of a real tile:

- a predicted nucleus holding exactly one point is kept;
- a predicted nucleus holding several points is split among them: each of its pixels goes to the nearest point,
  regions kept connected (a compact watershed from the points on a flat image: a Voronoi partition inside the nucleus);
- a point left without a nucleus gets its fallback shape (a sampled ellipse), on pixels no kept nucleus covers;
- a predicted nucleus holding no point is removed and its pixels are *ignored* by the loss, not taught as
  background (a point set may be incomplete); with ``pointless="background"`` (every nucleus of the tile carries a
  point) only the removed nuclei touching a labelled one (possibly a fragment of it) are ignored, the isolated ones are
  taught as background.

Nucleus ``i + 1`` of the result holds point ``i``, as in :class:`~transforms.PointsToEllipseMask`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

__all__ = [
    "POINTLESS",
    "POINT_RULES",
    "SPLIT_RULE",
    "PointLabels",
    "point_rules",
    "haematoxylin_outlines",
    "point_constrained_labels",
]

#: what a predicted nucleus holding no point becomes: ``ignore`` (all its pixels are skipped by the loss) or
#: ``background`` (taught as background unless it touches a labelled nucleus; those stay ignored)
POINTLESS = ("ignore", "background")

#: how a predicted nucleus holding several points is split (recorded with refine labels, so that labels of an earlier
#: rule, ``distance_watershed`` before 0.12.0, are never mixed in)
SPLIT_RULE = "nearest_point"

#: the rule that labels a point's nucleus: alone in a predicted nucleus, sharing one, or without one
POINT_RULES = ("kept", "split", "filled")


@dataclass
class PointLabels:
    """Result of :func:`point_constrained_labels`.

    ``label``: (H, W) int32, nucleus ``i + 1`` holds point ``i``; ``ignore``: (H, W) bool, pixels the loss skips;
    ``counts``: how many points were ``kept`` (alone in a predicted nucleus), ``split`` (sharing one), ``filled``
    (no predicted nucleus: fallback shape) and ``missing`` (no pixel at all, e.g. a duplicate point), and how many
    predicted nuclei were ``removed`` (no point).
    """

    label: np.ndarray
    ignore: np.ndarray
    counts: dict[str, int]


def point_constrained_labels(
    instances: np.ndarray, points: np.ndarray, fallback: np.ndarray, pointless: str = "ignore"
) -> PointLabels:
    """Training label of one tile from a teacher's ``instances`` and the tile's ``points``.

    Args:
        instances: (H, W) teacher instance map (0 = background).
        points: (N, 2) ``(y, x)`` pixel coordinates inside the tile.
        fallback: (H, W) instance map whose nucleus ``i + 1`` is the fallback shape of point ``i`` (e.g. a
            :class:`~transforms.PointsToEllipseMask` sample of the same points).
        pointless: what a predicted nucleus holding no point becomes (:data:`POINTLESS`): ``ignore`` when the point
            set may be incomplete, ``background`` when every nucleus carries a point (then only the ones touching a
            labelled nucleus, 8-connected, stay ignored).
    """
    if pointless not in POINTLESS:
        raise ValueError(f"pointless must be one of {POINTLESS}, got {pointless!r}.")
    instances = np.asarray(instances)
    if instances.ndim != 2 or np.asarray(fallback).shape != instances.shape:
        raise ValueError(
            f"instances and fallback must be (H, W) maps of one shape, got {instances.shape} and {np.shape(fallback)}."
        )
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pixel, owner, per_nucleus = _owners(instances, points)

    lookup = np.zeros(len(per_nucleus), dtype=np.int32)  # teacher id -> point index + 1 for single-point nuclei
    single = np.flatnonzero((owner > 0) & (per_nucleus[owner] == 1))
    lookup[owner[single]] = single + 1
    label = lookup[instances]
    ignore = (instances > 0) & (per_nucleus[instances] == 0)

    shared = np.flatnonzero(per_nucleus >= 2)
    boxes = ndi.find_objects(instances)
    for nucleus in shared:
        box = boxes[nucleus - 1]
        region = instances[box] == nucleus
        markers = np.zeros(region.shape, dtype=np.int32)
        which = np.flatnonzero(owner == nucleus)
        offset = np.array([box[0].start, box[1].start])
        local = pixel[which] - offset
        markers[local[:, 0], local[:, 1]] = which + 1
        parts = watershed(np.zeros(region.shape), markers, mask=region, compactness=1.0)
        label[box][region] = parts[region]

    filled = np.flatnonzero(owner == 0)
    free = (label == 0) & np.isin(fallback, filled + 1)
    label[free] = fallback[free]
    ignore &= label == 0
    if pointless == "background" and ignore.any():
        touching = ndi.binary_dilation(label > 0, structure=np.ones((3, 3), bool)) & ignore
        kept = np.unique(instances[touching])  # removed nuclei with a pixel beside a labelled one
        ignore &= np.isin(instances, kept[kept > 0])

    present = np.zeros(len(points) + 1, dtype=bool)
    present[np.unique(label)] = True
    counts = {
        "kept": int(len(single)),
        "split": int(np.isin(owner, shared).sum()),
        "filled": int(present[filled + 1].sum()),
        "missing": int(len(points) - present[1:].sum()),
        "removed": int(np.count_nonzero(per_nucleus[np.unique(instances[instances > 0])] == 0)),
    }
    return PointLabels(label.astype(np.int32), ignore, counts)


def _owners(instances: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each point's pixel (N, 2), the predicted nucleus under it (N,; 0: background) and each predicted nucleus's
    number of points (0 for the background)."""
    h, w = instances.shape
    pixel = np.clip(
        np.floor(np.asarray(points, dtype=np.float64).reshape(-1, 2) + 0.5).astype(np.int64), 0, [h - 1, w - 1]
    )
    owner = instances[pixel[:, 0], pixel[:, 1]].astype(np.int64)
    per_nucleus = np.bincount(owner[owner > 0], minlength=int(instances.max(initial=0)) + 1)
    per_nucleus[0] = 0
    return pixel, owner, per_nucleus


def point_rules(instances: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per point, the index into :data:`POINT_RULES` of the rule :func:`point_constrained_labels` labels it by."""
    _, owner, per_nucleus = _owners(np.asarray(instances), points)
    return np.where(owner == 0, 2, np.where(per_nucleus[owner] > 1, 1, 0))


def haematoxylin_outlines(
    label: np.ndarray,
    haematoxylin: np.ndarray,
    points: np.ndarray,
    margin: int = 4,
    area_ratio: tuple[float, float] = (0.5, 1.5),
    min_solidity: float = 0.9,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Move each nucleus's outline onto the image: the pixels darker in haematoxylin than their surroundings.

    For nucleus ``i + 1`` (holding point ``i``): its pixels dilated by ``margin`` px, minus other nuclei, are split in
    two by Otsu's threshold of the haematoxylin optical density there; the dark connected part holding the point,
    closed, holes filled and opened, replaces the nucleus when its area is within ``area_ratio`` of the old one and its
    solidity (area / convex hull area) at least ``min_solidity`` (else the nucleus is kept as it was: pale, vesicular
    or ambiguous nuclei keep the teacher's outline). Pixels a nucleus loses are returned as uncertain.

    Args:
        label: (H, W) instance map, nucleus ``i + 1`` holding point ``i``.
        haematoxylin: (H, W) haematoxylin optical density (e.g. ``skimage.color.rgb2hed(rgb)[..., 0]``).
        points: (N, 2) ``(y, x)`` points.
        margin: how far (px) an outline may grow.
        area_ratio: accepted range of new area / old area.
        min_solidity: smallest accepted solidity of a new outline (ragged shapes are chromatin, not outlines).

    Returns:
        the new label, the (H, W) bool mask of pixels given up (to ignore), and how many nuclei were moved.
    """
    from skimage.filters import threshold_otsu
    from skimage.morphology import convex_hull_image, disk

    label = np.asarray(label).copy()
    given_up = np.zeros(label.shape, dtype=bool)
    h, w = label.shape
    pixel = np.clip(
        np.floor(np.asarray(points, dtype=np.float64).reshape(-1, 2) + 0.5).astype(np.int64), 0, [h - 1, w - 1]
    )
    boxes = ndi.find_objects(label)
    moved = 0
    disc = ndi.generate_binary_structure(2, 1)
    round_2 = disk(2).astype(bool)
    for index, box in enumerate(boxes):
        if box is None or index >= len(pixel):
            continue
        nucleus = index + 1
        y0, x0 = max(box[0].start - margin, 0), max(box[1].start - margin, 0)
        y1, x1 = min(box[0].stop + margin, h), min(box[1].stop + margin, w)
        local = label[y0:y1, x0:x1]
        own = local == nucleus
        reach = ndi.binary_dilation(own, structure=disc, iterations=margin) & ((local == 0) | own)
        values = haematoxylin[y0:y1, x0:x1][reach]
        if values.size < 16 or np.ptp(values) <= 0:
            continue
        dark = reach & (haematoxylin[y0:y1, x0:x1] > threshold_otsu(values))
        py, px = pixel[index] - (y0, x0)
        if not dark[py, px]:
            continue
        parts, _ = ndi.label(dark)
        candidate = ndi.binary_closing(parts == parts[py, px], structure=round_2, border_value=0)
        candidate = ndi.binary_opening(ndi.binary_fill_holes(candidate), structure=disc) & reach
        area = int(candidate.sum())
        if not candidate[py, px] or not area_ratio[0] <= area / max(own.sum(), 1) <= area_ratio[1]:
            continue
        if area / max(int(convex_hull_image(candidate).sum()), 1) < min_solidity:
            continue
        given_up[y0:y1, x0:x1] |= own & ~candidate
        local[own & ~candidate] = 0
        local[candidate] = nucleus
        moved += 1
    return label, given_up & (label == 0), moved
