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
"""What every periodic validation of a training run shares: when it runs, best-model tracking that survives a resume,
the metrics log (``metrics.jsonl``), TensorBoard scalars, the atomic write of the best model, rank 0 only.

Why not MONAI's ``SupervisedEvaluator`` + ``ValidationHandler`` + ``CheckpointSaver``: the validation here segments
whole tiles (sliding window + instance post-processing, scored per tile on points or instances), which is not the
evaluator's batch -> metric loop; ignite's ``Checkpoint`` behind ``CheckpointSaver`` removes the previous best file
before it writes the new one (a crash in between leaves none), and its best score resumes only through its own saved
state and ``CheckpointLoader``, beside the project's atomic training checkpoints. Both validators (the segmenter's and
the GAN's) share this one class instead."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from torch.utils.tensorboard import SummaryWriter

from scripts.runtime.distributed import is_main_process

__all__ = ["PeriodicValidation"]


class PeriodicValidation(ABC):
    """An ignite handler run every ``interval`` epochs (and, with ``on_completed``, once more at the end).

    Subclasses compute the metrics (:meth:`validate`) and write their best model (:meth:`save_best`, atomically);
    this class keeps the best ``key_metric`` (in checkpoints through :meth:`state_dict`), appends every round to
    ``output_dir/metrics.jsonl``, logs ``validation/<name>`` scalars to TensorBoard and copies the metrics into
    ``engine.state.metrics`` (prefixed with ``metrics_prefix``). In a multi-process run only rank 0 validates; the
    other ranks wait for it in their next gradient synchronisation.

    Args:
        output_dir: folder of ``metrics.jsonl``.
        key_metric: the metric the best model is selected by (higher is better).
        interval: validate every this many epochs.
        on_completed: also validate when training completes (once, if the last epoch already did).
        log_dir: TensorBoard folder (None: no TensorBoard).
        metrics_prefix: prefix of the names in ``engine.state.metrics``.
    """

    def __init__(
        self,
        output_dir: str | Path,
        key_metric: str,
        interval: int = 1,
        on_completed: bool = False,
        log_dir: str | Path | None = None,
        metrics_prefix: str = "",
    ) -> None:
        if int(interval) < 1:
            raise ValueError(f"val_interval must be >= 1, got {interval}.")
        self.output_dir, self.key_metric = Path(output_dir), key_metric
        self.interval, self.on_completed = int(interval), on_completed
        self.log_dir, self.metrics_prefix = log_dir, metrics_prefix
        self.writer: SummaryWriter | None = None
        self.best: dict[str, Any] = {"score": -float("inf"), "iteration": -1}
        self.last_iteration = -1
        self.logger = logging.getLogger(self.__class__.__name__)

    @abstractmethod
    def validate(self, engine: Engine) -> dict[str, float]:
        """The metrics of the current networks (``key_metric`` among them)."""

    @abstractmethod
    def save_best(self, iteration: int, metrics: dict[str, float]) -> Path:
        """Write the current networks as the best model, atomically; returns the file."""

    def log_extra(self, iteration: int, writer: SummaryWriter | None) -> None:
        """Write what a subclass shows beyond the metrics (e.g. sample grids); ``writer`` is TensorBoard's."""
        return None

    def attach(self, engine: Engine) -> None:
        event = Events.EPOCH_COMPLETED(every=self.interval)
        engine.add_event_handler(event | Events.COMPLETED if self.on_completed else event, self)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": float(self.best["score"]), "best_iteration": int(self.best["iteration"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = {"score": float(state["best_score"]), "iteration": int(state["best_iteration"])}

    def __call__(self, engine: Engine) -> dict[str, float]:
        iteration = engine.state.iteration
        if iteration == self.last_iteration or not is_main_process():  # COMPLETED right after the last round
            return {}
        self.last_iteration = iteration
        metrics = self.validate(engine)
        engine.state.metrics.update({f"{self.metrics_prefix}{k}": v for k, v in metrics.items()})
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")
        if self.log_dir is not None:
            self.writer = self.writer or SummaryWriter(log_dir=str(self.log_dir))
            for name, value in metrics.items():
                self.writer.add_scalar(f"validation/{name}", value, iteration)
        self.log_extra(iteration, self.writer)
        if self.writer is not None:
            self.writer.flush()
        saved = ""
        if metrics[self.key_metric] > self.best["score"]:
            self.best = {"score": metrics[self.key_metric], "iteration": iteration}
            saved = f", saved to {self.save_best(iteration, metrics)}"
        text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self.logger.info(
            f"validation at iteration {iteration}: {text} (best {self.key_metric} {self.best['score']:.4f} at "
            f"iteration {self.best['iteration']}{saved})"
        )
        return metrics
