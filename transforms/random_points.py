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
"""Fully synthetic nucleus point sets whose statistics follow a prior fitted to real point files.

The model is a log-Gaussian Cox process thinned by sequential inhibition (a soft hard core):

1. tile density ``D`` (points per 10^4 px^2): a mean-preserving lognormal kernel density estimate of the real
   per-tile densities (pick one real tile density ``d_k`` at random, multiply by ``exp(b Z - b^2 / 2)``,
   ``Z ~ N(0, 1)``, ``b`` the bandwidth); the requested count is ``Poisson(D * area / 10^4)``;
2. intensity ``lambda(u) = D / 10^4 * exp(sigma G(u)) / mean_tile(exp(sigma G))``: ``G`` a unit-variance
   Gaussian random field of correlation ``exp(-r^2 / (2 l^2))`` (white noise smoothed by a Gaussian of
   ``l / sqrt(2)`` px on a grid of ``~l / 3`` px), ``sigma = cluster_sigma``, ``l = cluster_scale``;
3. points are placed one after another (dart throwing, vectorised in batches but exactly sequential):
   a candidate is drawn from ``lambda`` and rejected if an earlier point lies closer than its inhibition
   distance ``r = c / sqrt(lambda(u))``, ``c ~ U(hard_core, soft_core)`` in units of the local mean spacing.
   So no two points are ever closer than ``hard_core / sqrt(lambda)`` and denser regions pack tighter, as
   nuclei do.

Every constant comes from the prior (see :func:`load_point_prior`), fitted by ``python -m scripts fit_points``.
Distances and densities are in pixels at the prior's ``mpp`` and rescaled to the requested ``mpp``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Randomizable, Transform
from scipy.ndimage import gaussian_filter, gaussian_filter1d
from scipy.spatial import cKDTree

from transforms.sampling import SamplerMapTransform, check_spatial_size

__all__ = ["PointSample", "RandomPoints", "RandomPointsd", "load_point_prior", "PRIOR_KEYS"]

AREA_UNIT = 1e4  # densities are points per 10^4 px^2
# number keys of a prior -> (lower bound, whether the bound is allowed)
PRIOR_KEYS: dict[str, tuple[float, bool]] = {
    "mpp": (0.0, False),
    "hard_core": (0.0, True),
    "soft_core": (0.0, True),
    "cluster_sigma": (0.0, True),
    "cluster_scale": (0.0, False),
}
MAX_CORE = 0.9  # random sequential packing of equal discs jams at ~0.83 mean spacings


@dataclass
class PointSample:
    """What :meth:`RandomPoints.sample` drew: ``points`` ``(N, 2)`` float32 ``(y, x)``; ``radii`` each point's
    inhibition distance in px (no earlier point lies closer); ``density`` the tile density (points per
    10^4 px^2) and ``requested`` the count drawn for it (``len(points)`` is smaller only if packing jammed)."""

    points: np.ndarray
    radii: np.ndarray
    density: float
    requested: int


def load_point_prior(prior: Mapping | str | os.PathLike) -> dict:
    """Read (if a path) and validate a point prior; return it as a plain dict with float values.

    Required keys: ``mpp`` (> 0, um/px of the fit), ``density`` (``{"values": [> 0, ...], "bandwidth": >= 0}``,
    per-tile densities in points per 10^4 px^2), ``hard_core`` and ``soft_core`` (``0 <= hard_core <= soft_core
    < 0.9``, in local mean spacings), ``cluster_sigma`` (>= 0), ``cluster_scale`` (> 0, px). Other keys
    (provenance, statistics) are kept as they are.

    Raises:
        ValueError: unreadable file, missing key, wrong type or out-of-range value; the message names the file
            (or ``point prior``) and the key.
    """
    source = "point prior"
    if isinstance(prior, (str, os.PathLike)):
        source = str(prior)
        try:
            prior = json.loads(Path(prior).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{source}: cannot read the point prior ({e})") from None
    if not isinstance(prior, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(prior).__name__}")
    out = dict(prior)
    for key, (bound, inclusive) in PRIOR_KEYS.items():
        out[key] = _number(prior, key, source, bound, inclusive)
    if out["soft_core"] < out["hard_core"] or out["soft_core"] >= MAX_CORE:
        raise ValueError(
            f"{source}: 'soft_core' must satisfy hard_core <= soft_core < {MAX_CORE}, got "
            f"hard_core={out['hard_core']}, soft_core={out['soft_core']}"
        )
    density = prior.get("density")
    if not isinstance(density, Mapping):
        raise ValueError(f"{source}: 'density' missing or not an object {{'values': [...], 'bandwidth': b}}")
    values = density.get("values")
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{source}: 'density.values' must be a non-empty list of per-tile densities")
    checked = [_number({"value": v}, "value", source, 0.0, False, f"density.values[{i}]") for i, v in enumerate(values)]
    out["density"] = {
        **density,
        "values": checked,
        "bandwidth": _number(density, "bandwidth", source, 0.0, True, "density.bandwidth"),
    }
    return out


def _number(mapping: Mapping, key: str, source: str, bound: float, inclusive: bool, name: str | None = None) -> float:
    name = name or key
    if key not in mapping:
        raise ValueError(f"{source}: missing key '{name}'")
    value = mapping[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{source}: '{name}' must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or (value < bound if inclusive else value <= bound):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"{source}: '{name}' must be a finite number {relation} {bound:g}, got {value!r}")
    return float(value)


class RandomPoints(Randomizable, Transform):
    """Sample an ``(N, 2)`` float32 ``(y, x)`` point set (pixel centres at integers, all inside the tile) from a
    fitted point prior; see the module docstring for the model.

    Args:
        prior: the prior dict or the path of its JSON file (``python -m scripts fit_points`` writes one).
        spatial_size: ``(H, W)`` of the tile; may instead be given at call time.
        mpp: microns per pixel of the output; ``None``: the prior's. Distances scale with ``prior mpp / mpp``,
            densities with its inverse square.
        max_candidates: candidates tried per requested point before giving up (only when packing jams).

    The output is a :class:`monai.data.MetaTensor` whose ``meta`` holds ``spatial_shape``, ``density`` (points
    per 10^4 px^2 of the output) and ``requested`` (the drawn count).
    """

    def __init__(
        self,
        prior: Mapping | str | os.PathLike,
        spatial_size: Sequence[int] | None = None,
        mpp: float | None = None,
        max_candidates: int = 50,
    ) -> None:
        self.prior = load_point_prior(prior)
        if mpp is not None and not mpp > 0:
            raise ValueError(f"mpp must be positive, got {mpp}.")
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates}.")
        self.spatial_size = None if spatial_size is None else check_spatial_size(spatial_size)
        self.scale = 1.0 if mpp is None else self.prior["mpp"] / float(mpp)  # output px per prior px
        self.max_candidates = int(max_candidates)
        self._log_density = np.log(np.asarray(self.prior["density"]["values"], dtype=np.float64))
        self._bandwidth = self.prior["density"]["bandwidth"]

    def randomize(self, data: tuple[int, int], density: float | None = None, count: int | None = None) -> None:
        """Draw the tile density, the count and the intensity field of a tile of size ``data`` (a given
        ``density`` or ``count`` is used instead of a draw)."""
        h, w = data
        k = self.R.randint(len(self._log_density))
        log_d = self._log_density[k] + self._bandwidth * self.R.standard_normal() - self._bandwidth**2 / 2
        if density is None:
            density = count * AREA_UNIT / (h * w) if count is not None else math.exp(log_d) / self.scale**2
        self._density = float(density)
        self._requested = int(count) if count is not None else int(self.R.poisson(self._density * h * w / AREA_UNIT))
        self._field = self._intensity_field(h, w)

    def __call__(self, spatial_size: Sequence[int] | None = None) -> MetaTensor:
        """Sample one tile's points as an ``(N, 2)`` float32 MetaTensor."""
        result = self.sample(spatial_size)
        out = MetaTensor(torch.from_numpy(result.points))
        out.meta.update(
            {"spatial_shape": self._size(spatial_size), "density": result.density, "requested": result.requested}
        )
        return out

    def sample(
        self, spatial_size: Sequence[int] | None = None, density: float | None = None, count: int | None = None
    ) -> PointSample:
        """Sample one tile (see :class:`PointSample`), optionally at a given ``density`` (points per 10^4 px^2;
        the count is then ``Poisson(density * area)``) or with exactly ``count`` points."""
        size = self._size(spatial_size)
        if density is not None and not density >= 0 or count is not None and count < 0 or density == 0 and count:
            raise ValueError(f"need density >= 0, count >= 0 and no points at density 0, got {density}, {count}.")
        self.randomize(size, density, count)
        points, radii = self._place(size)
        return PointSample(points, radii, self._density, self._requested)

    def _size(self, spatial_size: Sequence[int] | None) -> tuple[int, int]:
        size = check_spatial_size(spatial_size) if spatial_size is not None else self.spatial_size
        if size is None:
            raise ValueError("RandomPoints needs spatial_size (H, W), at construction or call time.")
        return size

    def _intensity_field(self, h: int, w: int) -> tuple[np.ndarray, float, float]:
        """Relative intensity per cell (mean 1 over the tile) on a grid of cells ``(cy, cx)`` px."""
        sigma, scale = self.prior["cluster_sigma"], self.prior["cluster_scale"] * self.scale
        cell = max(scale / 3.0, max(h, w) / 256.0, 1.0)
        ny, nx = max(1, math.ceil(h / cell)), max(1, math.ceil(w / cell))
        if sigma == 0:
            return np.ones((ny, nx)), h / ny, w / nx
        cy, cx = h / ny, w / nx
        smooth = (scale / math.sqrt(2.0) / cy, scale / math.sqrt(2.0) / cx)  # correlation exp(-r^2 / (2 scale^2))
        pad = (int(math.ceil(4 * smooth[0])) + 1, int(math.ceil(4 * smooth[1])) + 1)
        noise = self.R.standard_normal((ny + 2 * pad[0], nx + 2 * pad[1]))
        field = gaussian_filter(noise, smooth, mode="constant")[pad[0] : pad[0] + ny, pad[1] : pad[1] + nx]
        for sd, p in zip(smooth, pad, strict=True):  # unit variance: divide by the kernel's L2 norm, axis by axis
            impulse = np.zeros(2 * p + 1)
            impulse[p] = 1.0
            field /= math.sqrt(np.sum(gaussian_filter1d(impulse, sd, mode="constant") ** 2))
        weight = np.exp(sigma * field)
        return weight / weight.mean(), cy, cx

    def _place(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Sequential inhibition in batches: candidates from the intensity, earlier points inhibit later ones."""
        h, w = size
        weight, cy, cx = self._field
        n = self._requested
        if n == 0:
            return np.zeros((0, 2), np.float32), np.zeros(0)
        cdf = np.cumsum(weight.ravel())
        cdf /= cdf[-1]
        spacing = 1.0 / np.sqrt(self._density / AREA_UNIT * weight.ravel())  # local mean spacing per cell, px
        hard, soft = self.prior["hard_core"], self.prior["soft_core"]
        points = np.zeros((0, 2))
        radii = np.zeros(0)
        budget = self.max_candidates * n
        while len(points) < n and budget > 0:
            m = min(max(n, 64), budget)  # a fixed batch size keeps the stream of candidates fixed
            budget -= m
            cells = np.minimum(np.searchsorted(cdf, self.R.random_sample(m), side="right"), cdf.size - 1)
            row, col = np.divmod(cells, weight.shape[1])
            cand = np.stack([(row + self.R.random_sample(m)) * cy, (col + self.R.random_sample(m)) * cx], 1) - 0.5
            r = spacing[cells] * (hard + (soft - hard) * self.R.random_sample(m))
            ok = np.ones(m, dtype=bool)
            if len(points):
                dist = cKDTree(points).query(cand, distance_upper_bound=float(r.max()))[0]
                ok = dist >= r
            idx = np.flatnonzero(ok)
            keep = _sequential(cand[idx], r[idx])
            idx = idx[keep][: n - len(points)]
            points = np.concatenate([points, cand[idx]])
            radii = np.concatenate([radii, r[idx]])
        out = points.astype(np.float32)
        for axis, extent in enumerate((h, w)):  # float32 rounding must not push a point onto the far border
            np.clip(out[:, axis], -0.5, np.nextafter(np.float32(extent - 0.5), np.float32(0)), out=out[:, axis])
        return out, radii


def _sequential(cand: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Which candidates survive, in order: ``j`` is rejected if an earlier survivor ``i`` is closer than ``r[j]``."""
    keep = np.ones(len(cand), dtype=bool)
    if len(cand) < 2:
        return keep
    near = cKDTree(cand).query_ball_point(cand, r)  # each candidate's own radius: no all-pairs blow-up
    counts = np.fromiter(map(len, near), dtype=np.int64, count=len(cand))
    i = np.concatenate(near).astype(np.int64)
    j = np.repeat(np.arange(len(cand)), counts)
    close = (i < j) & (np.linalg.norm(cand[i] - cand[j], axis=1) < r[j])
    i, j = i[close], j[close]
    for a, b in zip(*(x[np.lexsort((i, j))] for x in (i, j)), strict=True):  # by later point: a's fate is known
        if keep[a]:
            keep[b] = False
    return keep


class RandomPointsd(SamplerMapTransform):
    """Dictionary version of :class:`RandomPoints`: writes a fresh point set into every key of ``keys``.

    Args:
        keys: keys the ``(N, 2)`` points are written to (they need not exist).
        prior: the prior dict or JSON path.
        spatial_size: ``(H, W)``; if None, the spatial shape of the channel-first image at ``ref_key``.
        ref_key: see ``spatial_size``.
        kwargs: further :class:`RandomPoints` arguments (``mpp``, ``max_candidates``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        prior: Mapping | str | os.PathLike,
        spatial_size: Sequence[int] | None = None,
        ref_key: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        if spatial_size is None and ref_key is None:
            raise ValueError("RandomPointsd needs spatial_size or ref_key.")
        self.sampler = RandomPoints(prior, spatial_size=spatial_size, **kwargs)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        size = self.reference_size(d)
        for key in self.keys:
            d[key] = self.sampler(size)
        return d
