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
"""Fit the point prior of :class:`transforms.RandomPoints` to real point files.

``python -m scripts fit_points --data DIR [--split split.json --section train] --output prior.json``

Statistics of a point set (:func:`point_statistics`, pooled over tiles by :func:`pooled_statistics`):

- ``density``: points per 10^4 px^2 (mean over tiles);
- ``nn``: quantiles of the nearest-neighbour distance in px (pooled over all points);
- ``vmr``: variance-to-mean ratio of the counts in square quadrats of 50, 100 and 200 px (mean over the tiles
  that hold at least 2x2 quadrats): 1 for a Poisson process, above 1 for clustered, below for regular points.

The fit (:func:`fit_point_prior`): the density law is a lognormal kernel density estimate of the per-tile
densities (Silverman bandwidth on the log densities). The four shape parameters (``hard_core``, ``soft_core``,
``cluster_sigma``, ``cluster_scale``) start from closed-form estimates (core distances from the 5 % and 50 %
quantiles of the nearest-neighbour distance in mean spacings; ``sigma^2 = log(1 + (VMR - 1) / m)``, the
lognormal relation at the largest quadrat with mean count ``m``; the scale from the quadrat size) and are then
refined by the method of simulated moments: the log ratios of simulated to real NN 5 % and 50 % (weight 2)
quantiles and VMR at the two largest quadrat sizes are driven to 0 by bounded Gauss-Newton steps with Broyden
updates, simulating every real tile at its own size and point count (replicated to ~50k points) with common
random numbers, so the fit is deterministic for a seed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from scripts.data.atomic import atomic_path
from scripts.data.datalist import PrepareError, build_datalist, read_image_info
from transforms.points_io import POINT_FILE_SUFFIXES, PointsFileError, points_inside, read_points
from transforms.random_points import AREA_UNIT, MAX_CORE, RandomPoints, load_point_prior

__all__ = [
    "QUADRAT_SIZES",
    "NN_QUANTILES",
    "point_statistics",
    "pooled_statistics",
    "fit_point_prior",
    "read_tiles",
    "write_prior",
]

QUADRAT_SIZES = (50, 100, 200)
NN_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_MIN_QUADRATS = 4
_SIM_POINTS = 50000  # simulated points per evaluation of the moments (real tiles are replicated up to this)
_SIM_MAX_TILES = 160  # ... but to no more tiles than this
_STEPS = np.array([0.05, 0.1, 0.05, 0.15])  # finite-difference steps (and trust-region units) of the parameters
_TOLERANCE = 0.01  # stop when every simulated moment is within 1 % of the real one


def point_statistics(
    points: np.ndarray, spatial_size: Sequence[int], quadrat_sizes: Sequence[int] = QUADRAT_SIZES
) -> dict:
    """Statistics of one tile's ``(N, 2)`` ``(y, x)`` points: ``n_points``, ``area`` (px^2), ``density``
    (per 10^4 px^2), ``nn`` (NN distance quantiles, px; ``None`` below 2 points) and ``vmr`` (quadrat
    variance-to-mean ratio per quadrat size; ``None`` with fewer than 2x2 quadrats or no point in them)."""
    points, size = _check(points, spatial_size)
    nn = _nn_distances(points)
    return {
        "n_points": len(points),
        "area": float(size[0] * size[1]),
        "density": len(points) * AREA_UNIT / (size[0] * size[1]),
        "nn": _quantiles(nn),
        "vmr": {str(q): _vmr(points, size, q) for q in quadrat_sizes},
    }


def pooled_statistics(
    items: Sequence[tuple[np.ndarray, Sequence[int]]], quadrat_sizes: Sequence[int] = QUADRAT_SIZES
) -> dict:
    """Statistics of several tiles ``[(points, (H, W)), ...]``: ``n_tiles``, ``n_points``, ``density`` (mean and
    sd over tiles), ``nn`` (quantiles of all tiles' NN distances pooled) and ``vmr`` (mean over the tiles where
    it is defined, ``None`` where it is nowhere)."""
    checked = [_check(p, s) for p, s in items]
    if not checked:
        raise ValueError("pooled_statistics needs at least one tile.")
    densities = np.array([len(p) * AREA_UNIT / (s[0] * s[1]) for p, s in checked])
    nn = np.concatenate([_nn_distances(p) for p, _ in checked])
    vmr = {}
    for q in quadrat_sizes:
        values = [v for p, s in checked if (v := _vmr(p, s, q)) is not None]
        vmr[str(q)] = float(np.mean(values)) if values else None
    return {
        "n_tiles": len(checked),
        "n_points": int(sum(len(p) for p, _ in checked)),
        "density": {"mean": float(densities.mean()), "sd": float(densities.std())},
        "nn": _quantiles(nn),
        "vmr": vmr,
    }


def fit_point_prior(
    items: Sequence[tuple[np.ndarray, Sequence[int]]], mpp: float = 0.25, seed: int = 0, max_evaluations: int = 16
) -> dict:
    """Fit a :class:`transforms.RandomPoints` prior to real tiles ``[(points, (H, W)), ...]`` (see the module
    docstring); ``mpp`` is their microns per pixel, ``seed`` that of the simulations, ``max_evaluations`` their
    budget (each simulates all tiles). The returned dict holds the parameters, the provenance (``n_tiles``,
    ``n_points``, ``mpp``), the real ``statistics`` and the ``simulated`` ones of the fitted prior (another seed)."""
    checked = [_check(p, s) for p, s in items]
    if not checked or not any(len(p) for p, _ in checked):
        raise ValueError("fit_point_prior needs at least one tile with points.")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}.")
    real = pooled_statistics(checked)
    log_d = np.log([max(len(p), 0.5) * AREA_UNIT / (s[0] * s[1]) for p, s in checked])
    prior = {
        "version": 1,
        "model": "log-Gaussian Cox process thinned by sequential inhibition (transforms.RandomPoints)",
        "mpp": float(mpp),
        "density": {"values": [round(float(math.exp(v)), 6) for v in log_d], "bandwidth": _silverman(log_d)},
        **_initial_shape(checked, real),
    }
    moments = _moment_names(real)
    if real["nn"] is not None and len(moments) > 2:  # NN distances and a VMR: refine by simulated moments
        target = np.log([_moment(real, m) for m in moments])
        weight = np.array([2.0 if m == ("nn", "0.5") else 1.0 for m in moments])
        lower, upper = _bounds(checked)
        x0 = np.clip(_to_vector(prior), lower, upper)

        def residuals(x: np.ndarray) -> np.ndarray:
            sim = _simulate(_from_vector(prior, x), checked, seed)
            return weight * (np.log(np.maximum([_moment(sim, m) for m in moments], 1e-6)) - target)

        prior = _from_vector(prior, _broyden(residuals, x0, lower, upper, _STEPS, max_evaluations))
    prior.update({"n_tiles": real["n_tiles"], "n_points": real["n_points"], "statistics": real})
    prior["simulated"] = _simulate(prior, checked, seed + 1)
    load_point_prior(prior)  # the fit is a valid prior
    return prior


def read_tiles(
    data: str | Path, split: str | Path | None = None, section: str = "train"
) -> tuple[list[tuple[np.ndarray, tuple[int, int]]], list[str]]:
    """Read ``data/points`` with the tile sizes of ``data/images``; return ``([(points, (H, W)), ...], stems)``.

    Raises:
        PrepareError: a missing folder, no point files, an unreadable or mismatched file, an empty section.
    """
    data = Path(str(data))
    sections = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
    problems = [f"{data / sub}: folder not found" for sub in ("images", "points") if not (data / sub).is_dir()]
    if not data.is_dir():
        problems = [f"{data}: data folder not found"]
    if split is not None and section not in sections:
        problems.append(f"--section: {section!r} is not one of train, val")
    if problems:
        raise PrepareError(problems)
    if not any(p.suffix.lower() in POINT_FILE_SUFFIXES for p in (data / "points").iterdir()):
        raise PrepareError([f"{data / 'points'}: no point files ({', '.join(POINT_FILE_SUFFIXES)})"])
    datalist, problems = build_datalist(data / "images", data / "points", base_dir=data, split=split)
    if problems:
        raise PrepareError(problems)
    entries = datalist[sections[section]] if split is not None else datalist["training"] + datalist["validation"]
    if not entries:
        raise PrepareError([f"{split or data}: no tiles in section {section!r}"])
    items, stems = [], []
    for entry in sorted(entries, key=lambda e: e["name"]):
        path = data / entry["points"]
        try:
            points = read_points(path)
            size = read_image_info(data / entry["image"]).size
        except (PointsFileError, ValueError) as e:
            raise PrepareError([str(e)]) from None
        items.append((points, size))
        stems.append(entry["name"])
    return items, stems


def write_prior(prior: dict, output: str | Path) -> None:
    """Write the prior JSON atomically (see :func:`scripts.data.atomic.atomic_path`)."""
    with atomic_path(output) as tmp, open(tmp, "x", encoding="utf-8") as f:
        json.dump(prior, f, indent=2)
        f.write("\n")


def _check(points: np.ndarray, spatial_size: Sequence[int]) -> tuple[np.ndarray, tuple[int, int]]:
    size = tuple(int(s) for s in spatial_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"spatial_size must be a positive (H, W), got {tuple(spatial_size)}.")
    array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(array).all() or not points_inside(array, size).all():
        raise ValueError(f"points must be finite and inside the {size[0]}x{size[1]} tile.")
    return array, size  # type: ignore[return-value]


def _nn_distances(points: np.ndarray) -> np.ndarray:
    if len(points) < 2:
        return np.zeros(0)
    return cKDTree(points).query(points, k=2)[0][:, 1]


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if not len(values):
        return None
    return {str(q): float(v) for q, v in zip(NN_QUANTILES, np.quantile(values, NN_QUANTILES), strict=True)}


def _vmr(points: np.ndarray, size: tuple[int, int], q: int) -> float | None:
    """Variance (ddof 1) over mean of the counts in the ``floor(H/q) x floor(W/q)`` quadrats from the top left."""
    ny, nx = size[0] // q, size[1] // q
    if ny * nx < _MIN_QUADRATS:
        return None
    cell = np.floor((points + 0.5) / q).astype(np.int64)
    inside = (cell[:, 0] < ny) & (cell[:, 1] < nx)
    counts = np.bincount(cell[inside, 0] * nx + cell[inside, 1], minlength=ny * nx)
    return float(counts.var(ddof=1) / counts.mean()) if counts.any() else None


def _silverman(log_values: np.ndarray) -> float:
    """Silverman's rule-of-thumb bandwidth of the log densities (0 for a single tile)."""
    if len(log_values) < 2:
        return 0.0
    iqr = np.subtract(*np.quantile(log_values, [0.75, 0.25])) / 1.34
    spread = min(log_values.std(ddof=1), iqr) if iqr > 0 else log_values.std(ddof=1)
    return round(float(0.9 * spread * len(log_values) ** -0.2), 6)


