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
"""Instance-segmentation metrics for nucleus segmentation, all computed from one contingency table.

Inputs are 2-D integer instance maps (numpy arrays or torch tensors, optionally with a leading singleton channel
``(1, H, W)``): 0 is background, every other value one nucleus; labels need not be contiguous (e.g. ``{3, 70, 65535}``)
and their values never matter, only the partition of the pixels they define.

Every metric is derived from the intersection table of GT x predicted nuclei, built once per image pair by
``_contingency`` (labels relabelled with ``np.unique(..., return_inverse=True)`` over the foreground pixels, pair
counts with one ``np.bincount``), so all seven metrics on a 1000x1000 pair with ~600 nuclei take well under 0.5 s.

Conventions on empty inputs (documented per function): when neither map has a nucleus, the overlap metrics
(AJI, AJI+, object Dice, pixel IoU/F1, point F1) are 1.0; when exactly one side is empty they are 0.0. Panoptic
quality follows MONAI exactly (``smooth_numerator`` in the denominators), hence is 0.0 when both are empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.metrics import CumulativeIterationMetric
from scipy.optimize import linear_sum_assignment

__all__ = [
    "InstanceSegmentationMetric",
    "METRIC_NAMES",
    "POINT_ERRORS",
    "aji",
    "aji_plus",
    "instance_metrics",
    "iou_at_points",
    "object_dice",
    "panoptic_quality",
    "pixel_f1",
    "pixel_iou",
    "point_errors",
    "point_f1",
]

#: names accepted by :class:`InstanceSegmentationMetric` (and the keys of :func:`instance_metrics`)
METRIC_NAMES = ("aji", "aji_plus", "object_dice", "pixel_iou", "pixel_f1", "pq", "sq", "dq", "point_f1")

#: the errors point F1 counts, by kind (:func:`point_errors`; label-free: points only)
POINT_ERRORS = ("merged_points", "missed_points", "pointless_nuclei")


def _as_label_map(x: NdarrayOrTensor, name: str) -> np.ndarray:
    """Validate one instance map and return it as a 2-D non-negative integer numpy array."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D instance map (H, W) or (1, H, W), got shape {tuple(arr.shape)}.")
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and not (np.all(np.isfinite(arr)) and np.array_equal(arr, np.floor(arr))):
            raise ValueError(
                f"{name} must hold integer instance labels, got dtype {arr.dtype} with non-integral or non-finite "
                "values."
            )
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be an integer instance map, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() < 0:
        raise ValueError(f"{name} has negative labels (min {arr.min()}); instance labels must be >= 0.")
    return arr


def _as_pair(pred: NdarrayOrTensor, gt: NdarrayOrTensor) -> tuple[np.ndarray, np.ndarray]:
    p, g = _as_label_map(pred, "pred"), _as_label_map(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}.")
    return p, g


@dataclass(frozen=True)
class _Contingency:
    """Overlap table of one (pred, gt) pair; nuclei are indexed 0..n-1 in increasing label order."""

    gt_area: np.ndarray  # (n_gt,) pixels per GT nucleus
    pred_area: np.ndarray  # (n_pred,) pixels per predicted nucleus
    pair_gt: np.ndarray  # (n_pairs,) GT index of each overlapping (gt, pred) pair, sorted by (gt, pred)
    pair_pred: np.ndarray  # (n_pairs,) pred index of each pair
    pair_inter: np.ndarray  # (n_pairs,) |G_i ∩ S_j| > 0
    n_union_fg: int  # pixels that are foreground in gt or pred

    @property
    def n_gt(self) -> int:
        return int(self.gt_area.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_area.size)

    @cached_property
    def pair_union(self) -> np.ndarray:
        return self.gt_area[self.pair_gt] + self.pred_area[self.pair_pred] - self.pair_inter

    @cached_property
    def pair_iou(self) -> np.ndarray:
        return self.pair_inter / self.pair_union

    @cached_property
    def lsa_pairs(self) -> np.ndarray:
        """Indices (into the pair arrays) of the maximum-total-IoU one-to-one assignment, IoU > 0 only.

        ``scipy.optimize.linear_sum_assignment`` on the dense ``-IoU`` matrix (rows: GT, columns: pred in label
        order), as MONAI's ``compute_panoptic_quality`` does for thresholds below 0.5.
        """
        if self.pair_iou.size == 0:
            return np.zeros(0, dtype=np.intp)
        iou = np.zeros((self.n_gt, self.n_pred))
        iou[self.pair_gt, self.pair_pred] = self.pair_iou
        rows, cols = linear_sum_assignment(-iou)
        keep = iou[rows, cols] > 0
        codes = self.pair_gt.astype(np.int64) * self.n_pred + self.pair_pred  # sorted: pairs are in (gt, pred) order
        return np.searchsorted(codes, rows[keep].astype(np.int64) * self.n_pred + cols[keep])


