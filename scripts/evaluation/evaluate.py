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
"""Evaluation report of a segmentation model: per-image metrics, mean ± std, per-organ breakdown, overlays.

:func:`evaluate` runs a predictor (any ``item -> instance map`` callable, e.g. sliding-window inference +
HoVerNet post-processing) over a MONAI datalist, scores every tile with
:func:`scripts.evaluation.metrics.instance_metrics`
and writes, each file atomically, into the output folder:

- ``metrics.json``: ``{"per_image", "mean", "std", "per_organ", "n_images", ...}``; std is the population std
  (``ddof=0``) over images, as the per-image averages of the paper's tables;
- ``metrics.csv``: one row per image (name, organ, every metric, n_pred, n_gt, predict_s);
- ``metrics.md``: the paper's columns first (pixel IoU, pixel F1, object Dice, AJI), then AJI+, PQ, point F1, as
  ``mean ± std`` cells; a per-organ and a per-image table;
- ``overlays/<name>.png``: the image with ground-truth boundaries in yellow and predicted ones in green.

:func:`format_comparison` / :func:`markdown_table` build the same kind of table for several runs side by side.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from scripts.data.atomic import atomic_path
from scripts.data.images import read_image, read_label
from scripts.evaluation.metrics import METRIC_NAMES, POINT_ERRORS, instance_metrics
from scripts.evaluation.visualize import contours_on
from transforms import read_points

__all__ = [
    "COLUMN_LABELS",
    "GT_COLOUR",
    "PAPER_COLUMNS",
    "PRED_COLOUR",
    "STD_DDOF",
    "evaluate",
    "format_comparison",
    "markdown_table",
    "organ_of",
    "read_organs",
    "summarize",
]

#: metrics of the Markdown tables, in order: the paper's four columns first, then AJI+, PQ, point F1
PAPER_COLUMNS = ("pixel_iou", "pixel_f1", "object_dice", "aji", "aji_plus", "pq", "point_f1")
#: column headers of the Markdown tables (IoU and F1 are the binary pixel-level ones)
COLUMN_LABELS = {
    "pixel_iou": "IoU",
    "pixel_f1": "F1",
    "object_dice": "obj Dice",
    "aji": "AJI",
    "aji_plus": "AJI+",
    "pq": "PQ",
    "sq": "SQ",
    "dq": "DQ",
    "point_f1": "point F1",
    "n": "n",
    "organ": "organ",
    "n_pred": "pred nuclei",
    "merged_points": "merged points",
    "missed_points": "missed points",
    "pointless_nuclei": "nuclei without a point",
    "n_gt": "GT nuclei",
}
#: delta degrees of freedom of every reported std (population std over images)
STD_DDOF = 0
GT_COLOUR = (255, 255, 0)
PRED_COLOUR = (0, 255, 0)
UNKNOWN_ORGAN = "unknown"

logger = logging.getLogger(__name__)

Cell = float | int | str | tuple[float, float] | None


def read_organs(data_dir: str | os.PathLike) -> dict[str, str]:
    """``{image id: organ}`` from ``data_dir/meta.csv`` (columns ``id`` and ``organ``); ``{}`` when there is none, or
    when it has no ``organ`` column (organs unknown, said in one log line).

    ``data_dir`` may also be the CSV file itself. Rows with an empty id or organ are skipped.

    Raises:
        ValueError: the file has an ``organ`` column but no ``id`` column.
    """
    path = Path(data_dir)
    if path.is_dir():
        path = path / "meta.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "organ" not in columns:
            logger.info(f"{path}: no 'organ' column (has {columns}): organs unknown, no per-organ breakdown.")
            return {}
        if "id" not in columns:
            raise ValueError(f"{path}: an 'organ' column needs an 'id' column (the image names); has {columns}.")
        rows = [(r["id"].strip(), (r["organ"] or "").strip()) for r in reader if r["id"]]
    return {i: organ for i, organ in rows if i and organ}


def organ_of(name: str, organs: Mapping[str, str]) -> str | None:
    """The organ of image ``name``: an exact key of ``organs``, else the longest key ``k`` with ``name``
    starting with ``k + "_"`` (crops named ``<id>_y100_x600``); ``None`` when neither exists."""
    if name in organs:
        return organs[name]
    keys = [k for k in organs if name.startswith(f"{k}_")]
    return organs[max(keys, key=len)] if keys else None


def _as_label(arr: Any, what: str) -> np.ndarray:
    """Tensor / array -> 2-D numpy instance map (leading or trailing singleton axes dropped)."""
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D instance map (H, W), got shape {arr.shape}")
    return arr


def _n_instances(label: np.ndarray) -> int:
    return int(np.unique(label[label > 0]).size)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=STD_DDOF))


def _aggregate(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and std of every metric over the rows that have it."""
    mean, std = {}, {}
    for m in (*METRIC_NAMES, *POINT_ERRORS):
        values = [r[m] for r in rows if m in r]
        if values:
            mean[m], std[m] = _mean_std(values)
    return mean, std


