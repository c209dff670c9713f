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
"""The README's main job until the whole pipeline exists: the data layer on a folder of tiles + points.

``python -m scripts demo`` checks the embedded sample, writes its datalist, samples shape-prior pseudo
instance masks from the points (``PointsToEllipseMaskd``), their HoVer maps (``HVMapd``), scores the pseudo
masks against the real labels where there are any, and leaves ``results/demo/`` with ``summary.png``,
``metrics.json`` / ``metrics.md`` and the masks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from monai.data import load_decathlon_datalist
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
from PIL import Image
from tqdm import tqdm

from scripts import SAMPLE_DATA
from scripts.data.datalist import PrepareError, write_datalist
from scripts.data.images import LabelReader, TileReader
from scripts.evaluation.metrics import instance_metrics
from scripts.evaluation.visualize import contours_on, grid, hv_rgb, instances_rgb, points_on
from scripts.runtime.settings import check
from transforms import HVMapd, LoadPointsd, PointsToEllipseMaskd

SAMPLE = SAMPLE_DATA


def demo(
    data: str = str(SAMPLE),
    output: str = "results/demo",
    samples: int = 3,
    prior: str = "paper",
    mpp: float = 0.25,
    seed: int = 0,
) -> None:
    """Sample pseudo masks for every tile of ``data`` (folders ``images/``, ``points/``, optional ``labels/``).

    Args:
        data: the data folder; the embedded MoNuSeg sample by default.
        output: results folder.
        samples: pseudo masks drawn per tile.
        prior: ``"paper"`` or ``"density"`` area prior of ``PointsToEllipseMask``.
        mpp: microns per pixel of the tiles.
        seed: random seed.
    """
    check(samples=samples, mask_prior=prior, mpp=mpp, seed=seed)
    data_dir, out_dir = Path(data), Path(output)
    labels = data_dir / "labels" if (data_dir / "labels").is_dir() else None
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        datalist_file = out_dir / "datalist.json"
        write_datalist(data_dir / "images", data_dir / "points", labels, datalist_file)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    items = load_decathlon_datalist(datalist_file, data_list_key="training", base_dir=out_dir)
    load = Compose(
        [
            LoadImaged("image", reader=TileReader(), image_only=True),
            *([LoadImaged("label", reader=LabelReader(), image_only=True)] if labels else []),
            EnsureChannelFirstd("image", channel_dim=-1),
            *([EnsureChannelFirstd("label", channel_dim="no_channel")] if labels else []),
            LoadPointsd("points", ref_key="image"),
        ]
    )
    sampler = Compose(
        [PointsToEllipseMaskd("points", label_key="pseudo", ref_key="image", prior=prior, mpp=mpp), HVMapd("pseudo")]
    ).set_random_state(seed)
    rows, per_tile = [], {}
    for item in tqdm(items, desc="pseudo masks", unit="tile"):
        tile = load(item)
        name = Path(item["image"]).stem
        image = tile["image"].numpy().transpose(1, 2, 0).astype(np.uint8)
        points = tile["points"].numpy()
        scores = []
        for k in range(samples):
            drawn = sampler(tile)
            pseudo = drawn["pseudo"][0].numpy()
            Image.fromarray(pseudo.astype(np.uint16)).save(out_dir / f"{name}_pseudo{k}.png")
            if labels:
                scores.append(instance_metrics(pseudo, tile["label"][0].numpy().astype(np.int64), points=points))
        if labels:
            per_tile[name] = {m: float(np.mean([s[m] for s in scores])) for m in scores[0]}
        row = [
            points_on(image, points),
            instances_rgb(pseudo),
            hv_rgb(drawn["hv_pseudo"].numpy()),
            contours_on(image, pseudo),
        ]
        if labels:
            row.append(contours_on(image, tile["label"][0].numpy().astype(np.int64), colour=(0, 200, 255)))
        rows.append(row)
    titles = ["image + points", "pseudo instance mask", "HoVer maps (h: red, v: blue)", "pseudo mask contours"]
    grid(rows, titles + (["real label contours"] if labels else [])).save(out_dir / "summary.png")
    summary = {"tiles": len(items), "samples_per_tile": samples, "prior": prior, "per_tile": per_tile}
    if per_tile:
        names = next(iter(per_tile.values())).keys()
        summary["mean"] = {m: float(np.mean([t[m] for t in per_tile.values()])) for m in names}
        _write_markdown(out_dir / "metrics.md", per_tile, summary["mean"])
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out_dir}/summary.png, metrics.json" + (", metrics.md" if per_tile else ""))
    if per_tile:
        print(_markdown_table(per_tile, summary["mean"]))


def _markdown_table(per_tile: dict, mean: dict) -> str:
    names = list(mean)
    lines = ["| tile | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for tile, scores in [*per_tile.items(), ("**mean**", mean)]:
        lines.append(f"| {tile} | " + " | ".join(f"{scores[m]:.3f}" for m in names) + " |")
    return "\n".join(lines)


def _write_markdown(path: Path, per_tile: dict, mean: dict) -> None:
    text = "# Shape-prior pseudo masks vs real labels\n\nMean over the sampled masks of each tile.\n\n"
    path.write_text(text + _markdown_table(per_tile, mean) + "\n")