def _contingency(pred: np.ndarray, gt: np.ndarray) -> _Contingency:
    """Build the GT x pred intersection table from validated maps of equal shape (foreground pixels only)."""
    fg = (gt > 0) | (pred > 0)
    g_lab, g_idx = np.unique(gt[fg], return_inverse=True)
    p_lab, p_idx = np.unique(pred[fg], return_inverse=True)
    # index 0 is background on both sides, whether or not it occurs in the union foreground
    if g_lab.size == 0 or g_lab[0] != 0:
        g_idx, g_lab = g_idx + 1, np.concatenate(([0], g_lab))
    if p_lab.size == 0 or p_lab[0] != 0:
        p_idx, p_lab = p_idx + 1, np.concatenate(([0], p_lab))
    n_g, n_p = g_lab.size, p_lab.size
    codes = g_idx.astype(np.int64).ravel() * n_p + p_idx.ravel()
    if n_g * n_p <= max(4 * codes.size, 1 << 22):
        counts = np.bincount(codes, minlength=n_g * n_p)
        nz = np.flatnonzero(counts)
        cnt = counts[nz]
    else:  # very many labels: a sort is cheaper than a huge dense table
        nz, cnt = np.unique(codes, return_counts=True)
    pg, pp = np.divmod(nz, n_p)
    both = (pg > 0) & (pp > 0)
    return _Contingency(
        gt_area=np.bincount(g_idx.ravel(), minlength=n_g)[1:],
        pred_area=np.bincount(p_idx.ravel(), minlength=n_p)[1:],
        pair_gt=pg[both] - 1,
        pair_pred=pp[both] - 1,
        pair_inter=cnt[both],
        n_union_fg=int(codes.size),
    )


def _best_per_group(group: np.ndarray, score: np.ndarray, tiebreak: np.ndarray) -> np.ndarray:
    """Index of the pair with the highest ``score`` in each ``group`` (ties: lowest ``tiebreak``)."""
    if group.size == 0:
        return np.zeros(0, dtype=np.intp)
    order = np.lexsort((tiebreak, -score, group))
    g = group[order]
    return order[np.concatenate(([True], g[1:] != g[:-1]))]


def _aji(ct: _Contingency) -> float:
    if ct.n_gt == 0 and ct.n_pred == 0:
        return 1.0
    best = _best_per_group(ct.pair_gt, ct.pair_iou, ct.pair_pred)
    c = ct.pair_inter[best].sum()
    picked = np.zeros(ct.n_pred, dtype=bool)
    picked[ct.pair_pred[best]] = True
    u = (
        ct.pair_union[best].sum()
        + (ct.gt_area.sum() - ct.gt_area[ct.pair_gt[best]].sum())  # GT nuclei overlapping no prediction
        + ct.pred_area[~picked].sum()  # predictions never picked
    )
    return float(c / u)


def _aji_plus(ct: _Contingency) -> float:
    if ct.n_gt == 0 and ct.n_pred == 0:
        return 1.0
    pairs = ct.lsa_pairs
    c = ct.pair_inter[pairs].sum()
    u = (
        ct.pair_union[pairs].sum()
        + ct.gt_area.sum()
        - ct.gt_area[ct.pair_gt[pairs]].sum()
        + ct.pred_area.sum()
        - ct.pred_area[ct.pair_pred[pairs]].sum()
    )
    return float(c / u)


