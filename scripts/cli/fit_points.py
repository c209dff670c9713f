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
"""``python -m scripts fit_points``: fit the random point-set prior to a folder's point files."""

from __future__ import annotations

import sys
from pathlib import Path

from scripts.data.datalist import PrepareError
from scripts.data.point_prior import fit_point_prior, read_tiles, write_prior

__all__ = ["fit_points"]


def fit_points(
    data: str,
    output: str = "point_prior.json",
    split: str | None = None,
    section: str = "train",
    mpp: float = 0.25,
    seed: int = 0,
) -> None:
    """Fit the random point prior to the point files of a folder and write it as JSON.

    ``python -m scripts fit_points --data DIR [--split DIR/split.json --section train] --output prior.json``

    Args:
        data: folder with ``images/`` (tile sizes are read from the image headers) and ``points/`` (point files
            in any format ``read_points`` reads, named like the images).
        output: the JSON file to write (atomically).
        split: optional JSON ``{"train": [stems], "val": [stems]}``; only the tiles of ``section`` are used.
        section: ``train`` or ``val`` (used with ``split``).
        mpp: microns per pixel of the tiles.
        seed: seed of the simulations of the fit.
    """
    try:
        items, stems = read_tiles(data, split, section)
        prior = fit_point_prior(items, mpp=float(mpp), seed=int(seed))
    except PrepareError as e:
        problems = "\n".join(f"  - {p}" for p in e.problems)
        print(f"error: {len(e.problems)} problem(s) found, no prior written:\n{problems}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    prior["source"] = {"data": Path(str(data)).name, "section": section if split is not None else None, "tiles": stems}
    write_prior(prior, output)
    stats, sim = prior["statistics"], prior["simulated"]
    print(
        f"wrote {output}: {prior['n_tiles']} tiles, {prior['n_points']} points; hard_core {prior['hard_core']:.3f}, "
        f"soft_core {prior['soft_core']:.3f}, cluster_sigma {prior['cluster_sigma']:.3f}, "
        f"cluster_scale {prior['cluster_scale']:.1f} px; NN median real {stats['nn']['0.5']:.2f} / "
        f"simulated {sim['nn']['0.5']:.2f} px"
    )