def _moment_names(real: dict) -> list[tuple[str, str]]:
    """The matched moments: NN 5 % and 50 % quantiles and the VMR at the two largest defined quadrat sizes."""
    vmr = [("vmr", q) for q, v in real["vmr"].items() if v is not None and v > 0][-2:]
    return [("nn", "0.05"), ("nn", "0.5"), *vmr]


def _moment(stats: dict, name: tuple[str, str]) -> float:
    value = (stats[name[0]] or {}).get(name[1])
    return float(value) if value is not None else float("nan")


def _initial_shape(items: list[tuple[np.ndarray, tuple[int, int]]], real: dict) -> dict:
    """Closed-form starting values (see the module docstring)."""
    relative = np.concatenate([_nn_distances(p) * math.sqrt(len(p) / (s[0] * s[1])) for p, s in items])
    hard, soft = (np.quantile(relative, [0.05, 0.5]) if len(relative) else (0.0, 0.0)) * np.array([0.8, 1.0])
    soft = float(min(max(soft, hard), 0.85))
    defined = [(int(q), v) for q, v in real["vmr"].items() if v is not None]
    scale, sigma = float(QUADRAT_SIZES[0]), 0.0
    if defined:
        q, vmr = defined[-1]
        mean_count = real["density"]["mean"] * q * q / AREA_UNIT
        sigma = math.sqrt(math.log1p(max(vmr - 1.0, 0.05) / max(mean_count, 1e-6)))
        scale = q / 2.0
    return {"hard_core": float(min(hard, soft)), "soft_core": soft, "cluster_sigma": sigma, "cluster_scale": scale}