def _object_dice(ct: _Contingency) -> float:
    if ct.n_gt == 0 and ct.n_pred == 0:
        return 1.0
    if ct.n_gt == 0 or ct.n_pred == 0:
        return 0.0
    dice = 2.0 * ct.pair_inter / (ct.gt_area[ct.pair_gt] + ct.pred_area[ct.pair_pred])
    g_best = _best_per_group(ct.pair_gt, ct.pair_inter, ct.pair_pred)
    p_best = _best_per_group(ct.pair_pred, ct.pair_inter, ct.pair_gt)
    g_term = (ct.gt_area[ct.pair_gt[g_best]] * dice[g_best]).sum() / ct.gt_area.sum()
    p_term = (ct.pred_area[ct.pair_pred[p_best]] * dice[p_best]).sum() / ct.pred_area.sum()
    return float(0.5 * (g_term + p_term))


def _pixel_iou(ct: _Contingency) -> float:
    return 1.0 if ct.n_union_fg == 0 else float(ct.pair_inter.sum() / ct.n_union_fg)


def _pixel_f1(ct: _Contingency) -> float:
    total = ct.gt_area.sum() + ct.pred_area.sum()
    return 1.0 if total == 0 else float(2.0 * ct.pair_inter.sum() / total)


def _panoptic_quality(ct: _Contingency, match_iou_threshold: float, smooth_numerator: float) -> dict[str, float]:
    if not 0.0 < match_iou_threshold <= 1.0:
        raise ValueError(f"match_iou_threshold must be in (0, 1], got {match_iou_threshold}.")
    if match_iou_threshold >= 0.5:  # IoU > 0.5 makes the pairing unique
        iou = ct.pair_iou[ct.pair_iou > match_iou_threshold]
    else:
        iou = ct.pair_iou[ct.lsa_pairs]
        iou = iou[iou > match_iou_threshold]
    tp = iou.size
    fp, fn = ct.n_pred - tp, ct.n_gt - tp
    iou_sum = float(iou.sum())
    denom = tp + 0.5 * fp + 0.5 * fn + smooth_numerator
    return {"pq": iou_sum / denom, "sq": iou_sum / (tp + smooth_numerator), "dq": tp / denom}


def _point_counts(pred: np.ndarray, points: Any, n_pred: int | None = None) -> dict[str, float]:
    pts = points.detach().cpu().numpy() if isinstance(points, torch.Tensor) else np.asarray(points, dtype=float)
    if pts.size == 0:
        pts = np.zeros((0, 2))
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"points must be an (N, 2) array of (y, x) coordinates, got shape {tuple(pts.shape)}.")
    if not np.all(np.isfinite(pts)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(pts), axis=1))[0])
        raise ValueError(f"points[{bad}] = {tuple(pts[bad].tolist())} is not finite.")
    idx = np.floor(pts + 0.5).astype(np.int64)
    inside = (idx[:, 0] >= 0) & (idx[:, 0] < pred.shape[0]) & (idx[:, 1] >= 0) & (idx[:, 1] < pred.shape[1])
    if not np.all(inside):
        bad = int(np.flatnonzero(~inside)[0])
        raise ValueError(
            f"points[{bad}] = (y={pts[bad, 0]:g}, x={pts[bad, 1]:g}) lies outside the image of shape {pred.shape} "
            "(pixel centres at integer coordinates)."
        )
    if n_pred is None:
        n_pred = int(np.unique(pred[pred > 0]).size)
    hit = pred[idx[:, 0], idx[:, 1]]
    nuclei, per_nucleus = np.unique(hit[hit > 0], return_counts=True)
    tp = int(nuclei.size)
    fp, fn = n_pred - tp, len(idx) - tp
    f1 = 1.0 if tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn)
    precision = tp / (tp + fp) if tp + fp else float(fn == 0)
    recall = tp / (tp + fn) if tp + fn else float(fp == 0)
    merged = int(per_nucleus[per_nucleus > 1].sum())  # points sharing their nucleus with another point
    return {
        "f1": f1, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn,
        "merged": merged, "missed": int(np.count_nonzero(hit == 0)),
    }  # fmt: skip


