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
"""The refine stage's label rules on hand-made teacher maps: kept, split, filled, removed-and-ignored."""

from __future__ import annotations

import numpy as np
import pytest

from transforms import PointsToEllipseMask
from transforms.point_labels import haematoxylin_outlines, point_constrained_labels


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _scene():
    """Teacher nuclei: 1 (one point), 2 (two touching discs, two points), 3 (no point); a point on background."""
    shape = (64, 96)
    teacher = np.zeros(shape, np.int32)
    teacher[_disc(shape, (15, 15), 8)] = 1
    teacher[_disc(shape, (40, 30), 8) | _disc(shape, (40, 44), 8)] = 2
    teacher[_disc(shape, (15, 70), 7)] = 3
    points = np.array([[15.0, 15.0], [40.0, 44.0], [40.0, 30.0], [50.0, 80.0]])  # (y, x)
    fallback = np.zeros(shape, np.int32)
    for i, p in enumerate(points):
        fallback[_disc(shape, p, 5) & (fallback == 0)] = i + 1
    return teacher, points, fallback


def test_each_rule_on_a_hand_made_tile():
    teacher, points, fallback = _scene()
    result = point_constrained_labels(teacher, points, fallback)
    label, ignore = result.label, result.ignore
    assert result.counts == {"kept": 1, "split": 2, "filled": 1, "missing": 0, "removed": 1}
    # kept: the teacher's nucleus 1, whole, now nucleus 1 (point 0); the fallback disc is not used for it
    assert np.array_equal(label == 1, teacher == 1)
    # split: the merged nucleus is shared by points 2 and 1 along the neck, each half holding its own point
    assert np.array_equal((label == 2) | (label == 3), teacher == 2)
    assert label[40, 44] == 2 and label[40, 30] == 3
    assert abs(int((label == 2).sum()) - int((label == 3).sum())) <= 8
    assert (label[:, 38:] == 3).sum() == 0 and (label[:, :36] == 2).sum() == 0
    # filled: the point on background gets its fallback shape
    assert np.array_equal(label == 4, fallback == 4)
    # removed: the teacher's nucleus without a point is neither foreground nor background: it is ignored
    assert np.array_equal(ignore, teacher == 3) and not (label[teacher == 3]).any()
    # one nucleus per point: nucleus i + 1 holds point i
    pixel = np.floor(points + 0.5).astype(int)
    assert np.array_equal(label[pixel[:, 0], pixel[:, 1]], np.arange(1, len(points) + 1))


def test_a_split_gives_each_pixel_to_its_nearest_point():
    """A merged prediction without a neck (one ellipse) holding two off-centre points: each pixel goes to the nearer
    point (a watershed on the ellipse's distance map, flooded from the deeper point, left the other one a sliver)."""
    shape = (48, 96)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    teacher = (((yy - 24) / 12.0) ** 2 + ((xx - 48) / 30.0) ** 2 <= 1).astype(np.int32)
    points = np.array([[24.0, 54.0], [24.0, 30.0]])
    label = point_constrained_labels(teacher, points, np.zeros_like(teacher)).label
    distances = np.hypot(yy[..., None] - points[:, 0], xx[..., None] - points[:, 1])
    inside = teacher > 0
    own = np.take_along_axis(distances, (label - 1).clip(0)[..., None], axis=-1)[..., 0]
    assert (label[inside] > 0).all() and np.allclose(own[inside], distances.min(-1)[inside])  # ties either way
    assert (label == 2).sum() > 0.3 * teacher.sum()


def test_splits_of_touching_nuclei_on_real_crops():
    """On every sample crop, a teacher that merges each group of touching true nuclei into one: the split returns
    each true nucleus with IoU >= 0.5 (0.02-0.04 for the worst with the earlier distance-map watershed)."""
    from scipy import ndimage

    from tests.helpers import SAMPLE, load_label
    from transforms.points_io import read_points

    ious = []
    for path in sorted((SAMPLE / "labels").glob("*.png")):
        truth = load_label(path)
        points = read_points(SAMPLE / "points" / f"{path.stem}.csv")
        teacher = ndimage.label(truth > 0)[0]
        result = point_constrained_labels(teacher, points, np.zeros_like(truth))
        pixel = np.floor(points + 0.5).astype(int)
        owner = teacher[pixel[:, 0], pixel[:, 1]]
        shared = np.flatnonzero(np.bincount(owner)[owner] > 1)
        assert result.counts["split"] == len(shared) > 5
        for i in shared:
            mine, true = result.label == i + 1, truth == i + 1
            ious.append((mine & true).sum() / (mine | true).sum())
    assert min(ious) >= 0.5 and np.mean(ious) >= 0.85