def summarize(per_image: Mapping[str, Mapping[str, Any]]) -> dict:
    """The report of :func:`evaluate` from its per-image entries (metrics, ``organ``, ``n_pred``, ``n_gt``, ...).

    ``mean`` / ``std`` hold every metric of
    :data:`scripts.evaluation.metrics.METRIC_NAMES` averaged over the images that
    have it (``point_f1`` only over images with points), std with ``ddof=0``. ``per_organ`` groups the images by
    their ``organ`` entry (``{organ: {"n", "mean", "std"}}``, sorted by organ), empty when no image has one.
    """
    if not per_image:
        raise ValueError("no images to summarize")
    rows = list(per_image.values())
    mean, std = _aggregate(rows)
    per_organ = {}
    if any(r.get("organ") is not None for r in rows):
        groups: dict[str, list] = {}
        for r in rows:
            groups.setdefault(r.get("organ") or UNKNOWN_ORGAN, []).append(r)
        for organ in sorted(groups):
            m, s = _aggregate(groups[organ])
            per_organ[organ] = {"n": len(groups[organ]), "mean": m, "std": s}
    return {
        "n_images": len(rows),
        "n_images_with_points": sum("point_f1" in r for r in rows),
        "std_ddof": STD_DDOF,
        "mean": mean,
        "std": std,
        "per_organ": per_organ,
        "totals": {
            "n_pred": int(sum(r.get("n_pred", 0) for r in rows)),
            "n_gt": int(sum(r.get("n_gt", 0) for r in rows)),
            "predict_s": float(sum(r.get("predict_s", 0.0) for r in rows)),
        },
        "per_image": {name: dict(r) for name, r in per_image.items()},
    }