def _point_error_fractions(counts: dict[str, float], n_points: int, n_pred: int) -> dict[str, float]:
    return {
        "merged_points": counts["merged"] / n_points if n_points else 0.0,
        "missed_points": counts["missed"] / n_points if n_points else 0.0,
        "pointless_nuclei": counts["fp"] / n_pred if n_pred else 0.0,
    }


def aji(pred: NdarrayOrTensor, gt: NdarrayOrTensor) -> float:
    """Aggregated Jaccard Index (Kumar et al., IEEE TMI 2017).

    For each GT nucleus ``G_i`` the predicted nucleus ``S_j`` of maximal IoU with it is picked (ties: lowest pred
    label; one prediction may be picked by several GT nuclei) and ``C += |G_i ∩ S_j|``, ``U += |G_i ∪ S_j|``.
    A GT nucleus overlapping no prediction adds ``|G_i|`` to ``U`` (and 0 to ``C``); finally every predicted nucleus
    never picked adds its area to ``U``. ``AJI = C / U``.

    Both maps empty: 1.0; exactly one empty: 0.0.

    Args:
        pred: predicted instance map (H, W) or (1, H, W), 0 = background.
        gt: ground-truth instance map of the same shape.
    """
    return _aji(_contingency(*_as_pair(pred, gt)))


def aji_plus(pred: NdarrayOrTensor, gt: NdarrayOrTensor) -> float:
    """AJI+ (Graham et al., HoVer-Net, MedIA 2019): AJI with a one-to-one pairing.

    GT and predicted nuclei are paired by the maximum-total-IoU unique assignment
    (``scipy.optimize.linear_sum_assignment`` on ``-IoU``), keeping pairs with IoU > 0. ``C`` and ``U`` sum
    intersections and unions over the pairs; every unpaired GT and every unpaired predicted nucleus adds its area
    to ``U``. ``AJI+ = C / U``; both maps empty: 1.0, exactly one empty: 0.0.
    """
    return _aji_plus(_contingency(*_as_pair(pred, gt)))


def object_dice(pred: NdarrayOrTensor, gt: NdarrayOrTensor) -> float:
    """Object-level Dice (Sirinukunwattana et al., GlaS challenge, MedIA 2017).

    ``0.5 * [sum_i |G_i|/sum|G| * Dice(G_i, S*(G_i)) + sum_j |S_j|/sum|S| * Dice(G*(S_j), S_j)]`` where
    ``S*(G_i)`` is the predicted nucleus with maximal intersection with ``G_i`` (ties: lowest label; Dice 0 when
    none overlaps) and ``G*(S_j)`` likewise. Symmetric in its arguments. Both maps empty: 1.0; one empty: 0.0.
    """
    return _object_dice(_contingency(*_as_pair(pred, gt)))


def pixel_iou(pred: NdarrayOrTensor, gt: NdarrayOrTensor) -> float:
    """Binary foreground IoU ``|P ∩ G| / |P ∪ G|`` of the masks ``label > 0``; both empty: 1.0."""
    return _pixel_iou(_contingency(*_as_pair(pred, gt)))


def pixel_f1(pred: NdarrayOrTensor, gt: NdarrayOrTensor) -> float:
    """Binary foreground F1 (Dice) ``2|P ∩ G| / (|P| + |G|)`` of the masks ``label > 0``; both empty: 1.0."""
    return _pixel_f1(_contingency(*_as_pair(pred, gt)))


def panoptic_quality(
    pred: NdarrayOrTensor, gt: NdarrayOrTensor, match_iou_threshold: float = 0.5, smooth_numerator: float = 1e-6
) -> dict[str, float]:
    """Panoptic quality (Kirillov et al. 2019) as in MONAI's ``compute_panoptic_quality``, from the overlap table.

    With ``match_iou_threshold >= 0.5`` a GT/pred pair is a true positive when its IoU is strictly above the
    threshold (the pairing is then unique); below 0.5 pairs come from ``linear_sum_assignment`` on ``-IoU`` and are
    kept when IoU > threshold. With ``tp`` pairs, ``fp`` unpaired predictions, ``fn`` unpaired GT nuclei and
    ``eps = smooth_numerator``: ``pq = sum IoU / (tp + fp/2 + fn/2 + eps)``, ``sq = sum IoU / (tp + eps)``,
    ``dq = tp / (tp + fp/2 + fn/2 + eps)`` (MONAI's "rq"). Both maps empty gives 0.0 for all three, as in MONAI.

    Returns:
        ``{"pq": ..., "sq": ..., "dq": ...}``.
    """
    return _panoptic_quality(_contingency(*_as_pair(pred, gt)), match_iou_threshold, smooth_numerator)


