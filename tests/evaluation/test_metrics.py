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
"""Tests of ``scripts.evaluation.metrics``: hand-worked cases, invariances, MONAI/reference agreement,
real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.metrics.panoptic_quality import compute_panoptic_quality
from PIL import Image
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.draw import disk
from skimage.measure import label as cc_label
from skimage.segmentation import expand_labels, find_boundaries

from scripts.evaluation.metrics import (
    POINT_ERRORS,
    InstanceSegmentationMetric,
    aji,
    aji_plus,
    instance_metrics,
    iou_at_points,
    object_dice,
    panoptic_quality,
    pixel_f1,
    pixel_iou,
    point_errors,
    point_f1,
)
from tests.helpers import MONUSEG, SAMPLE

SAMPLE_LABELS = sorted((SAMPLE / "labels").glob("*.png"))
needs_monuseg = pytest.mark.skipif(
    not (MONUSEG / "labels").is_dir(), reason=f"MoNuSeg labels not found under {MONUSEG.resolve()}"
)
OVERLAP_KEYS = ("aji", "aji_plus", "object_dice", "pixel_iou", "pixel_f1")


def _read_label(path: Path) -> np.ndarray:
    lab = np.asarray(Image.open(path))
    assert lab.dtype == np.uint16 and lab.ndim == 2, (path, lab.dtype, lab.shape)
    return lab


def _read_points(label_path: Path) -> np.ndarray:
    path = label_path.parent.parent / "points" / f"{label_path.stem}.csv"
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


def _boxes(shape: tuple[int, int], boxes: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    """Instance map with ``label: (row0, row1, col0, col1)`` half-open boxes, painted in dict order."""
    out = np.zeros(shape, dtype=np.int32)
    for lab, (r0, r1, c0, c1) in boxes.items():
        out[r0:r1, c0:c1] = lab
    return out


def _relabel(lab: np.ndarray, rng: np.random.Generator, dtype: type = np.int64) -> np.ndarray:
    """Random one-to-one relabelling onto non-contiguous labels in [1, 65535], 65535 always used."""
    ids = np.unique(lab)
    ids = ids[ids > 0]
    new = rng.choice(np.arange(1, 65535), size=ids.size, replace=False)
    if ids.size:
        new[rng.integers(ids.size)] = 65535
    lut = np.zeros(int(lab.max()) + 1, dtype=np.int64)
    lut[ids] = new
    return lut[lab].astype(dtype)


def _perturb(gt: np.ndarray, seed: int) -> np.ndarray:
    """A realistic imperfect prediction: nuclei dropped, grown, merged (top-left quadrant), eroded, shifted."""
    rng = np.random.default_rng(seed)
    ids = np.unique(gt)[1:]
    pred = np.where(np.isin(gt, rng.choice(ids, size=max(1, ids.size // 10), replace=False)), 0, gt).astype(np.int64)
    pred = expand_labels(pred, 2)
    h, w = pred.shape
    quad = pred[: h // 2, : w // 2]
    merged = cc_label(quad > 0)  # touching nuclei merge into one component
    pred[: h // 2, : w // 2] = np.where(merged > 0, merged + pred.max(), 0)
    bottom = pred[h // 2 :]
    bottom[find_boundaries(bottom, mode="inner")] = 0
    pred = ndi.shift(pred, rng.integers(-3, 4, size=2), order=0, mode="constant", cval=0)
    return pred


def _reference_aji(pred: np.ndarray, gt: np.ndarray) -> float:
    """Kumar et al.'s AJI as a straightforward per-GT loop over boolean masks."""
    c = u = 0
    used: set[int] = set()
    for g in np.unique(gt):
        if g == 0:
            continue
        g_mask = gt == g
        best, best_iou = None, 0.0
        for p in np.unique(pred[g_mask]):  # increasing label order; strict '>' keeps the lowest label on ties
            if p == 0:
                continue
            p_mask = pred == p
            iou = (g_mask & p_mask).sum() / (g_mask | p_mask).sum()
            if iou > best_iou:
                best, best_iou = p, iou
        if best is None:
            u += g_mask.sum()
        else:
            p_mask = pred == best
            c += (g_mask & p_mask).sum()
            u += (g_mask | p_mask).sum()
            used.add(int(best))
    for p in np.unique(pred):
        if p != 0 and int(p) not in used:
            u += (pred == p).sum()
    return c / u


