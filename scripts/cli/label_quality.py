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
"""``python -m scripts label_quality``: how good a refine labels folder is, per label rule, against dense labels.

Reporting only (the numbers of ``diagnostics.json``, for any ``refined_labels/`` folder, also one written by an
earlier version): per rule (kept / split / filled) the mean IoU of each point's nucleus with the true nucleus under
the point, and the labels' mean AJI, over the tiles of the folder that have a dense label in ``data``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scripts.data.images import read_label
from scripts.engines.refine import rule_iou
from scripts.evaluation.metrics import instance_metrics
from transforms import LoadPoints

__all__ = ["label_quality"]


def label_quality(labels: str, data: str) -> dict:
    """``labels``: a ``refined_labels`` folder (``teacher/``, ``label/``); ``data``: the data folder with
    ``labels/<name>.png`` and ``points/<name>.csv``. Returns the pooled per-rule IoU and counts and the
    labels' mean AJI."""
    folder, root = Path(labels), Path(data)
    names = [p.stem for p in sorted((folder / "label").glob("*.png")) if (root / "labels" / p.name).is_file()]
    if not names:
        raise SystemExit(f"error: {folder}/label: no label PNG with a dense label in {root}/labels")
    pooled: dict[str, list[float]] = {}
    ajis = []
    for name in names:
        dense, label = read_label(root / "labels" / f"{name}.png"), read_label(folder / "label" / f"{name}.png")
        points = LoadPoints()(str(root / "points" / f"{name}.csv"), dense.shape).numpy()
        for rule, values in rule_iou(read_label(folder / "teacher" / f"{name}.png"), label, dense, points).items():
            pooled.setdefault(rule, []).extend(values)
        ajis.append(instance_metrics(label, dense)["aji"])
    result = {"tiles": len(names), "refined_aji": float(np.mean(ajis))}
    for rule, values in pooled.items():
        result.update({rule: len(values), f"{rule}_iou": float(np.mean(values)) if values else float("nan")})
    return result