def test_a_fallback_shape_never_covers_a_kept_nucleus_and_wins_over_ignored_pixels():
    teacher, points, _ = _scene()
    points = np.vstack([points, [[15.0, 25.0]]])  # beside nucleus 1, outside it: filled
    fallback = np.zeros_like(teacher)
    fallback[_disc(teacher.shape, (15, 25), 6)] = 5  # overlaps kept nucleus 1
    fallback[_disc(teacher.shape, (50, 80), 4)] = 4
    teacher[_disc(teacher.shape, (50, 86), 4)] = 7  # a point-less teacher nucleus under the point's fallback
    result = point_constrained_labels(teacher, points, fallback)
    assert np.array_equal(result.label == 1, teacher == 1)  # the kept nucleus is intact
    assert ((result.label == 5) == ((fallback == 5) & (teacher != 1))).all()
    assert not (result.ignore & (result.label > 0)).any()  # labelled pixels are never ignored
    assert result.ignore[50, 89] and result.label[50, 80] == 4


def test_duplicate_points_and_empty_inputs():
    teacher, points, fallback = _scene()
    twice = np.vstack([points, points[:1]])  # point 4 duplicates point 0 inside nucleus 1: it is split, one wins
    result = point_constrained_labels(teacher, twice, fallback)
    assert result.counts["missing"] == 1
    empty = point_constrained_labels(teacher, np.zeros((0, 2)), np.zeros_like(teacher))
    assert not empty.label.any() and np.array_equal(empty.ignore, teacher > 0)
    assert empty.counts["removed"] == 3
    with pytest.raises(ValueError, match="one shape"):
        point_constrained_labels(teacher, points, fallback[:10])


def test_pointless_background_teaches_isolated_point_less_nuclei_as_background():
    """With ``pointless="background"`` an isolated point-less nucleus is background (not ignored), one touching a
    labelled nucleus (a possible fragment of it) stays ignored; the labels themselves do not change."""
    teacher, points, fallback = _scene()
    teacher[_disc(teacher.shape, (15, 27), 4) & (teacher == 0)] = 5  # point-less, touching kept nucleus 1
    ignored = point_constrained_labels(teacher, points, fallback)
    assert np.array_equal(ignored.ignore, (teacher == 3) | (teacher == 5))
    result = point_constrained_labels(teacher, points, fallback, pointless="background")
    assert np.array_equal(result.label, ignored.label) and result.counts == ignored.counts
    assert np.array_equal(result.ignore, teacher == 5)
    assert not result.ignore[teacher == 3].any() and not result.label[teacher == 3].any()
    with pytest.raises(ValueError, match="pointless must be one of"):
        point_constrained_labels(teacher, points, fallback, pointless="drop")


def test_with_sampled_ellipses_on_a_real_crop():
    """The rules with the real fallback (PointsToEllipseMask) on a sample crop whose teacher is its true label with
    one nucleus dropped: the dropped nucleus's point gets an ellipse, everything else is kept."""
    from tests.helpers import SAMPLE, load_label
    from transforms.points_io import read_points

    name = "TCGA-A7-A13F-01Z-00-DX1_y380_x420"
    truth = load_label(SAMPLE / "labels" / f"{name}.png")
    points = read_points(SAMPLE / "points" / f"{name}.csv")
    teacher = np.where(truth == 5, 0, truth)
    fallback = np.asarray(PointsToEllipseMask().set_random_state(0)(points, truth.shape))[0]
    result = point_constrained_labels(teacher, points, fallback)
    assert result.counts["filled"] == 1 and result.counts["removed"] == 0
    kept = (truth > 0) & (truth != 5)
    assert np.array_equal(result.label[kept], truth[kept])  # point i is the centroid of nucleus i + 1
    assert (result.label == 5).any() and not result.ignore.any()


def test_outlines_move_onto_dark_nuclei_and_stay_on_pale_ones():
    shape = (48, 96)
    label = np.zeros(shape, np.int32)
    label[_disc(shape, (24, 24), 8)] = 1  # the teacher's outline: too large around a dark nucleus of radius 6
    label[_disc(shape, (24, 70), 10)] = 2  # a pale nucleus: no contrast, nothing to move to
    haematoxylin = np.full(shape, 0.05)
    haematoxylin[_disc(shape, (24, 24), 6)] = 0.4
    haematoxylin += np.random.default_rng(0).normal(0, 0.005, shape)
    points = np.array([[24.0, 24.0], [24.0, 70.0]])
    moved_label, given_up, moved = haematoxylin_outlines(label, haematoxylin, points)
    assert moved == 1
    assert np.array_equal(moved_label == 1, _disc(shape, (24, 24), 6))
    assert np.array_equal(given_up, (label == 1) & ~_disc(shape, (24, 24), 6))  # the ring is uncertain, not background
    assert np.array_equal(moved_label == 2, label == 2)


def test_a_ragged_dark_shape_is_chromatin_not_an_outline():
    shape = (48, 48)
    label = np.zeros(shape, np.int32)
    label[_disc(shape, (24, 24), 10)] = 1
    haematoxylin = np.full(shape, 0.05)
    ring = _disc(shape, (24, 24), 8) & ~_disc(shape, (24, 24), 5)
    ring[20:29, 24:] = False  # a "C" of dark chromatin: not solid
    haematoxylin[ring] = 0.4
    points = np.array([[24.0, 15.0]])  # on the C
    moved_label, given_up, moved = haematoxylin_outlines(label, haematoxylin, points)
    assert moved == 0 and np.array_equal(moved_label, label) and not given_up.any()