def _reference_aji_plus_and_object_dice(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """AJI+ and GlaS object Dice from explicit per-object masks (dense IoU/intersection matrices)."""
    g_ids, p_ids = [i for i in np.unique(gt) if i], [i for i in np.unique(pred) if i]
    g_masks, p_masks = [gt == i for i in g_ids], [pred == i for i in p_ids]
    inter = np.array([[(gm & pm).sum() for pm in p_masks] for gm in g_masks], dtype=float)
    g_area, p_area = np.array([m.sum() for m in g_masks]), np.array([m.sum() for m in p_masks])
    union = g_area[:, None] + p_area[None, :] - inter
    rows, cols = linear_sum_assignment(-(inter / union))
    keep = inter[rows, cols] > 0
    rows, cols = rows[keep], cols[keep]
    c = inter[rows, cols].sum()
    u = union[rows, cols].sum() + np.delete(g_area, rows).sum() + np.delete(p_area, cols).sum()
    dice = 2 * inter / (g_area[:, None] + p_area[None, :])
    g_term = sum(g_area[i] * dice[i, np.argmax(inter[i])] for i in range(len(g_ids))) / g_area.sum()
    p_term = sum(p_area[j] * dice[np.argmax(inter[:, j]), j] for j in range(len(p_ids))) / p_area.sum()
    return c / u, 0.5 * (g_term + p_term)


def _monai_pq(pred: np.ndarray, gt: np.ndarray, threshold: float) -> dict[str, float]:
    p, g = torch.as_tensor(pred.astype(np.int32)), torch.as_tensor(gt.astype(np.int32))
    return {
        ours: float(compute_panoptic_quality(p, g, metric_name=theirs, match_iou_threshold=threshold))
        for ours, theirs in (("pq", "pq"), ("sq", "sq"), ("dq", "rq"))
    }


# ---------------------------------------------------------------- hand-worked examples


def test_aji_split_missed_and_spurious() -> None:
    # G1 = rows 0-1 x cols 0-3 (8 px), G2 = rows 4-5 x cols 0-1 (4 px, missed)
    gt = _boxes((8, 8), {1: (0, 2, 0, 4), 2: (4, 6, 0, 2)})
    # P1 = left half of G1 (4 px), P2 = right half of G1 + one column outside (6 px), P3 = spurious 2x2
    pred = _boxes((8, 8), {1: (0, 2, 0, 2), 2: (0, 2, 2, 5), 3: (6, 8, 6, 8)})
    # G1: IoU(P1) = 4/8 > IoU(P2) = 4/10 -> C = 4, U = 8; G2 missed: U += 4; P2, P3 never picked: U += 6 + 4
    assert aji(pred, gt) == pytest.approx(4 / 22)
    # AJI+ pairs G1-P1 only: the same fraction here
    assert aji_plus(pred, gt) == pytest.approx(4 / 22)


def test_aji_vs_aji_plus_on_a_merge() -> None:
    gt = _boxes((6, 6), {1: (0, 2, 0, 2), 2: (0, 2, 2, 4)})  # two 4-px nuclei side by side
    pred = _boxes((6, 6), {7: (0, 2, 0, 4)})  # one 8-px merged prediction
    # AJI: both GT pick P7 (IoU 4/8): C = 4 + 4, U = 8 + 8 -> 1/2 (P7's area counted twice)
    assert aji(pred, gt) == pytest.approx(0.5)
    # AJI+: P7 pairs with one GT only: C = 4, U = 8 + 4 (unpaired GT) -> 1/3
    assert aji_plus(pred, gt) == pytest.approx(1 / 3)
    # pixel level the merge is perfect
    assert pixel_iou(pred, gt) == pixel_f1(pred, gt) == 1.0


def test_aji_tie_picks_lowest_pred_label() -> None:
    gt = _boxes((4, 8), {1: (0, 2, 0, 3)})  # 6 px
    # P3 = col 0 (2 px, inter 2, IoU 2/6); P5 = cols 1-5 (10 px, inter 4, IoU 4/12): an exact tie at 1/3
    pred = _boxes((4, 8), {3: (0, 2, 0, 1), 5: (0, 2, 1, 6)})
    # lowest label P3 wins: C = 2, U = 6 + 10 (P5 never picked) -> 1/8
    assert aji(pred, gt) == pytest.approx(1 / 8)
    # swap the labels: now the 10-px nucleus has the lower label: C = 4, U = 12 + 2 -> 2/7
    swapped = np.select([pred == 3, pred == 5], [5, 3], 0)
    assert aji(swapped, gt) == pytest.approx(2 / 7)


def test_object_dice_weighting() -> None:
    # G1 = 4x4 (16 px), G2 = 2x2 missed (4 px); sum|G| = 20
    gt = _boxes((8, 8), {1: (0, 4, 0, 4), 2: (6, 8, 0, 2)})
    # P1 = cols 0-2 of G1 (12 px), P2 = col 3 of G1 + 2 outside (12 px, inter 4), P3 spurious 2x2; sum|S| = 28
    pred = _boxes((8, 8), {1: (0, 4, 0, 3), 2: (0, 4, 3, 6), 3: (6, 8, 6, 8)})
    # GT term: G1 -> P1 (max intersection 12), Dice 24/28 = 6/7, weight 16/20; G2: 0     -> 24/35
    # pred term: P1 -> G1 Dice 6/7 weight 12/28; P2 -> G1 Dice 8/28 weight 12/28; P3: 0 -> 18/49 + 6/49
    expected = 0.5 * (24 / 35 + 24 / 49)  # = 144/245
    assert object_dice(pred, gt) == pytest.approx(144 / 245) == pytest.approx(expected)
    assert object_dice(gt, pred) == pytest.approx(144 / 245)  # symmetric in its arguments
    # pixel level: inter 12 + 4 = 16, |G| = 20, |S| = 28 -> IoU 16/32, F1 32/48
    assert pixel_iou(pred, gt) == pytest.approx(0.5)
    assert pixel_f1(pred, gt) == pytest.approx(2 / 3)


def test_object_dice_uses_max_intersection_not_max_iou() -> None:
    gt = _boxes((4, 12), {1: (0, 2, 0, 4)})  # 8 px
    # P1: inter 6 but 18 px (IoU 6/20, Dice 12/26); P2: inter 2, 2 px (IoU 2/8, Dice 4/10): P1 wins
    pred = _boxes((4, 12), {2: (0, 2, 0, 1), 1: (0, 2, 1, 10)})
    g_term = 12 / 26
    p_term = (18 * (12 / 26) + 2 * (4 / 10)) / 20
    assert object_dice(pred, gt) == pytest.approx(0.5 * (g_term + p_term))


def test_panoptic_quality_pair_below_threshold() -> None:
    gt = _boxes((6, 8), {1: (0, 2, 0, 4), 2: (4, 6, 0, 4)})  # two 8-px nuclei
    # P1 inside G1 (6 px, IoU 6/8); P2 overlaps G2 by 4 px with 8 px (IoU 4/12 = 1/3)
    pred = _boxes((6, 8), {1: (0, 2, 0, 3), 2: (4, 6, 2, 6)})
    eps = 1e-6
    # threshold 0.5: tp = 1 (IoU 0.75), fp = 1 (P2), fn = 1 (G2)
    pq = panoptic_quality(pred, gt)
    assert pq["dq"] == pytest.approx(1 / (2 + eps), abs=1e-12)
    assert pq["sq"] == pytest.approx(0.75 / (1 + eps), abs=1e-12)
    assert pq["pq"] == pytest.approx(0.75 / (2 + eps), abs=1e-12)
    # threshold 0.3: both pairs match, sum IoU = 3/4 + 1/3 = 13/12
    pq = panoptic_quality(pred, gt, match_iou_threshold=0.3)
    assert pq["dq"] == pytest.approx(2 / (2 + eps), abs=1e-12)
    assert pq["pq"] == pytest.approx(13 / 12 / (2 + eps), abs=1e-12)
    for thr in (0.3, 0.5):
        assert panoptic_quality(pred, gt, thr) == pytest.approx(_monai_pq(pred, gt, thr), abs=1e-6)
    # pixels: inter 6 + 4 = 10, |G| = 16, |S| = 14 -> IoU 10/20, F1 20/30
    assert pixel_iou(pred, gt) == pytest.approx(0.5)
    assert pixel_f1(pred, gt) == pytest.approx(2 / 3)


def test_point_f1_counts_and_rounding() -> None:
    pred = _boxes((8, 8), {4: (0, 3, 0, 3), 9: (0, 3, 5, 8), 2: (5, 8, 5, 8)})
    points = [
        [1.0, 1.0],  # in 4
        [2.4, 0.5],  # rounds to (2, 1): in 4 again -> extra point, FN
        [0.0, 5.49],  # rounds to (0, 5): in 9
        [3.5, 3.0],  # rounds to (4, 3): background -> FN
    ]
    # TP = 2 (4, 9), FP = 1 (2), FN = 4 - 2 = 2 -> F1 = 4 / (4 + 1 + 2)
    counts = point_f1(pred, points, return_counts=True)
    expected = {"f1": 4 / 7, "precision": 2 / 3, "recall": 2 / 4, "tp": 2, "fp": 1, "fn": 2, "merged": 2, "missed": 1}
    assert counts == pytest.approx(expected)
    # by kind: both points of nucleus 4 are merged, one point is on the background, nucleus 2 holds no point
    errors = {"merged_points": 2 / 4, "missed_points": 1 / 4, "pointless_nuclei": 1 / 3}
    assert point_errors(pred, points) == pytest.approx(errors)
    assert {k: instance_metrics(pred, pred, points=points)[k] for k in POINT_ERRORS} == pytest.approx(errors)
    assert point_errors(np.zeros((8, 8), int), np.zeros((0, 2))) == dict.fromkeys(POINT_ERRORS, 0.0)
    assert point_f1(pred, np.asarray(points)) == pytest.approx(4 / 7)
    assert point_f1(pred, [[-0.5, 7.49]]) == pytest.approx(2 / (2 + 2))  # -0.5 -> row 0, 7.49 -> col 7: in 9
    assert instance_metrics(pred, pred, points=points)["point_f1"] == pytest.approx(4 / 7)


def test_perfect_disjoint_and_empty() -> None:
    gt = _read_label(SAMPLE_LABELS[0])
    perfect = instance_metrics(gt, gt, points=_read_points(SAMPLE_LABELS[0]))
    for key in (*OVERLAP_KEYS, "point_f1"):
        assert perfect[key] == 1.0, key
    n = len(np.unique(gt)) - 1
    assert perfect["pq"] == perfect["dq"] == pytest.approx(n / (n + 1e-6), abs=1e-12)
    assert perfect["sq"] == pytest.approx(1.0, abs=1e-6)

    a = _boxes((8, 8), {1: (0, 3, 0, 3), 2: (0, 3, 4, 8)})
    b = _boxes((8, 8), {1: (4, 8, 0, 3), 5: (4, 8, 4, 8)})
    disjoint = instance_metrics(a, b, points=[[6, 1]])
    assert all(v == 0.0 for k, v in disjoint.items() if k not in POINT_ERRORS), disjoint
    assert [disjoint[k] for k in POINT_ERRORS] == [0.0, 1.0, 1.0]  # the point is missed, no nucleus holds one

    empty = np.zeros((8, 8), dtype=np.uint16)
    both_empty = instance_metrics(empty, empty, points=np.zeros((0, 2)))
    assert all(both_empty[k] == 1.0 for k in (*OVERLAP_KEYS, "point_f1")), both_empty
    assert both_empty["pq"] == both_empty["sq"] == both_empty["dq"] == 0.0  # MONAI's convention
    for pred, gt in ((a, empty), (empty, a)):
        scores = instance_metrics(pred, gt, points=[[6, 6]])  # the point in no nucleus
        assert all(v == 0.0 for k, v in scores.items() if k not in POINT_ERRORS), scores
        assert [scores[k] for k in POINT_ERRORS] == [0.0, 1.0, float(pred.any())]


# ---------------------------------------------------------------- invariances and input forms


@pytest.mark.parametrize("path", SAMPLE_LABELS, ids=lambda p: p.stem[:12])
def test_relabelling_and_dtype_invariance(path: Path) -> None:
    gt = _read_label(path)
    pred = _perturb(gt, seed=1)
    points = _read_points(path)
    ref = instance_metrics(pred, gt, points=points)
    rng = np.random.default_rng(7)
    for dtype in (np.uint16, np.int32, np.int64):
        p2, g2 = _relabel(pred, rng, dtype), _relabel(gt, rng, dtype)
        assert 65535 in p2 and 65535 in g2
        assert instance_metrics(p2, g2, points=points) == pytest.approx(ref, abs=1e-12)
    # torch tensors with a channel dim, and float maps with integral values
    p_t, g_t = torch.as_tensor(pred)[None], torch.as_tensor(gt.astype(np.int32))[None]
    assert instance_metrics(p_t, g_t, points=torch.as_tensor(points)) == pytest.approx(ref, abs=1e-12)
    assert aji(pred.astype(np.float32), gt.astype(np.float64)) == pytest.approx(ref["aji"], abs=1e-12)
    # single-metric functions agree with the shared computation
    assert aji(pred, gt) == ref["aji"]
    assert aji_plus(pred, gt) == ref["aji_plus"]
    assert object_dice(pred, gt) == ref["object_dice"]
    assert pixel_iou(pred, gt) == ref["pixel_iou"]
    assert pixel_f1(pred, gt) == ref["pixel_f1"]
    assert panoptic_quality(pred, gt) == {k: ref[k] for k in ("pq", "sq", "dq")}
    assert point_f1(pred, points) == ref["point_f1"]


# ---------------------------------------------------------------- agreement with MONAI and reference loops


@pytest.mark.parametrize("path", SAMPLE_LABELS, ids=lambda p: p.stem[:12])
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.75])
def test_panoptic_quality_matches_monai_on_real_crops(path: Path, threshold: float) -> None:
    gt = _read_label(path)
    eroded = gt.copy()
    eroded[find_boundaries(gt, mode="inner")] = 0  # IoUs around 0.6-0.9: pairs on both sides of 0.75
    for pred in (_perturb(gt, seed=3), eroded):
        ours = panoptic_quality(pred, gt, match_iou_threshold=threshold)
        assert ours == pytest.approx(_monai_pq(pred, gt, threshold), abs=1e-6)
        assert ours["pq"] < 0.95
    assert ours["dq"] > 0.1  # the eroded prediction matches nuclei even at 0.75