def point_f1(
    pred: NdarrayOrTensor, points: NdarrayOrTensor | Sequence[Sequence[float]], return_counts: bool = False
) -> float | dict[str, float]:
    """Detection F1 of predicted nuclei against annotated centroid points.

    ``points`` is an (N, 2) array of (y, x) pixel coordinates with pixel centres at integer coordinates; each is
    rounded with ``floor(c + 0.5)``. A point is matched to the instance containing its pixel and each instance to at
    most one point: ``tp`` = instances containing at least one point, ``fp`` = instances containing none,
    ``fn = N - tp`` (points on background plus the extra points of an instance). ``F1 = 2tp / (2tp + fp + fn)``;
    no points and no instances: 1.0.

    Args:
        pred: predicted instance map (H, W) or (1, H, W).
        points: (N, 2) (y, x) coordinates.
        return_counts: also return precision (``tp / (tp + fp)``, 1.0 if nothing was predicted and there are no
            points, else 0.0 when nothing was predicted), recall (likewise) and the counts.

    Returns:
        F1, or ``{"f1", "precision", "recall", "tp", "fp", "fn"}`` when ``return_counts``.

    Raises:
        ValueError: when a point (the first one is named) lies outside the image, or ``points`` is not (N, 2).
    """
    counts = _point_counts(_as_label_map(pred, "pred"), points)
    return counts if return_counts else counts["f1"]


def point_errors(pred: NdarrayOrTensor, points: NdarrayOrTensor | Sequence[Sequence[float]]) -> dict[str, float]:
    """The errors :func:`point_f1` counts, by kind, from points alone (no dense label): ``merged_points``, the
    fraction of points whose predicted nucleus holds another point too (under-segmentation: touching nuclei merged);
    ``missed_points``, the fraction of points on the background; ``pointless_nuclei``, the fraction of predicted
    nuclei that hold no point (false detections, or fragments of an over-segmented nucleus). 0.0 where there is no
    point (resp. no nucleus).

    Raises:
        ValueError: as :func:`point_f1`.
    """
    p = _as_label_map(pred, "pred")
    counts = _point_counts(p, points)
    return _point_error_fractions(counts, counts["tp"] + counts["fn"], counts["tp"] + counts["fp"])


