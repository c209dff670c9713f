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
"""Shape-regularised pseudo instance masks from nucleus centroid points (stage 1 of the method).

Each point becomes a random filled ellipse centred on it: an area from a density-dependent prior, an
eccentricity and an angle. Nuclei are drawn in point order; a later nucleus may overlap an earlier one by at
most ``max_overlap`` of the earlier one's area and never covers an earlier point, otherwise it is re-sampled
(and shrunk a little more at every retry). All nuclei are rasterised together in their bounding boxes, so a
1000x1000 tile with ~500 points takes a few milliseconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Randomizable, Transform
from monai.utils import convert_data_type
from scipy.spatial import cKDTree
from scipy.special import betaincinv

from transforms.points_io import points_inside
from transforms.sampling import SamplerMapTransform, check_spatial_size

__all__ = ["EllipseSample", "PointsToEllipseMask", "PointsToEllipseMaskd"]

PRIORS = ("paper", "density")


@dataclass
class EllipseSample:
    """What :meth:`PointsToEllipseMask.sample` drew: the label map and each point's ellipse.

    ``semi_axes`` are ``(major, minor)`` in pixels, ``angles`` the major axis angle in radians measured from
    the x (column) axis towards +y (down), ``areas`` the pixels of each drawn ellipse before later nuclei
    covered part of it (0 for a dropped point); ``dropped`` maps a reason to the indices of points without a
    nucleus (``"duplicate"``: closer than ``duplicate_distance`` to an earlier point; ``"overlap"``: no
    admissible ellipse within ``max_retries``).
    """

    label: np.ndarray
    centers: np.ndarray
    semi_axes: np.ndarray
    angles: np.ndarray
    areas: np.ndarray
    dropped: dict[str, list[int]] = field(default_factory=dict)


class PointsToEllipseMask(Randomizable, Transform):
    """Turn ``(N, 2)`` ``(y, x)`` points into a ``(1, H, W)`` int32 instance map; nucleus ``i + 1`` holds point ``i``.

    Area priors (constants are in pixels at ``reference_mpp`` and rescaled to ``mpp``):

    - ``"paper"`` (Li et al. 2023): ``A ~ U(a, b(d))`` with ``a = area_range[0]`` and
      ``b(d) = min(area_range[1], pi * (reach * d)^2)``, ``d`` the distance to the nearest other point; where
      ``b < a`` the area is ``b``. ``reach`` is how far (as a fraction of ``d``) an equal-area circle may extend
      towards the neighbour.
    - ``"density"`` (the authors' code): ``A = Amax(rho) * Beta(alpha, beta)`` where ``rho`` is the point map
      smoothed by a Gaussian of ``density_sigma`` px read at the point, ``Amax = c0 exp(-c1 rho) + c2`` from
      ``density_max``, and alpha/beta match the mean ``density_mean`` and variance ``density_var`` (same form).

    Shape: eccentricity ``e ~ U(eccentricity_range)``, axis ratio ``minor/major = max(sqrt(1 - e^2),
    1 / max_axis_ratio)``, angle ``~ U(0, pi)``. An ellipse whose major semi-axis would reach further than
    ``max_extent`` times the distance to the nearest other point (and never onto that point) is made rounder at
    the same area, or, if even a circle would, smaller.

    Overlap: nuclei are painted in point order. When later nuclei cover more than ``max_overlap`` of an earlier
    one (the sum of pairwise overlaps) or cover an earlier point, the later ones are re-sampled with an area
    shrunk by ``retry_shrink`` per retry; after ``max_retries // 2`` failed retries the earlier one is re-sampled
    too, and after ``max_retries`` the later point is dropped (reported in ``dropped``).

    Args:
        spatial_size: ``(H, W)`` of the output; may instead be given at call time.
        prior: ``"paper"`` or ``"density"``.
        area_range: ``(a, Amax)`` of the paper prior, px^2 at ``reference_mpp``.
        reach: see the paper prior.
        density_sigma: Gaussian sigma of the density prior, px at ``reference_mpp``.
        density_mean, density_var, density_max: ``(c0, c1, c2)`` of ``c0 * exp(-c1 * rho) + c2``.
        eccentricity_range: bounds of the uniform eccentricity.
        max_axis_ratio: largest major/minor axis ratio.
        max_extent: largest major semi-axis as a fraction of the nearest-neighbour distance.
        max_overlap: largest fraction of an earlier nucleus that later ones may cover.
        max_retries: re-samples of an offending nucleus before its point is dropped.
        retry_shrink: factor applied to the area at every retry.
        duplicate_distance: points closer than this (px) to an earlier point are dropped as duplicates.
        mpp: microns per pixel of the input; reference_mpp: microns per pixel the constants refer to
            (0.25: MoNuSeg at 40x).
    """

    def __init__(
        self,
        spatial_size: Sequence[int] | None = None,
        prior: str = "paper",
        area_range: Sequence[float] = (256.0, 1440.0),
        reach: float = 0.75,
        density_sigma: float = 20.0,
        density_mean: Sequence[float] = (1000.0, 1000.0, 100.0),
        density_var: Sequence[float] = (1.7e6, 2800.0, 100.0),
        density_max: Sequence[float] = (8000.0, 1300.0, 200.0),
        eccentricity_range: Sequence[float] = (0.5, 0.99),
        max_axis_ratio: float = 2.0,
        max_extent: float = 0.9,
        max_overlap: float = 0.05,
        max_retries: int = 20,
        retry_shrink: float = 0.85,
        duplicate_distance: float = 0.5,
        mpp: float = 0.25,
        reference_mpp: float = 0.25,
    ) -> None:
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}.")
        if not 0 < area_range[0] <= area_range[1]:
            raise ValueError(f"area_range must be 0 < a <= Amax, got {tuple(area_range)}.")
        if not 0 <= eccentricity_range[0] <= eccentricity_range[1] < 1:
            raise ValueError(f"eccentricity_range must lie in [0, 1), got {tuple(eccentricity_range)}.")
        for name, value in (
            ("reach", reach),
            ("max_extent", max_extent),
            ("mpp", mpp),
            ("reference_mpp", reference_mpp),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}.")
        if max_axis_ratio < 1:
            raise ValueError(f"max_axis_ratio must be >= 1, got {max_axis_ratio}.")
        if not 0 <= max_overlap <= 1 or not 0 < retry_shrink <= 1 or max_retries < 0:
            raise ValueError("need 0 <= max_overlap <= 1, 0 < retry_shrink <= 1 and max_retries >= 0.")
        self.spatial_size = None if spatial_size is None else check_spatial_size(spatial_size)
        self.prior = prior
        self.area_range = (float(area_range[0]), float(area_range[1]))
        self.reach = float(reach)
        self.density_sigma = float(density_sigma)
        self.density_mean = tuple(map(float, density_mean))
        self.density_var = tuple(map(float, density_var))
        self.density_max = tuple(map(float, density_max))
        self.eccentricity_range = (float(eccentricity_range[0]), float(eccentricity_range[1]))
        self.min_axis_ratio = 1.0 / float(max_axis_ratio)
        self.max_extent = float(max_extent)
        self.max_overlap = float(max_overlap)
        self.max_retries = int(max_retries)
        self.retry_shrink = float(retry_shrink)
        self.duplicate_distance = float(duplicate_distance)
        self.scale = float(reference_mpp) / float(mpp)  # pixels of the input per reference pixel

    def randomize(self, data: int) -> None:
        """Draw the random numbers of ``data`` nuclei: area quantile, eccentricity, angle."""
        self._u_area = self.R.uniform(size=data)
        self._u_ecc = self.R.uniform(*self.eccentricity_range, size=data)
        self._u_angle = self.R.uniform(0.0, math.pi, size=data)

    def __call__(self, points: NdarrayOrTensor, spatial_size: Sequence[int] | None = None) -> MetaTensor:
        """Sample an instance map; ``meta["dropped_points"]`` is a JSON ``{reason: [point indices]}``."""
        result = self.sample(points, spatial_size)
        out = MetaTensor(torch.from_numpy(result.label[None]))
        out.meta["dropped_points"] = json.dumps(result.dropped)
        return out

    def sample(self, points: NdarrayOrTensor, spatial_size: Sequence[int] | None = None) -> EllipseSample:
        """Sample the ellipses of ``points`` and rasterise them; see :class:`EllipseSample`."""
        size = check_spatial_size(spatial_size) if spatial_size is not None else self.spatial_size
        if size is None:
            raise ValueError("PointsToEllipseMask needs spatial_size (H, W), at construction or call time.")
        points = _check_points(points, size)
        n = len(points)
        self.randomize(n)
        keep, dropped = self._deduplicate(points)
        neighbour = np.full(n, np.inf)
        if keep.sum() > 1:
            neighbour[keep] = cKDTree(points[keep]).query(points[keep], k=2)[0][:, 1]
        law = self._area_law(points, keep, neighbour)
        areas = self._areas(law, self._u_area)
        ratio = np.maximum(np.sqrt(1.0 - self._u_ecc**2), self.min_axis_ratio)
        semi_axes = self._fit_axes(areas, ratio, neighbour)
        angles = self._u_angle.copy()
        label, raster_areas = self._rasterise_resolving_overlap(
            points, neighbour, law, semi_axes, angles, keep, dropped, size
        )
        return EllipseSample(label, points.astype(np.float32), semi_axes, angles, raster_areas, dropped)

    def _max_major(self, neighbour: np.ndarray) -> np.ndarray:
        """Largest major semi-axis: ``max_extent`` of the nearest-neighbour distance, short of its pixel."""
        return np.maximum(np.minimum(self.max_extent * neighbour, neighbour - 0.75), 0.5)

    def _fit_axes(self, areas: np.ndarray, ratio: np.ndarray, neighbour: np.ndarray) -> np.ndarray:
        """``(major, minor)`` semi-axes of the given areas and axis ratios; an ellipse longer than
        :meth:`_max_major` is made rounder (same area) or, if even a circle would be too long, smaller."""
        reach = self._max_major(neighbour)
        major = np.sqrt(areas / (math.pi * ratio))
        too_long = major > reach
        ratio = np.where(too_long, np.minimum(areas / (math.pi * reach**2), 1.0), ratio)
        major = np.where(too_long, reach, major)
        return np.stack([major, major * ratio], axis=1)

    def _deduplicate(self, points: np.ndarray) -> tuple[np.ndarray, dict[str, list[int]]]:
        keep = np.ones(len(points), dtype=bool)
        if len(points) > 1 and self.duplicate_distance > 0:
            pairs = cKDTree(points).query_pairs(self.duplicate_distance, output_type="ndarray")
            if len(pairs):
                for i, j in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]:
                    if keep[min(i, j)]:
                        keep[max(i, j)] = False
        dropped = {"duplicate": np.flatnonzero(~keep).tolist()} if not keep.all() else {}
        return keep, dropped

    def _area_law(self, points: np.ndarray, keep: np.ndarray, neighbour: np.ndarray) -> np.ndarray:
        """Per-point parameters of the area distribution, in input pixels^2: ``(low, high)`` of the uniform
        (paper prior) or ``(Amax, alpha, beta)`` of the scaled Beta (density prior); zeros for dropped points."""
        law = np.zeros((len(points), 3))
        if self.prior == "paper":
            high = np.minimum(self.area_range[1], math.pi * (self.reach * neighbour[keep] / self.scale) ** 2)
            law[keep, 0] = np.minimum(self.area_range[0], high) * self.scale**2
            law[keep, 1] = high * self.scale**2
        else:
            rho = _gaussian_density(points[keep] / self.scale, self.density_sigma)
            amax = _exp_law(self.density_max, rho)
            mean = np.minimum(_exp_law(self.density_mean, rho) / amax, 0.999)
            var = np.minimum(_exp_law(self.density_var, rho) / amax**2, 0.99 * mean * (1 - mean))
            common = mean * (1 - mean) / var - 1
            law[keep] = np.stack([amax * self.scale**2, mean * common, (1 - mean) * common], axis=1)
        return law

    def _areas(self, law: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
        """Areas (input pixels^2, at least 1) at the given uniform quantiles of each point's law."""
        if self.prior == "paper":
            areas = law[:, 0] + quantiles * (law[:, 1] - law[:, 0])
        else:
            areas = law[:, 0] * betaincinv(np.maximum(law[:, 1], 1e-6), np.maximum(law[:, 2], 1e-6), quantiles)
        return np.maximum(areas, 1.0)

    def _rasterise_resolving_overlap(
        self,
        points: np.ndarray,
        neighbour: np.ndarray,
        law: np.ndarray,
        semi_axes: np.ndarray,
        angles: np.ndarray,
        keep: np.ndarray,
        dropped: dict[str, list[int]],
        size: tuple[int, int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rasterise the kept ellipses, re-sampling offenders until no overlap rule is broken; returns the label
        map and each ellipse's pixel count."""
        pixel = np.floor(points + 0.5).astype(np.int64)
        # largest semi-axis any (re-)sample can have bounds the rows of a nucleus and its possible neighbours
        high = law[:, 1] if self.prior == "paper" else law[:, 0]
        extent = np.minimum(self._max_major(neighbour), np.sqrt(high / (math.pi * self.min_axis_ratio))) + 1
        spans = _EllipseSpans(pixel, size, n_rows=2 * int(math.ceil(extent.max(initial=1.0))) + 3)
        kept = np.flatnonzero(keep)
        spans.draw(kept, points, semi_axes, angles)
        first, second = _candidate_pairs(points, kept, extent)
        overlap = spans.overlap(first, second)
        shrink = np.ones(len(points))
        tries = np.zeros(len(points), dtype=np.int64)
        for attempt in range(self.max_retries + 1):
            later, earlier = self._offenders(spans, first, second, overlap, len(points))
            culprits = np.unique(later)
            if culprits.size == 0:
                break
            if attempt == self.max_retries:
                keep[culprits] = False
                dropped.setdefault("overlap", []).extend(culprits.tolist())
                spans.erase(culprits)
                break
            # re-sample the offending later nuclei (and, once they have failed often, the earlier ones they
            # cannot avoid): a fresh shape, an area shrunk a little more every time
            stuck = earlier[tries[later] >= self.max_retries // 2] if self.max_retries > 1 else earlier[:0]
            redraw = np.union1d(culprits, stuck)
            tries[culprits] += 1
            shrink[redraw] *= self.retry_shrink
            areas = self._areas(law[redraw], self.R.uniform(size=redraw.size)) * shrink[redraw]
            ecc = self.R.uniform(*self.eccentricity_range, size=redraw.size)
            ratio = np.maximum(np.sqrt(1.0 - ecc**2), self.min_axis_ratio)
            semi_axes[redraw] = self._fit_axes(areas, ratio, neighbour[redraw])
            angles[redraw] = self.R.uniform(0.0, math.pi, size=redraw.size)
            spans.draw(redraw, points, semi_axes, angles)
            touched = np.zeros(len(points), dtype=bool)
            touched[redraw] = True
            redo = touched[first] | touched[second]
            overlap[redo] = spans.overlap(first[redo], second[redo])
        return spans.paint(), spans.area.copy()

    def _offenders(
        self, spans: _EllipseSpans, first: np.ndarray, second: np.ndarray, overlap: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Offending pairs ``(later, earlier)``: the later nucleus covers the earlier one's point, or it overlaps
        an earlier nucleus that later ones cover by more than ``max_overlap`` (sum of pairwise overlaps)."""
        lost = np.bincount(first, weights=overlap, minlength=n)
        victim = lost > self.max_overlap * np.maximum(spans.area, 1)
        offends = (victim[first] & (overlap > 0)) | spans.covers_point(second, first)
        return second[offends], first[offends]


class _EllipseSpans:
    """Filled ellipses stored as one column span ``[lo, hi]`` per image row (rows ``top .. top + n_rows - 1``).

    Overlaps and areas are computed on spans, not pixels; only :meth:`paint` touches the image.
    """

    def __init__(self, pixel: np.ndarray, size: tuple[int, int], n_rows: int) -> None:
        n = len(pixel)
        self.pixel, self.size = pixel, size
        self.top = np.zeros(n, dtype=np.int64)
        self.lo = np.ones((n, n_rows), dtype=np.int64)  # lo > hi: an empty row
        self.hi = np.zeros((n, n_rows), dtype=np.int64)
        self.area = np.zeros(n, dtype=np.int64)

    def draw(self, which: np.ndarray, points: np.ndarray, semi_axes: np.ndarray, angles: np.ndarray) -> None:
        """(Re)compute the spans of the nuclei ``which``; each always contains its point's pixel."""
        height, width = self.size
        n_rows = self.lo.shape[1]
        cy, cx = points[which, 0:1], points[which, 1:2]
        a2, b2 = semi_axes[which, 0:1] ** 2, semi_axes[which, 1:2] ** 2
        cos, sin = np.cos(angles[which])[:, None], np.sin(angles[which])[:, None]
        py, px = self.pixel[which, 0:1], self.pixel[which, 1:2]
        top = py - n_rows // 2
        dy = top + np.arange(n_rows) - cy
        # (dx cos + dy sin)^2 / a^2 + (dy cos - dx sin)^2 / b^2 <= 1, a quadratic in dx for every row
        qa = cos**2 / a2 + sin**2 / b2
        qb = 2 * dy * cos * sin * (1 / a2 - 1 / b2)
        qc = dy**2 * (sin**2 / a2 + cos**2 / b2) - 1
        root = np.sqrt(np.maximum(qb**2 - 4 * qa * qc, 0.0))
        inside = qb**2 - 4 * qa * qc >= 0
        lo = np.where(inside, np.ceil(cx + (-qb - root) / (2 * qa)), 1).astype(np.int64)
        hi = np.where(inside, np.floor(cx + (-qb + root) / (2 * qa)), 0).astype(np.int64)
        centre = n_rows // 2
        empty = lo[:, centre] > hi[:, centre]
        lo[:, centre] = np.where(empty, px[:, 0], np.minimum(lo[:, centre], px[:, 0]))
        hi[:, centre] = np.where(empty, px[:, 0], np.maximum(hi[:, centre], px[:, 0]))
        rows = top + np.arange(n_rows)
        outside = (rows < 0) | (rows >= height)
        lo = np.where(outside, 1, np.maximum(lo, 0))
        hi = np.where(outside, 0, np.minimum(hi, width - 1))
        self.top[which], self.lo[which], self.hi[which] = top[:, 0], lo, hi
        self.area[which] = np.maximum(hi - lo + 1, 0).sum(axis=1)

    def erase(self, which: np.ndarray) -> None:
        self.lo[which], self.hi[which], self.area[which] = 1, 0, 0

    def overlap(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Pixels shared by the nuclei of each pair."""
        n_rows = self.lo.shape[1]
        shift = self.top[second] - self.top[first]  # row k of `first` is row k - shift of `second`
        k2 = np.arange(n_rows) - shift[:, None]
        valid = (k2 >= 0) & (k2 < n_rows)
        k2 = np.clip(k2, 0, n_rows - 1)
        lo = np.maximum(self.lo[first], np.take_along_axis(self.lo[second], k2, axis=1))
        hi = np.minimum(self.hi[first], np.take_along_axis(self.hi[second], k2, axis=1))
        return (np.maximum(hi - lo + 1, 0) * valid).sum(axis=1)

    def covers_point(self, covering: np.ndarray, covered: np.ndarray) -> np.ndarray:
        """Whether nucleus ``covering`` contains the point pixel of ``covered``, pair by pair."""
        k = self.pixel[covered, 0] - self.top[covering]
        valid = (k >= 0) & (k < self.lo.shape[1])
        k = np.clip(k, 0, self.lo.shape[1] - 1)
        col = self.pixel[covered, 1]
        return valid & (self.lo[covering, k] <= col) & (col <= self.hi[covering, k])

    def paint(self) -> np.ndarray:
        """The ``(H, W)`` int32 label map, nucleus ``i`` painted as ``i + 1`` in index order (later on top)."""
        height, width = self.size
        length = np.maximum(self.hi - self.lo + 1, 0).ravel()
        nucleus = np.repeat(np.arange(self.lo.shape[0], dtype=np.int32), self.lo.shape[1])[length > 0]
        start = ((self.top[:, None] + np.arange(self.lo.shape[1])) * width + self.lo).ravel()[length > 0]
        length = length[length > 0]
        offset = np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
        flat = np.repeat(start, length) + offset
        label = np.zeros(height * width, dtype=np.int32)
        np.maximum.at(label, flat, np.repeat(nucleus + 1, length))
        return label.reshape(height, width)


def _candidate_pairs(points: np.ndarray, kept: np.ndarray, extent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(i, j)``, ``i < j``, of kept nuclei whose largest possible ellipses could touch."""
    if kept.size < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = cKDTree(points[kept]).query_pairs(2 * extent[kept].max(), output_type="ndarray")
    first, second = kept[pairs.min(axis=1)], kept[pairs.max(axis=1)]
    close = np.linalg.norm(points[first] - points[second], axis=1) <= extent[first] + extent[second]
    return first[close], second[close]


class PointsToEllipseMaskd(SamplerMapTransform):
    """Dictionary version of :class:`PointsToEllipseMask`.

    Args:
        keys: key of the ``(N, 2)`` points.
        label_key: key the ``(1, H, W)`` instance map is written to.
        ref_key: key of a channel-first image whose spatial shape is used when ``spatial_size`` is None.
        spatial_size: explicit ``(H, W)``.
        kwargs: :class:`PointsToEllipseMask` arguments.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        ref_key: str | None = "image",
        spatial_size: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"PointsToEllipseMaskd takes one points key, got {self.keys}.")
        if spatial_size is None and ref_key is None:
            raise ValueError("PointsToEllipseMaskd needs ref_key or spatial_size.")
        self.sampler = PointsToEllipseMask(spatial_size=spatial_size, **kwargs)
        self.label_key = label_key
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            size = self.reference_size(d)
            d[self.label_key] = self.sampler(d[key], size)
        return d


def _check_points(points: NdarrayOrTensor, size: tuple[int, int]) -> np.ndarray:
    array = np.asarray(convert_data_type(points, np.ndarray)[0], dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 2))
    if array.ndim == 3 and array.shape[0] == 1:  # MONAI's (C, N, dims) point layout
        array = array[0]
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"points must be an (N, 2) array of (y, x), got shape {array.shape}.")
    if not np.isfinite(array).all():
        raise ValueError(
            f"points contain NaN or infinite values (first: index {np.argmin(np.isfinite(array).all(1))})."
        )
    h, w = size
    outside = ~points_inside(array, size)
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(
            f"{int(outside.sum())} point(s) outside the {h}x{w} image (first: index {i}, "
            f"y={array[i, 0]:.1f}, x={array[i, 1]:.1f}); points are (y, x) pixel coordinates."
        )
    return array


def _exp_law(coefficients: Sequence[float], rho: np.ndarray) -> np.ndarray:
    c0, c1, c2 = coefficients
    return c0 * np.exp(-c1 * rho) + c2


def _gaussian_density(points: np.ndarray, sigma: float) -> np.ndarray:
    """The point map smoothed by a unit-mass Gaussian (truncated at 4 sigma), read at each point."""
    if len(points) == 0:
        return np.zeros(0)
    pairs = cKDTree(points).sparse_distance_matrix(cKDTree(points), 4.0 * sigma, output_type="coo_matrix")
    weights = np.exp(-(pairs.data**2) / (2 * sigma**2))
    density = np.bincount(pairs.row, weights=weights, minlength=len(points))
    return density / (2 * math.pi * sigma**2)