def test_panoptic_quality_matches_monai_synthetic_low_threshold() -> None:
    rng = np.random.default_rng(0)
    gt = np.zeros((128, 128), dtype=np.int32)
    pred = np.zeros_like(gt)
    for i in range(1, 41):  # overlapping disks: later ones occlude earlier ones
        centre, radius = rng.uniform(8, 120, size=2), rng.uniform(4, 9)
        gt[disk(tuple(centre), radius, shape=gt.shape)] = i
        offset, scale = rng.uniform(-4, 4, size=2), rng.uniform(0.7, 1.3)
        pred[disk(tuple(centre + offset), radius * scale, shape=gt.shape)] = 100 + 3 * i
    ours_03 = panoptic_quality(pred, gt, match_iou_threshold=0.3)
    assert ours_03 == pytest.approx(_monai_pq(pred, gt, 0.3), abs=1e-6)
    assert ours_03["dq"] > panoptic_quality(pred, gt)["dq"]  # some pairs have 0.3 < IoU <= 0.5


@pytest.mark.parametrize("path", SAMPLE_LABELS[:2], ids=lambda p: p.stem[:12])
def test_against_reference_loops_on_real_crop(path: Path) -> None:
    gt = _read_label(path).astype(np.int64)
    pred = _perturb(gt, seed=5)
    assert len(np.unique(pred)) > 10
    assert aji(pred, gt) == pytest.approx(_reference_aji(pred, gt), abs=1e-12)
    assert aji(gt, pred) == pytest.approx(_reference_aji(gt, pred), abs=1e-12)  # AJI is not symmetric
    ref_aji_plus, ref_object_dice = _reference_aji_plus_and_object_dice(pred, gt)
    assert aji_plus(pred, gt) == pytest.approx(ref_aji_plus, abs=1e-12)
    assert object_dice(pred, gt) == pytest.approx(ref_object_dice, abs=1e-12)
    assert 0.3 < aji(pred, gt) < 0.95 and 0.3 < aji_plus(pred, gt) < 0.95