def _cell(value: Cell, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
    if isinstance(value, (int, np.integer, str)):
        return str(value)
    return f"{float(value):.{digits}f}"


def markdown_table(
    rows: Mapping[str, Mapping[str, Cell]],
    columns: Sequence[str] | None = None,
    first: str = "run",
    digits: int = 3,
) -> str:
    """A Markdown table, one row per key of ``rows`` (e.g. run names), one column per metric.

    Cells: a ``(mean, std)`` tuple -> ``"0.644 ± 0.012"``, a float -> ``"0.644"``, an int or a str as is, a
    missing key or ``None`` -> ``"–"``. Headers come from :data:`COLUMN_LABELS` (other names as they are).

    Args:
        rows: ``{row name: {column: cell}}``.
        columns: the columns in order; default: those of :data:`PAPER_COLUMNS` that some row has.
        first: header of the row-name column.
        digits: decimals of the float cells.
    """
    if columns is None:
        columns = [c for c in PAPER_COLUMNS if any(c in r for r in rows.values())]
    lines = [
        "| " + " | ".join([first, *(COLUMN_LABELS.get(c, c) for c in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for name, row in rows.items():
        lines.append("| " + " | ".join([str(name), *(_cell(row.get(c), digits) for c in columns)]) + " |")
    return "\n".join(lines) + "\n"


def _mean_std_cells(mean: Mapping[str, float], std: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    return {m: (mean[m], std.get(m, float("nan"))) for m in mean}


def format_comparison(results: Mapping[str, Mapping | str | os.PathLike], digits: int = 3) -> str:
    """Markdown comparison of runs: ``{run name: metrics.json dict (or its path)}`` -> one row per run with the
    number of images and ``mean ± std`` of IoU, F1, obj Dice, AJI, AJI+, PQ, point F1 (those present)."""
    if not results:
        raise ValueError("no runs to compare")
    rows = {}
    for run, report in results.items():
        if isinstance(report, (str, os.PathLike)):
            report = json.loads(Path(report).read_text())
        if not isinstance(report, Mapping) or "mean" not in report:
            raise ValueError(f"run {run!r}: not an evaluation report (no 'mean'; expected a metrics.json dict)")
        rows[run] = {"n": report.get("n_images"), **_mean_std_cells(report["mean"], report.get("std", {}))}
    columns = ["n", *(c for c in PAPER_COLUMNS if any(c in r for r in rows.values()))]
    return markdown_table(rows, columns, first="run", digits=digits)


def _markdown_report(report: Mapping) -> str:
    n, with_points = report["n_images"], report["n_images_with_points"]
    images = f"{n} image{'s' * (n != 1)}"
    overall = {f"all ({images})": _mean_std_cells(report["mean"], report["std"])}
    points = f"{with_points} of {n} images have points" if with_points else "no points given"
    text = [
        "# Segmentation evaluation",
        "",
        f"{images}; cells are mean ± std over images (population std, ddof={report['std_ddof']}). IoU and F1 are "
        "binary pixel-level; obj Dice is Sirinukunwattana's object-level Dice; AJI (Kumar 2017), AJI+ (one-to-one "
        f"pairing), PQ at IoU > 0.5; point F1 against the annotated points ({points}). SQ, DQ and full precision "
        "are in `metrics.json` / `metrics.csv`.",
        "",
        markdown_table(overall, first="images"),
    ]
    if report["per_organ"]:
        organs = {
            organ: {"n": g["n"], **_mean_std_cells(g["mean"], g["std"])} for organ, g in report["per_organ"].items()
        }
        columns = ["n", *(c for c in PAPER_COLUMNS if c in report["mean"])]
        text += ["## Per organ", "", markdown_table(organs, columns, first="organ")]
    if all(m in report["mean"] for m in POINT_ERRORS):
        text += [
            "## Detection errors against the points",
            "",
            "What point F1 counts, by kind (points only, no dense label needed): points whose predicted nucleus holds "
            "another point too (touching nuclei merged), points on the background (missed), and predicted nuclei "
            "holding no point (false detections or fragments).",
            "",
            markdown_table(overall, POINT_ERRORS, first="images"),
        ]
    per_image = report["per_image"]
    columns = [c for c in PAPER_COLUMNS if c in report["mean"]] + ["n_pred", "n_gt"]
    if report["per_organ"]:
        columns.insert(0, "organ")
    text += ["## Per image", "", markdown_table(per_image, columns, first="image")]
    text += [
        "## Overlays",
        "",
        "`overlays/<image>.png`: ground-truth boundaries in **yellow**, predicted boundaries in **green** "
        "(drawn on top: where both coincide only green shows).",
        "",
    ]
    return "\n".join(text)


def _write_csv(path: Path, report: Mapping) -> None:
    metrics = [m for m in (*METRIC_NAMES, *POINT_ERRORS) if m in report["mean"]]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "organ", *metrics, "n_pred", "n_gt", "predict_s"])
        for name, r in report["per_image"].items():
            writer.writerow(
                [name, r.get("organ") or "", *(r.get(m, "") for m in metrics), r["n_pred"], r["n_gt"], r["predict_s"]]
            )


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _check_items(items: Sequence[dict]) -> list[str]:
    """Names of the items; raises on an empty list, a missing key or file, or duplicate names."""
    if not items:
        raise ValueError("no items to evaluate (the datalist is empty)")
    names, missing = [], []
    for i, item in enumerate(items):
        for key in ("image", "label"):
            if key not in item or item[key] is None:
                raise ValueError(f"item {i} has no '{key}' (keys: {sorted(item)})")
            if not Path(item[key]).is_file():
                missing.append(f"{key} file not found: {item[key]}")
        if isinstance(item.get("points"), (str, os.PathLike)) and not Path(item["points"]).is_file():
            missing.append(f"points file not found: {item['points']}")
        names.append(str(item.get("name") or Path(item["image"]).stem))
    if missing:
        raise FileNotFoundError("; ".join(missing))
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate image names {dup}: give the items distinct 'name' entries")
    return names


def evaluate(
    items: Sequence[dict],
    predict: Callable[[dict], Any],
    output_dir: str | os.PathLike,
    organs: Mapping[str, str] | None = None,
    overlays: bool = True,
    progress: bool = True,
) -> dict:
    """Predict, score and report every item of a datalist; write the report files into ``output_dir``.

    Args:
        items: datalist dicts with ``image`` (RGB PNG/TIFF path) and ``label`` (instance-map PNG/TIFF path),
            optional ``points`` (point file path or ``(N, 2)`` ``(y, x)`` array; adds ``point_f1``) and ``name``
            (default: the image file stem).
        predict: ``item -> instance map`` of shape (H, W) (or with singleton axes), numpy or torch, 0 = background.
        output_dir: receives ``metrics.json``, ``metrics.csv``, ``metrics.md`` and ``overlays/<name>.png``.
        organs: ``{image id: organ}`` (e.g. :func:`read_organs`); adds the per-organ breakdown (matched by
            :func:`organ_of`; images without a match go to ``"unknown"``).
        overlays: write the overlay PNGs.
        progress: show a tqdm bar over the tiles.

    Returns:
        the report written to ``metrics.json`` (see :func:`summarize`); ``per_image[name]`` holds the metrics,
        ``organ``, ``n_pred``, ``n_gt`` and ``predict_s`` (seconds in ``predict``).

    Raises:
        FileNotFoundError: image, label or point files missing (all of them named), checked before any prediction.
        ValueError: empty ``items``, duplicate names, unreadable files, a label or prediction whose shape differs
            from the image's.
    """
    names = _check_items(items)
    out = Path(output_dir)
    per_image: dict[str, dict] = {}
    bar = tqdm(list(zip(names, items, strict=True)), desc="evaluate", unit="tile", disable=not progress)
    for name, item in bar:
        image_path, label_path = Path(item["image"]), Path(item["label"])
        image, label = read_image(image_path), read_label(label_path)
        if label.shape != image.shape[:2]:
            raise ValueError(f"label {label_path} has shape {label.shape} but image {image_path} is {image.shape[:2]}")
        start = time.perf_counter()
        pred = predict(item)
        seconds = time.perf_counter() - start
        pred = _as_label(pred, f"the prediction for {image_path}")
        if pred.shape != label.shape:
            raise ValueError(
                f"the prediction for {image_path} has shape {pred.shape} but its label {label_path} has {label.shape}"
            )
        points = item.get("points")
        if isinstance(points, (str, os.PathLike)):
            points = read_points(points)
        try:
            scores = instance_metrics(pred, label, points=points)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
        per_image[name] = {
            "organ": organ_of(name, organs) if organs else None,
            **scores,
            "n_pred": _n_instances(pred),
            "n_gt": _n_instances(label),
            "predict_s": seconds,
        }
        if overlays:
            picture = contours_on(contours_on(image, label, GT_COLOUR), pred, PRED_COLOUR)
            with atomic_path(out / "overlays" / f"{name}.png") as tmp:
                Image.fromarray(picture).save(tmp, format="PNG")
        bar.set_postfix(aji=f"{scores['aji']:.3f}")
    report = summarize(per_image)
    _write_text(out / "metrics.json", json.dumps(report, indent=2) + "\n")
    _write_csv(out / "metrics.csv", report)
    _write_text(out / "metrics.md", _markdown_report(report))
    return report
