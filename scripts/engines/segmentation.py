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
"""Stage 4: what the segmentation workflow (``train.json``) needs beyond MONAI.

- :func:`segmentation_datalist`: training items for the three kinds of training data (``synthetic`` pairs of
  stage 3, ``dense`` real labels: the upper bound, ``pseudo`` masks sampled from the real points: the baseline)
  and the real validation tiles;
- :class:`PrepareBatchNucleus`: batches -> ``(image, {NP, HV})`` for MONAI's ``HoVerNetLoss``;
- :class:`FreezeEncoder`: the two training phases (decoders first, then everything);
- :class:`SegmentationValidator`: model selection on whole validation tiles by point-detection F1 (no dense
  labels), or by a dense metric for the upper bound; the best network goes to ``model.pt``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import load_decathlon_datalist
from monai.engines.utils import PrepareBatch
from monai.utils import HoVerNetBranch

from scripts.data.atomic import atomic_path
from scripts.data.datalist import PrepareError, build_datalist
from scripts.data.images import load_tile, read_label
from scripts.engines.losses import IGNORE_KEY
from scripts.engines.validation import PeriodicValidation
from scripts.evaluation.metrics import instance_metrics, point_f1
from scripts.inference.predict import TilePredictor
from scripts.runtime.distributed import unwrap

__all__ = [
    "TRAINING_DATA",
    "FreezeEncoder",
    "PrepareBatchNucleus",
    "SegmentationValidator",
    "datalist_items",
    "encoder_parameters",
    "evaluation_items",
    "real_training_items",
    "segmentation_datalist",
]

#: kinds of training data of the segmentation workflow
TRAINING_DATA = ("synthetic", "dense", "pseudo", "synthetic+pseudo", "refined")


def segmentation_datalist(
    training_data: str,
    data_dir: str | Path,
    synthetic_datalist: str | Path | None = None,
    seed: int = 0,
    refined_datalist: str | Path | None = None,
) -> dict[str, list[dict]]:
    """``{"training": [...], "validation": [...]}`` of the segmentation workflow.

    Validation items are always the real validation tiles of ``data_dir`` (``split.json``'s ``val`` list, else a
    quarter drawn with ``seed``) with their points, and their ``label`` when ``data_dir`` has ``labels/``.
    Training items: ``synthetic``: the ``image``/``label`` pairs of ``synthetic_datalist``; ``dense``: the real
    training tiles with their labels; ``pseudo``: the real training tiles with their ``points`` only (the
    workflow samples a mask from them every time a tile is drawn); ``synthetic+pseudo``: both lists together;
    ``refined``: the ``image``/``label``/``ignore`` items of ``refined_datalist`` (the real training tiles with
    point-constrained labels from a teacher, written by :class:`~scripts.engines.refine.PointConstrainedLabeller`).

    Raises:
        ValueError: unknown ``training_data``, or a missing synthetic datalist.
        PrepareError: problems with the files of ``data_dir`` (all listed), or no labels for ``dense``.
    """
    if training_data not in TRAINING_DATA:
        raise ValueError(f"training_data must be one of {TRAINING_DATA}, got {training_data!r}.")
    data = Path(str(data_dir))
    if training_data == "dense" and not (data / "labels").is_dir():
        raise PrepareError([f"{data}: training_data 'dense' needs real instance labels in {data / 'labels'}"])
    datalist = _real_datalist(data, seed)
    if not datalist["validation"]:
        raise PrepareError([f"{data}: no validation tiles (add a split.json with a 'val' list)"])
    training = []
    if training_data.startswith("synthetic"):
        if synthetic_datalist is None or not Path(str(synthetic_datalist)).is_file():
            raise ValueError(
                f"{synthetic_datalist}: synthetic datalist not found; run the synthesize workflow first "
                "(bundle/configs/synthesize.json)."
            )
        training += [{k: t[k] for k in ("image", "label", "name")} for t in datalist_items(synthetic_datalist)]
    if training_data == "refined":
        if refined_datalist is None or not Path(str(refined_datalist)).is_file():
            raise ValueError(f"{refined_datalist}: refined datalist not found; run the refine workflow (refine.json).")
        training += [{k: t[k] for k in ("image", "label", "ignore", "name")} for t in datalist_items(refined_datalist)]
    if training_data == "dense":
        training += [{"image": t["image"], "label": t["label"], "name": t["name"]} for t in datalist["training"]]
    if training_data.endswith("pseudo"):
        training += [{"image": t["image"], "points": t["points"], "name": t["name"]} for t in datalist["training"]]
    if not training:
        raise PrepareError([f"no training items for training_data {training_data!r}"])
    return {"training": training, "validation": datalist["validation"]}


def _real_datalist(data: Path, seed: int) -> dict:
    """Datalist of a data folder's tiles (with labels when it has ``labels/``), split by ``split.json`` if present,
    else a quarter of the tiles drawn with ``seed`` for validation."""
    if not data.is_dir():
        raise PrepareError([f"{data}: data folder not found (expected images/ and points/ inside)"])
    labels = data / "labels" if (data / "labels").is_dir() else None
    split = data / "split.json" if (data / "split.json").is_file() else None
    datalist, problems = build_datalist(
        data / "images", data / "points", labels, ".", split, 0.0 if split else 0.25, seed
    )
    if problems:
        raise PrepareError(problems)
    return datalist


def real_training_items(data_dir: str | Path, seed: int = 0) -> list[dict]:
    """The real training tiles of ``data_dir`` (``split.json``'s ``train`` list, else three quarters drawn with
    ``seed``): ``image``, ``points``, ``name`` and ``label`` when the folder has ``labels/`` (for reporting only)."""
    return real_items(data_dir, "training", seed)


def real_items(data_dir: str | Path, section: str = "training", seed: int = 0) -> list[dict]:
    """The real tiles of one ``section`` (``training`` or ``validation``) of ``data_dir``'s split (``split.json``, else
    a quarter drawn with ``seed`` for validation): ``image``, ``points``, ``name`` and ``label`` when the folder has
    ``labels/``."""
    return _real_datalist(Path(str(data_dir)), seed)[section]


def datalist_items(path: str | Path, key: str = "training") -> list[dict]:
    """The items of a MONAI datalist JSON file (paths resolved against its folder), e.g. a synthetic dataset to
    evaluate a segmenter on (mask-image coherence)."""
    path = Path(str(path))
    if not path.is_file():
        raise ValueError(f"{path}: datalist not found.")
    items = load_decathlon_datalist(path, data_list_key=key, base_dir=path.parent)
    return [{**item, "name": item.get("name") or Path(item["image"]).stem} for item in items]


def evaluation_items(data_dir: str | Path, section: str = "validation", seed: int = 0) -> list[dict]:
    """The labelled tiles of ``data_dir`` to evaluate on: its ``validation`` tiles (``split.json``), its
    ``training`` tiles, or ``all``; each item has ``image``, ``label``, ``points`` and ``name``."""
    sections = {"validation": ("validation",), "training": ("training",), "all": ("training", "validation")}
    if section not in sections:
        raise ValueError(f"section must be one of {tuple(sections)}, got {section!r}.")
    data = Path(str(data_dir))
    if not (data / "labels").is_dir():
        raise PrepareError([f"{data}: evaluation needs real instance labels in {data / 'labels'}"])
    datalist = _real_datalist(data, seed)
    items = [item for name in sections[section] for item in datalist[name]]
    return [{k: item[k] for k in ("image", "label", "points", "name")} for item in items]


class PrepareBatchNucleus(PrepareBatch):
    """``(image, {NP: one-hot foreground (B, 2, H, W), HV: HoVer maps (B, 2, H, W)})`` from a batch dictionary,
    the target format of MONAI's ``HoVerNetLoss`` (no nucleus types); a batch with an ``ignore_key`` entry adds
    the (B, 1, H, W) ignore mask of :class:`~scripts.engines.losses.MaskedHoVerNetLoss`."""

    def __init__(
        self, image_key: str = "image", np_key: str = "label_np", hv_key: str = "hv_label", ignore_key: str = "ignore"
    ) -> None:
        self.image_key, self.np_key, self.hv_key, self.ignore_key = image_key, np_key, hv_key, ignore_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        def get(key: str) -> torch.Tensor:
            if key not in batchdata:
                raise KeyError(f"the batch has no '{key}' (keys: {sorted(batchdata)}); check the transforms.")
            return torch.as_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking, **kwargs)

        label = {HoVerNetBranch.NP.value: get(self.np_key), HoVerNetBranch.HV.value: get(self.hv_key)}
        if self.ignore_key in batchdata:
            label[IGNORE_KEY] = get(self.ignore_key)
        return get(self.image_key), label


def encoder_parameters(network: torch.nn.Module) -> Iterator[torch.nn.Parameter]:
    """The encoder's parameters of ``networks.ImageToMaskNet`` (its ``encoder_parameters``) or MONAI ``HoVerNet``
    (``conv0``, ``res_blocks``, ``bottleneck``)."""
    if hasattr(network, "encoder_parameters"):
        yield from network.encoder_parameters()
        return
    names = ("conv0", "res_blocks", "bottleneck")
    if not all(hasattr(network, n) for n in names):
        raise TypeError(f"{type(network).__name__}: cannot tell its encoder (no encoder_parameters(), not a HoVerNet).")
    for name in names:
        yield from getattr(network, name).parameters()


class FreezeEncoder:
    """Phase 1 of training: the encoder is frozen for the first ``epochs`` epochs (decoders learn), then all
    parameters train (phase 2). ``epochs=0`` trains everything from the start."""

    def __init__(self, network: torch.nn.Module, epochs: int) -> None:
        if epochs < 0:
            raise ValueError(f"freeze_encoder_epochs must be >= 0, got {epochs}.")
        self.network, self.epochs = network, epochs
        self.logger = logging.getLogger(self.__class__.__name__)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        frozen = engine.state.epoch <= self.epochs
        params = list(encoder_parameters(unwrap(self.network)))
        if params and params[0].requires_grad == frozen:
            for p in params:
                p.requires_grad_(not frozen)
            self.logger.info(f"epoch {engine.state.epoch}: encoder {'frozen' if frozen else 'trainable'}")


class SegmentationValidator(PeriodicValidation):
    """Every ``interval`` epochs, and at the end: segment the whole validation tiles, score them, keep the best
    network (:class:`~scripts.engines.validation.PeriodicValidation` does the bookkeeping).

    Args:
        network: the segmenter.
        validation_items: datalist items with ``image`` and ``points`` (and ``label`` for dense metrics).
        model_path: where the best network's state dict is written (atomically), e.g. ``models/model.pt``.
        output_dir: folder of ``metrics.jsonl``.
        key_metric: the selection metric: ``"point_f1"`` (points only: the method and the pseudo baseline) or a
            dense metric of :func:`~scripts.evaluation.metrics.instance_metrics` such as ``"aji"`` (the upper
            bound only).
        interval: validate every this many epochs (and always after the last epoch).
        roi_size: sliding-window size.
        sw_batch_size: windows per forward pass.
        log_dir: TensorBoard folder (None: none).
        amp: run the network under bfloat16 autocast.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        validation_items: Sequence[dict],
        model_path: str | Path,
        output_dir: str | Path,
        key_metric: str = "point_f1",
        interval: int = 1,
        roi_size: int = 256,
        sw_batch_size: int = 4,
        log_dir: str | Path | None = None,
        amp: bool = False,
    ) -> None:
        super().__init__(output_dir, key_metric, interval, on_completed=True, log_dir=log_dir, metrics_prefix="val_")
        if not validation_items:
            raise ValueError("SegmentationValidator needs at least one validation tile.")
        if key_metric != "point_f1" and not all("label" in item for item in validation_items):
            raise ValueError(f"key_metric {key_metric!r} needs labels for every validation tile; use 'point_f1'.")
        self.network, self.items, self.model_path = network, list(validation_items), Path(model_path)
        self.predictor = TilePredictor(network, roi_size, sw_batch_size, amp=amp)

    def validate(self, engine: Engine | None = None) -> dict[str, float]:
        """Mean metrics over the validation tiles (dense ones too when every tile has a label)."""
        per_tile = []
        for item in self.items:
            image, points = load_tile(item)
            prediction = self.predictor(image)
            if "label" in item:
                per_tile.append(instance_metrics(prediction, read_label(item["label"]), points=points))
            else:
                per_tile.append({"point_f1": point_f1(prediction, points)})
        names = set.intersection(*(set(t) for t in per_tile))
        return {k: float(np.mean([t[k] for t in per_tile])) for k in sorted(names)}

    def save_best(self, iteration: int, metrics: dict[str, float]) -> Path:
        with atomic_path(self.model_path) as tmp:
            torch.save(self.network.state_dict(), tmp)
        return self.model_path