# ---------------------------------------------------------------- full MoNuSeg tiles


@needs_monuseg
def test_full_tile_plausible_and_relabel_invariant() -> None:
    gt = _read_label(MONUSEG / "labels" / "TCGA-49-4488-01Z-00-DX1.png")
    shifted = ndi.shift(gt, (2, -3), order=0)
    eroded = gt.copy()
    eroded[find_boundaries(gt, mode="inner")] = 0
    for pred in (shifted, eroded):
        m = instance_metrics(pred, gt)
        assert 0.55 < m["aji"] < 0.95 and 0.55 < m["aji_plus"] < 0.95, m
        assert 0.7 < m["object_dice"] < 0.97 and 0.7 < m["pixel_f1"] < 0.97, m
        assert 0.85 < m["dq"] <= 1.0 and 0.5 < m["pq"] < 0.95, m
        rng = np.random.default_rng(11)
        assert instance_metrics(_relabel(pred, rng), _relabel(gt, rng, np.int32)) == pytest.approx(m, abs=1e-12)


# ---------------------------------------------------------------- MONAI / ignite integration


def _batches() -> tuple[list[dict[str, torch.Tensor]], list[tuple[np.ndarray, np.ndarray]]]:
    pairs = [(_perturb(_read_label(p), seed=i), _read_label(p)) for i, p in enumerate(SAMPLE_LABELS)]
    batches = [
        {
            "pred": torch.as_tensor(np.stack([pairs[i][0], pairs[i + 1][0]]).astype(np.int32))[:, None],
            "label": torch.as_tensor(np.stack([pairs[i][1], pairs[i + 1][1]]).astype(np.int32))[:, None],
        }
        for i in (0, 2)
    ]
    return batches, pairs


