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
"""``python -m scripts postprocessing``: the HoVer-Net post-processing's marker settings against the points.

The network runs once per tile (as the evaluation: sliding window, flip TTA, bf16 where native); each marker setting
(``marker_threshold`` x ``marker_radius`` of :class:`~transforms.HoVerNetInstances`) then post-processes the same
outputs. Label-free: point F1 and its errors by kind (:func:`~scripts.evaluation.metrics.point_errors`: merged points,
missed points, nuclei without a point) pick a setting from the points alone. Where the tiles have dense labels, AJI
and PQ are reported beside them (reporting only), and for the default setting two what-ifs: the AJI if every merged
nucleus were split among its points (nearest point, as the refine labels) and if every nucleus without a point were
dropped; they bound what better separation of touching nuclei, or fewer false nuclei, could bring.

Writes ``postprocessing.json`` and ``postprocessing.md`` into ``output``.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from scripts.data.atomic import atomic_path
from scripts.data.images import load_tile, read_label
from scripts.engines.checkpoint import inference_network, load_network_weights
from scripts.engines.segmentation import real_items
from scripts.evaluation.evaluate import markdown_table
from scripts.evaluation.metrics import POINT_ERRORS, instance_metrics, point_errors, point_f1
from scripts.inference.predict import TilePredictor
from scripts.runtime import native_bf16
from transforms import MONUSEG_RANGES, HoVerNetInstances
from transforms.point_labels import point_constrained_labels

__all__ = ["DEFAULT", "postprocessing"]

logger = logging.getLogger(__name__)

#: the marker settings every post-processing of the project uses (HoVer-Net's: :class:`HoVerNetInstances`' defaults)
DEFAULT = {k: inspect.signature(HoVerNetInstances).parameters[k].default for k in ("marker_threshold", "marker_radius")}


def _floats(text: str | float | tuple, name: str) -> list[float]:
    values = [float(v) for v in (text if isinstance(text, (tuple, list)) else str(text).split(",")) if str(v).strip()]
    if not values:
        raise SystemExit(f"error: --{name}: give at least one value (comma-separated)")
    return values


def _what_ifs(instances: np.ndarray, points: np.ndarray, dense: np.ndarray) -> dict[str, float]:
    """AJI with every merged nucleus split among its points / with every nucleus holding no point dropped."""
    refined = point_constrained_labels(instances, points, np.zeros_like(instances))  # no fallback shapes
    pointless = refined.ignore  # the nuclei holding no point (refined.label is 0 there)
    split = np.where(pointless, instances + int(refined.label.max()), refined.label)  # pointless nuclei kept apart
    return {
        "aji_merges_split": instance_metrics(split, dense)["aji"],
        "aji_pointless_dropped": instance_metrics(np.where(pointless, 0, instances), dense)["aji"],
    }


def postprocessing(
    model: str,
    data: str = "../shared/data/monuseg",
    section: str = "validation",
    thresholds: str = "0.3,0.35,0.4,0.45,0.5",
    radii: str = "1,2,3",
    output: str = "runs/postprocessing",
    seed: int = 0,
) -> dict:
    """Score each marker setting on the ``section`` tiles (``validation`` or ``training`` of ``data``'s split).

    Args:
        model: a segmentation model (``model.pt`` of the ``cpu`` profile's network).
        data: the data folder (``images/``, ``points/``; ``labels/`` adds AJI and PQ, for reporting).
        section: which tiles of the split.
        thresholds, radii: comma-separated ``marker_threshold`` and ``marker_radius`` values; every pair is scored.
        output: folder of ``postprocessing.json`` / ``.md``.
        seed: the split's seed where ``data`` has no ``split.json``.

    Returns:
        ``{"settings": [{marker_threshold, marker_radius, point_f1, <point errors>, [aji, pq]}], "pick": the setting
        of the highest point F1, "default": the default's row, "what_if": (with labels) the default's what-ifs}``.
    """
    if section not in ("validation", "training"):
        raise SystemExit(f"error: --section must be validation or training, got {section!r}")
    grid = [(t, int(r)) for t in _floats(thresholds, "thresholds") for r in _floats(radii, "radii")]
    if any(not 0.0 < t < 1.0 for t, _ in grid) or any(r < 0 for _, r in grid):
        raise SystemExit("error: --thresholds must lie in (0, 1) and --radii be >= 0")
    items = real_items(data, section, seed)
    if not items:
        raise SystemExit(f"error: {data}: no {section} tiles")
    bundle = Path(__file__).parents[2] / "bundle"
    network = load_network_weights(inference_network(bundle), model, what="segmentation model")
    predictor = TilePredictor(network, 256, amp=native_bf16(torch.device("cpu")), flip_tta=True)
    posts = {(t, r): HoVerNetInstances(marker_threshold=t, marker_radius=r, **MONUSEG_RANGES) for t, r in grid}
    default = (DEFAULT["marker_threshold"], DEFAULT["marker_radius"])
    posts.setdefault(default, HoVerNetInstances(**MONUSEG_RANGES))
    scores: dict[tuple, list[dict]] = {key: [] for key in posts}
    what_if: list[dict] = []
    labelled = all("label" in item for item in items)
    for item in tqdm(items, desc="postprocessing", unit="tile"):
        image, points = load_tile(item)
        outputs = predictor.outputs(image)
        dense = read_label(item["label"]) if labelled else None
        for key, post in posts.items():
            instances = post.from_output(outputs)[0]
            row = {"point_f1": point_f1(instances, points), **point_errors(instances, points)}
            if dense is not None:
                metrics = instance_metrics(instances, dense)
                row.update(aji=metrics["aji"], pq=metrics["pq"])
                if key == default:
                    what_if.append({"aji": metrics["aji"], **_what_ifs(instances, points, dense)})
            scores[key].append(row)
    settings = [
        {"marker_threshold": t, "marker_radius": r, **{k: float(np.mean([s[k] for s in rows])) for k in rows[0]}}
        for (t, r), rows in sorted(scores.items())
    ]
    result = {
        "model": str(model),
        "tiles": len(items),
        "settings": settings,
        "pick": max(settings, key=lambda s: s["point_f1"]),
        "default": next(s for s in settings if (s["marker_threshold"], s["marker_radius"]) == default),
    }
    if what_if:
        result["what_if"] = {k: float(np.mean([w[k] for w in what_if])) for k in what_if[0]}
    _write(Path(output), result)
    pick = result["pick"]
    logger.info(
        f"point F1 picks marker_threshold {pick['marker_threshold']}, marker_radius {pick['marker_radius']} "
        f"(point F1 {pick['point_f1']:.3f}; default {result['default']['point_f1']:.3f})"
    )
    return result


def _write(out: Path, result: dict) -> None:
    columns = ["point_f1", *POINT_ERRORS, *(k for k in ("aji", "pq") if k in result["default"])]
    rows = {f"{s['marker_threshold']:g} / {s['marker_radius']}": s for s in result["settings"]}
    text = [
        "# Post-processing marker settings",
        "",
        f"Model `{result['model']}`, {result['tiles']} tiles. Point F1 and its errors use the points only; AJI and PQ"
        " (where shown) the dense labels, for reporting.",
        "",
        markdown_table(rows, columns, first="marker threshold / radius"),
    ]
    if "what_if" in result:
        w = result["what_if"]
        text += [
            f"Default setting: AJI {w['aji']:.3f}; with every merged nucleus split among its points "
            f"{w['aji_merges_split']:.3f}; with every nucleus without a point dropped {w['aji_pointless_dropped']:.3f}"
            " (what-ifs that use the points of the evaluated tiles: bounds, not results).",
            "",
        ]
    with atomic_path(out / "postprocessing.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    with atomic_path(out / "postprocessing.md") as tmp:
        tmp.write_text("\n".join(text))
