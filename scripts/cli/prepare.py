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
"""``python -m scripts prepare``: check a folder of tiles and point files and write a MONAI datalist."""

from __future__ import annotations

import sys

from scripts.data.datalist import PrepareError, write_datalist
from scripts.runtime.settings import as_bool

__all__ = ["prepare"]


def prepare(
    images: str,
    points: str | None = None,
    labels: str | None = None,
    output: str = "datalist.json",
    split: str | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    strict: bool = True,
) -> None:
    """Check a folder of images and nucleus point files and write a MONAI datalist JSON.

    ``python -m scripts prepare --images DIR --points DIR [--labels DIR] [--split split.json] --output datalist.json``

    Args:
        images: folder of images (``.png``, ``.tif``, ``.jpg``, ...).
        points: folder of point files (``.csv``/``.tsv`` with ``y``/``x`` header, ``.json``, ``.geojson``,
            ``.npy``, point map images) named like the images; may be the images folder.
        labels: optional folder of integer instance label maps named like the images.
        output: the datalist file to write; its paths are relative to its folder.
        split: optional JSON ``{"train": [stems], "val": [stems]}`` (e.g. MoNuSeg's ``split.json``).
        val_fraction: without ``split``, the fraction of tiles drawn at random for validation.
        seed: seed of that draw.
        strict: with problems, write nothing (exit status 2); ``--nostrict`` writes the valid tiles.
    """
    try:
        datalist = write_datalist(images, points, labels, output, split, val_fraction, seed, as_bool(strict, "strict"))
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    meta = datalist["metadata"]
    for message in meta["warnings"]:
        print(f"warning: {message}", file=sys.stderr)
    for message in meta.get("skipped", []):
        print(f"warning: skipped: {message}", file=sys.stderr)
    print(
        f"wrote {output}: {meta['num_training']} training / {meta['num_validation']} validation tiles, "
        f"{meta['num_points_training'] + meta['num_points_validation']} points"
        f"{', with labels' if labels is not None else ''}; "
        f"{len(meta['warnings'])} warning(s), {len(meta.get('skipped', []))} skipped problem(s)"
    )


if __name__ == "__main__":
    import fire

    fire.Fire(prepare)