def _bounds(items: list[tuple[np.ndarray, tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of ``(soft_core, hard_core / soft_core, cluster_sigma, log cluster_scale)``."""
    extent = max(max(s) for _, s in items)
    return np.array([0.0, 0.0, 0.0, math.log(10.0)]), np.array([0.85, 1.0, 3.0, math.log(max(extent, 10.0))])


def _to_vector(prior: dict) -> np.ndarray:
    soft = prior["soft_core"]
    return np.array(
        [soft, prior["hard_core"] / soft if soft > 0 else 1.0, prior["cluster_sigma"], math.log(prior["cluster_scale"])]
    )


def _from_vector(prior: dict, x: np.ndarray) -> dict:
    soft = float(min(x[0], MAX_CORE - 1e-3))
    return prior | {
        "hard_core": round(soft * float(x[1]), 6),
        "soft_core": round(soft, 6),
        "cluster_sigma": round(float(x[2]), 6),
        "cluster_scale": round(float(math.exp(x[3])), 4),
    }


def _broyden(
    fun, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, steps: np.ndarray, max_evaluations: int
) -> np.ndarray:
    """Bounded least squares for an expensive, slightly noisy residual: a forward-difference Jacobian at ``x0``,
    then Gauss-Newton steps in a trust region (in units of ``steps``) with Broyden updates of the Jacobian.
    Returns the best point evaluated."""
    best_x, best_r = x0, fun(x0)
    jac = np.empty((len(best_r), len(x0)))
    for k in range(len(x0)):
        h = steps[k] if x0[k] + steps[k] <= upper[k] else -steps[k]
        jac[:, k] = (fun(x0 + h * np.eye(len(x0))[k]) - best_r) / h
    radius, evaluations = 4.0, 1 + len(x0)
    while evaluations < max_evaluations and np.abs(best_r).max() > _TOLERANCE:
        step = np.linalg.lstsq(jac, -best_r, rcond=None)[0]
        length = np.linalg.norm(step / steps)
        x = np.clip(best_x + step * min(1.0, radius / max(length, 1e-12)), lower, upper)
        r = fun(x)
        evaluations += 1
        moved = x - best_x
        if moved @ moved > 0:
            jac += np.outer(r - best_r - jac @ moved, moved) / (moved @ moved)
        if np.linalg.norm(r) < np.linalg.norm(best_r):
            best_x, best_r, radius = x, r, min(2 * radius, 16.0)
        else:
            radius /= 2
    return best_x


def _simulate(prior: dict, items: list[tuple[np.ndarray, tuple[int, int]]], seed: int) -> dict:
    """Pooled statistics of the prior's point sets simulated at every real tile's size and point count."""
    total = max(sum(len(p) for p, _ in items), 1)
    repeats = max(min(math.ceil(_SIM_POINTS / total), _SIM_MAX_TILES // len(items)), 1)
    sampler = RandomPoints(prior)
    sims = []
    for i, (points, size) in enumerate([item for _ in range(repeats) for item in items]):
        # one stream per tile: the tiles of two nearby priors share their fields and candidates (common numbers)
        sampler.set_random_state(state=np.random.RandomState(np.random.SeedSequence([seed, i]).generate_state(4)))
        sims.append((sampler.sample(size, count=len(points)).points, size))
    return pooled_statistics(sims)
