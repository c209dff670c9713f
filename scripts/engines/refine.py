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
"""Stage 5 (``refine.json``): a teacher segments the real training tiles, the user's points turn its nuclei into
training labels (:func:`transforms.point_labels.point_constrained_labels`), and a student trains on them.

:class:`PointConstrainedLabeller` writes, into its ``output_dir``: ``teacher/<name>.png`` (the teacher's instance
map), ``label/<name>.png`` (nucleus ``i + 1`` holds point ``i``), ``counts/<name>.json`` (the label rules' counts),
``ignore/<name>.png`` (1 = the loss skips the pixel), ``datalist.json`` (the student's training items),
``diagnostics.json`` and ``refine_example.png``. Every file is written atomically and a tile already written is not
redone, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage.color import rgb2hed
from tqdm import tqdm

from scripts.data.atomic import atomic_path
from scripts.data.images import load_tile, read_label
from scripts.engines.checkpoint import load_network_weights
from scripts.evaluation.metrics import instance_metrics, iou_at_points
from scripts.evaluation.visualize import contours_on, grid, instances_rgb, points_on
from scripts.inference.predict import TilePredictor
from transforms import LoadPoints, PointsToEllipseMask
from transforms.point_labels import (
    POINT_RULES,
    POINTLESS,
    SPLIT_RULE,
    PointLabels,
    haematoxylin_outlines,
    point_constrained_labels,
    point_rules,
)

__all__ = ["OUTLINES", "STUDENT_INIT", "PointConstrainedLabeller", "initialise_student", "rule_iou"]

_COUNTS = ("points", "kept", "split", "filled", "missing", "removed", "outlines_moved")
#: where the refined nuclei's outlines come from
OUTLINES = ("teacher", "haematoxylin")
#: the student's first weights: random (``scratch``) or the teacher's (``teacher``: the student fine-tunes it)
STUDENT_INIT = ("scratch", "teacher")


def initialise_student(student: torch.nn.Module, teacher_path: str | Path, init: str = "scratch") -> None:
    """Give ``student`` the teacher's weights when ``init`` is ``teacher``; ``scratch`` keeps its random ones.

    Runs before the student's trainer: a resumed student's checkpoint replaces these weights when the trainer starts.
    """
    if init not in STUDENT_INIT:
        raise ValueError(f"refine_student_init must be one of {STUDENT_INIT}, got {init!r}.")
    if init == "teacher":
        load_network_weights(student, teacher_path, what="teacher")  # one clear line for a missing or unfit file


def rule_iou(teacher: np.ndarray, label: np.ndarray, dense: np.ndarray, points: np.ndarray) -> dict[str, list[float]]:
    """Per label rule (:data:`~transforms.point_labels.POINT_RULES`, decided on the ``teacher``'s map), the IoU of each
    point's nucleus in ``label`` with the ``dense`` nucleus under the point (points on dense background left out);
    reporting only."""
    rules, iou = point_rules(teacher, points), iou_at_points(label, dense, points)
    return {rule: [float(v) for v in iou[(rules == k) & ~np.isnan(iou)]] for k, rule in enumerate(POINT_RULES)}


class PointConstrainedLabeller:
    """Point-constrained labels of the real training tiles from a teacher segmenter.

    Args:
        teacher: a network of the segmenter's architecture (its weights are loaded from ``teacher_path``).
        teacher_path: the teacher's state dict (``model.pt`` of a segmentation run).
        items: the real training tiles: ``image``, ``points``, ``name`` (and ``label``: used for the diagnostics
            only, never for the labels).
        output_dir: the folder of the labels (see the module docstring).
        prior, mpp: :class:`~transforms.PointsToEllipseMask` settings of the fallback shape of a point the teacher
            missed.
        roi_size, amp, flip_tta: the teacher's sliding-window inference (:class:`~scripts.inference.TilePredictor`).
        seed: seed of the fallback shapes.
        outlines: ``teacher`` (each nucleus keeps the teacher's outline) or ``haematoxylin`` (outlines move onto the
            haematoxylin-dark pixels where that gives a plausible, solid nucleus:
            :func:`~transforms.point_labels.haematoxylin_outlines`; the pixels given up are ignored).
        pointless: what a teacher nucleus holding no point becomes: ``ignore`` (the loss skips it: the point set may
            be incomplete) or ``background`` (every nucleus carries a point: isolated ones are taught as background,
            the ones touching a labelled nucleus stay ignored); see
            :func:`~transforms.point_labels.point_constrained_labels`.
    """

    def __init__(
        self,
        teacher: torch.nn.Module,
        teacher_path: str | Path,
        items: Sequence[dict],
        output_dir: str | Path,
        prior: str = "paper",
        mpp: float = 0.25,
        roi_size: int = 256,
        amp: bool = False,
        flip_tta: bool = False,
        seed: int = 0,
        outlines: str = "haematoxylin",
        pointless: str = "ignore",
    ) -> None:
        if outlines not in OUTLINES:
            raise ValueError(f"refine_outlines must be one of {OUTLINES}, got {outlines!r}.")
        if pointless not in POINTLESS:
            raise ValueError(f"refine_pointless must be one of {POINTLESS}, got {pointless!r}.")
        self.outlines, self.pointless = outlines, pointless
        self.teacher_path, self.output_dir = Path(teacher_path), Path(output_dir)
        if not self.teacher_path.is_file():
            raise FileNotFoundError(f"{self.teacher_path}: teacher model not found (teacher_path).")
        if not items:
            raise ValueError("no training tiles to refine.")
        self.teacher, self.items = teacher, list(items)
        self.sampler = PointsToEllipseMask(prior=prior, mpp=mpp)
        self.predictor = TilePredictor(teacher, roi_size, amp=amp, flip_tta=flip_tta)
        self.seed = seed
        self.logger = logging.getLogger(self.__class__.__name__)

    @property
    def datalist_path(self) -> Path:
        return self.output_dir / "datalist.json"

    def __call__(self) -> Path:
        """Write the labels of every tile not written yet, the datalist and the diagnostics; returns the datalist."""
        self._check_teacher()
        loaded = False
        for index, item in enumerate(tqdm(self.items, desc="refine labels", unit="tile")):
            paths = self._paths(item["name"])
            if all(p.is_file() for p in paths.values()):  # labelled before this run: not redone
                continue
            if not loaded:
                state = torch.load(self.teacher_path, map_location="cpu", weights_only=True)
                self.teacher.load_state_dict(state)
                loaded = True
            self._label_tile(item, index, paths)
        training = [
            {"image": str(Path(item["image"]).resolve()), **{k: f"{k}/{item['name']}.png" for k in ("label", "ignore")},
             "name": item["name"]}
            for item in self.items
        ]  # fmt: skip
        with atomic_path(self.datalist_path) as tmp:
            tmp.write_text(json.dumps({"training": training}, indent=2) + "\n")
        self._diagnostics()
        return self.datalist_path

    def _paths(self, name: str) -> dict[str, Path]:
        """A tile's files, in the order they are written: the ignore mask last, so a tile is done once it exists."""
        pictures = {k: self.output_dir / k / f"{name}.png" for k in ("teacher", "label")}
        return {
            **pictures,
            "counts": self.output_dir / "counts" / f"{name}.json",
            "ignore": self.output_dir / "ignore" / f"{name}.png",
        }

    def _check_teacher(self) -> None:
        """Labels of another teacher or other label settings are never mixed in: ``teacher.json`` records what the
        labels of ``output_dir`` come from."""
        digest = hashlib.md5(self.teacher_path.read_bytes()).hexdigest()
        settings = {"outlines": self.outlines, "seed": self.seed, "pointless": self.pointless, "split": SPLIT_RULE}
        record = self.output_dir / "teacher.json"
        if record.is_file():
            # labels from before the pointless option / before 0.12.0's nearest-point split
            known = {"pointless": "ignore", "split": "distance_watershed", **json.loads(record.read_text())}
            if known.get("md5") != digest:
                raise ValueError(
                    f"{self.output_dir}: holds labels from another teacher (md5 {known.get('md5')}, "
                    f"{self.teacher_path} is {digest}); choose another output_dir."
                )
            if any(known.get(k, v) != v for k, v in settings.items()):
                raise ValueError(
                    f"{self.output_dir}: holds labels made with other settings "
                    f"({ {k: known.get(k) for k in settings} }, now {settings}); choose another output_dir."
                )
            return
        with atomic_path(record) as tmp:
            tmp.write_text(
                json.dumps({"teacher_path": str(self.teacher_path), "md5": digest, **settings}, indent=2) + "\n"
            )

    def _label_tile(self, item: dict, index: int, paths: dict[str, Path]) -> None:
        image, points = load_tile(item)
        instances = self.predictor(image)
        result = self._labels(image, instances, points, index)
        if result.label.max() > np.iinfo(np.uint16).max or instances.max() > np.iinfo(np.uint16).max:
            raise ValueError(f"{item['image']}: more than 65535 nuclei do not fit a 16-bit label image.")
        pictures = {
            "teacher": instances.astype(np.uint16),
            "label": result.label.astype(np.uint16),
            "counts": {"points": len(points), **result.counts},
            "ignore": result.ignore.astype(np.uint8),
        }
        for key, value in pictures.items():  # in the order of _paths: the ignore mask last
            with atomic_path(paths[key]) as tmp:
                if key == "counts":
                    tmp.write_text(json.dumps(value) + "\n")
                else:
                    Image.fromarray(value).save(tmp, format="PNG")

    def _labels(self, image: torch.Tensor, instances: np.ndarray, points: np.ndarray, index: int) -> PointLabels:
        """The label rules on one tile (and the outlines moved onto the image when asked); the fallback ellipses are
        drawn with ``seed + index``, so the result is reproducible."""
        fallback = np.asarray(self.sampler.set_random_state(self.seed + index)(points, instances.shape))[0]
        result = point_constrained_labels(instances, points, fallback, self.pointless)
        result.counts["outlines_moved"] = 0
        if self.outlines == "haematoxylin":
            haematoxylin = rgb2hed(image.permute(1, 2, 0).numpy().astype(np.uint8))[..., 0]
            label, given_up, moved = haematoxylin_outlines(result.label, haematoxylin, points)
            ignore = (result.ignore | given_up) & (label == 0)  # an outline may grow over an ignored nucleus
            result = PointLabels(label, ignore, {**result.counts, "outlines_moved": moved})
        return result

    def _diagnostics(self) -> None:
        """``diagnostics.json``: per tile the label rule counts and, where the tile has a dense label (reporting
        only), the AJI of the teacher's prediction and of the refined label; their means and the total counts
        under ``summary``; ``refine_example.png``."""
        tiles, pooled = [], {rule: [] for rule in POINT_RULES}
        for item in self.items:
            paths = self._paths(item["name"])
            teacher, label = read_label(paths["teacher"]), read_label(paths["label"])
            row: dict = {"name": item["name"], **json.loads(paths["counts"].read_text())}
            row["ignored_fraction"] = float(read_label(paths["ignore"]).mean())
            if "label" in item:
                dense = read_label(item["label"])
                row["teacher_aji"] = instance_metrics(teacher, dense)["aji"]
                row["refined_aji"] = instance_metrics(label, dense)["aji"]
                per_rule = rule_iou(teacher, label, dense, LoadPoints()(item["points"], dense.shape).numpy())
                for rule, values in per_rule.items():
                    pooled[rule] += values
                    row[f"{rule}_iou"] = float(np.mean(values)) if values else None
            tiles.append(row)
        summary = {
            k: float(np.mean([t[k] for t in tiles]))
            for k in ("teacher_aji", "refined_aji", "ignored_fraction")
            if all(k in t for t in tiles)
        }
        if all("refined_aji" in t for t in tiles):  # pooled over the tiles' points
            summary.update({f"{r}_iou": float(np.mean(v)) if v else float("nan") for r, v in pooled.items()})
        summary.update({k: int(sum(t[k] for t in tiles)) for k in _COUNTS})
        with atomic_path(self.output_dir / "diagnostics.json") as tmp:
            tmp.write_text(json.dumps({"summary": summary, "tiles": tiles}, indent=2) + "\n")
        self.logger.info("refined labels: " + ", ".join(f"{k} {v:.3g}" for k, v in summary.items()))
        self._figure(self.items[0])

    def _figure(self, item: dict, size: int = 256) -> None:
        """Tile with points, the teacher's nuclei, the refined outlines and the refined label (ignored pixels grey) on a
        central crop."""
        image, points = load_tile(item)
        rgb = image.permute(1, 2, 0).numpy().astype(np.uint8)
        paths = self._paths(item["name"])
        teacher, label = read_label(paths["teacher"]), read_label(paths["label"])
        ignore = read_label(paths["ignore"]) > 0
        h, w = label.shape
        y0, x0 = max((h - size) // 2, 0), max((w - size) // 2, 0)
        box = (slice(y0, y0 + size), slice(x0, x0 + size))
        local = points - np.array([y0, x0])
        local = local[(local >= 0).all(1) & (local < [min(size, h), min(size, w)]).all(1)]
        refined = instances_rgb(label[box])
        refined[ignore[box]] = 128
        row = [
            points_on(rgb[box], local),
            points_on(contours_on(rgb[box], teacher[box]), local),
            points_on(contours_on(rgb[box], label[box]), local),
            points_on(refined, local, colour=(255, 0, 0)),
        ]
        titles = ["tile + points", "teacher", "refined outlines", "refined label (grey: ignored)"]
        picture = grid([row], titles)
        with atomic_path(self.output_dir / "refine_example.png") as tmp:
            picture.save(tmp, format="PNG")