@pytest.mark.parametrize("name", ["aji", "pq"])
def test_ignite_metric_handler(name: str) -> None:
    from ignite.engine import Engine
    from monai.handlers import IgniteMetricHandler

    batches, pairs = _batches()
    engine = Engine(lambda engine, batch: batch)
    handler = IgniteMetricHandler(
        metric_fn=InstanceSegmentationMetric(name), output_transform=lambda out: (out["pred"], out["label"])
    )
    handler.attach(engine, name)
    engine.run(batches, max_epochs=1)
    expected = [instance_metrics(p, g)[name] for p, g in pairs]
    assert engine.state.metrics[name] == pytest.approx(np.mean(expected), abs=1e-12)
    details = engine.state.metric_details[name]
    assert details.shape == (4, 1)
    np.testing.assert_allclose(details[:, 0].numpy(), expected, atol=1e-12)


def test_cumulative_metric_direct_use_and_point_map() -> None:
    batches, pairs = _batches()
    metric = InstanceSegmentationMetric("object_dice")
    for batch in batches:
        assert metric(batch["pred"], batch["label"]).shape == (2, 1)
    mean = metric.aggregate()
    assert isinstance(mean, torch.Tensor) and mean.ndim == 0
    assert float(mean) == pytest.approx(np.mean([object_dice(p, g) for p, g in pairs]), abs=1e-12)
    metric.reset()
    with pytest.raises(ValueError, match="no values"):
        metric.aggregate()

    pred = _boxes((8, 8), {4: (0, 3, 0, 3), 9: (0, 3, 5, 8), 2: (5, 8, 5, 8)})
    point_map = np.zeros((8, 8), dtype=np.int32)
    point_map[1, 1] = point_map[2, 1] = point_map[0, 5] = point_map[4, 3] = 1  # the hand-worked points above
    f1 = InstanceSegmentationMetric("point_f1")([torch.as_tensor(pred)[None]], [torch.as_tensor(point_map)[None]])
    assert float(f1) == pytest.approx(4 / 7)