def iou_at_points(pred: NdarrayOrTensor, gt: NdarrayOrTensor, points: np.ndarray) -> np.ndarray:
    """Per point ``i``: the IoU of nucleus ``i + 1`` of ``pred`` (a point-indexed map, as the refine labels) and the
    ``gt`` nucleus under the point (``nan`` where the point lies on the ``gt`` background). (N,) float64."""
    pred, gt = _as_pair(pred, gt)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pixel = np.clip(np.floor(points + 0.5).astype(np.int64), 0, np.array(gt.shape) - 1)
    ids = np.arange(1, len(points) + 1)
    truth = gt[pixel[:, 0], pixel[:, 1]].astype(np.int64)
    n_gt = int(gt.max(initial=0)) + 1
    pred_area = np.bincount(np.clip(pred.ravel(), 0, len(points) + 1), minlength=len(points) + 2)[ids]
    gt_area = np.bincount(gt.ravel(), minlength=n_gt)[truth]
    both = (pred > 0) & (gt > 0)
    codes, counts = np.unique(pred[both].astype(np.int64) * n_gt + gt[both], return_counts=True)
    wanted = ids * n_gt + truth
    at = np.clip(np.searchsorted(codes, wanted), 0, max(len(codes) - 1, 0))
    inter = np.where(codes[at] == wanted, counts[at], 0) if len(codes) else np.zeros(len(ids), dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (pred_area + gt_area - inter)
    return np.where(truth > 0, iou, np.nan)


def instance_metrics(
    pred: NdarrayOrTensor,
    gt: NdarrayOrTensor,
    points: NdarrayOrTensor | Sequence[Sequence[float]] | None = None,
    match_iou_threshold: float = 0.5,
) -> dict[str, float]:
    """All metrics of this module from one shared overlap table.

    Returns:
        ``{"aji", "aji_plus", "object_dice", "pixel_iou", "pixel_f1", "pq", "sq", "dq"}`` plus ``"point_f1"``
        (of ``pred`` against ``points``) and the :data:`POINT_ERRORS` (:func:`point_errors`) when ``points`` is
        given; definitions as in the single-metric functions.
    """
    p, g = _as_pair(pred, gt)
    ct = _contingency(p, g)
    out = {
        "aji": _aji(ct),
        "aji_plus": _aji_plus(ct),
        "object_dice": _object_dice(ct),
        "pixel_iou": _pixel_iou(ct),
        "pixel_f1": _pixel_f1(ct),
        **_panoptic_quality(ct, match_iou_threshold, 1e-6),
    }
    if points is not None:
        counts = _point_counts(p, points, n_pred=ct.n_pred)
        out["point_f1"] = counts["f1"]
        out.update(_point_error_fractions(counts, counts["tp"] + counts["fn"], ct.n_pred))
    return out


class InstanceSegmentationMetric(CumulativeIterationMetric):
    """One metric of this module as a MONAI cumulative metric (usable with ``monai.handlers.IgniteMetricHandler``).

    Each call takes batched instance maps ``y_pred``, ``y`` of shape (B, 1, H, W) (or lists of (1, H, W)) and
    buffers the B per-image values; :meth:`aggregate` returns their mean as a 0-dim float64 tensor.

    For ``metric_name="point_f1"``, ``y`` is a point map instead: every nonzero pixel of ``y`` is one annotated
    point (at that pixel's centre).

    Args:
        metric_name: one of ``METRIC_NAMES`` ("aji", "aji_plus", "object_dice", "pixel_iou", "pixel_f1", "pq",
            "sq", "dq", "point_f1"); "rq" is accepted for "dq".
        match_iou_threshold: IoU threshold of the panoptic-quality metrics.
    """

    def __init__(self, metric_name: str = "aji", match_iou_threshold: float = 0.5) -> None:
        super().__init__()
        name = metric_name.lower()
        name = "dq" if name == "rq" else name
        if name not in METRIC_NAMES:
            raise ValueError(f"metric_name must be one of {METRIC_NAMES}, got {metric_name!r}.")
        if not 0.0 < match_iou_threshold <= 1.0:
            raise ValueError(f"match_iou_threshold must be in (0, 1], got {match_iou_threshold}.")
        self.metric_name = name
        self.match_iou_threshold = match_iou_threshold

    def _one(self, pred: torch.Tensor, y: torch.Tensor) -> float:
        p, g = _as_pair(pred, y)
        if self.metric_name == "point_f1":
            return _point_counts(p, np.argwhere(g != 0).astype(float))["f1"]
        ct = _contingency(p, g)
        if self.metric_name in ("pq", "sq", "dq"):
            return _panoptic_quality(ct, self.match_iou_threshold, 1e-6)[self.metric_name]
        fn = {
            "aji": _aji,
            "aji_plus": _aji_plus,
            "object_dice": _object_dice,
            "pixel_iou": _pixel_iou,
            "pixel_f1": _pixel_f1,
        }[self.metric_name]
        return fn(ct)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Per-image values of shape (B, 1) for (B, 1, H, W) ``y_pred`` and ``y``."""
        if y is None:
            raise ValueError(f"{self.metric_name} needs a reference y.")
        if y_pred.ndim != 4 or y_pred.shape[1] != 1 or y_pred.shape != y.shape:
            raise ValueError(
                f"y_pred and y must both have shape (B, 1, H, W), got {tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        values = [self._one(p, g) for p, g in zip(y_pred, y, strict=True)]
        return torch.tensor(values, dtype=torch.float64, device=y_pred.device).reshape(-1, 1)

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Mean of all buffered per-image values, as a 0-dim float64 tensor."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("no values to aggregate: call the metric on at least one batch first.")
        return data.mean()