# ---------------------------------------------------------------- errors


def test_errors() -> None:
    ok = np.zeros((8, 8), dtype=np.int32)
    with pytest.raises(ValueError, match="same shape"):
        aji(ok, np.zeros((8, 9), dtype=np.int32))
    with pytest.raises(ValueError, match="2-D"):
        aji(np.zeros((2, 8, 8), dtype=np.int32), ok)
    with pytest.raises(ValueError, match="non-integral"):
        pixel_iou(np.full((8, 8), 0.5), ok)
    with pytest.raises(ValueError, match="non-integral or non-finite"):
        object_dice(ok, np.full((8, 8), np.nan))
    with pytest.raises(ValueError, match="negative labels"):
        panoptic_quality(ok, -np.ones((8, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="integer"):
        aji(np.zeros((8, 8), dtype=np.complex64), ok)
    with pytest.raises(ValueError, match=r"points\[1\] = \(y=7.5, x=2\) lies outside"):
        point_f1(ok, [[0.0, 0.0], [7.5, 2.0], [9.0, 9.0]])  # 7.5 rounds to row 8
    with pytest.raises(ValueError, match=r"points\[0\]"):
        point_f1(ok, [[-0.51, 0.0]])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        point_f1(ok, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="match_iou_threshold"):
        panoptic_quality(ok, ok, match_iou_threshold=0.0)
    with pytest.raises(ValueError, match="metric_name"):
        InstanceSegmentationMetric("dice")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        InstanceSegmentationMetric("aji")(torch.zeros(2, 2, 8, 8), torch.zeros(2, 2, 8, 8))


def test_iou_at_points_pairs_each_point_nucleus_with_the_true_one_under_it():
    gt = np.zeros((20, 30), np.int32)
    gt[2:8, 2:8] = 7  # 36 px
    gt[10:16, 10:20] = 3  # 60 px
    pred = np.zeros_like(gt)
    pred[2:8, 2:5] = 1  # half of gt 7: IoU 0.5
    pred[10:16, 10:20] = 2  # gt 3 exactly
    points = np.array([[4.0, 3.0], [12.0, 15.0], [18.0, 25.0], [5.0, 6.0]])  # the third on background, the fourth
    iou = iou_at_points(pred, gt, points)  # has no nucleus 4 in pred
    assert iou[0] == pytest.approx(0.5) and iou[1] == 1.0 and np.isnan(iou[2]) and iou[3] == 0.0


@pytest.mark.parametrize("path", SAMPLE_LABELS, ids=lambda p: p.stem[:12])
def test_point_errors_see_a_merge_of_touching_real_nuclei(path: Path) -> None:
    """A real crop's dense label against its own points has no error; merging two touching nuclei into one makes
    exactly their two points ``merged`` and costs AJI, with nothing ``missed`` or ``pointless``."""
    gt, points = _read_label(path), _read_points(path)
    assert point_errors(gt, points) == dict.fromkeys(POINT_ERRORS, 0.0)
    right = np.zeros_like(gt)
    right[:, 1:] = gt[:, :-1]
    pairs = (gt > 0) & (right > 0) & (gt != right)  # a pixel of one nucleus right of another
    if not pairs.any():
        pytest.skip("no touching nuclei in this crop")
    a, b = int(gt[pairs][0]), int(right[pairs][0])
    merged = np.where(gt == b, a, gt)
    errors = point_errors(merged, points)
    assert errors == pytest.approx({"merged_points": 2 / len(points), "missed_points": 0.0, "pointless_nuclei": 0.0})
    assert instance_metrics(merged, gt)["aji"] < 1.0
