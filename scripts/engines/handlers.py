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
"""Small ignite handlers for the training workflows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

__all__ = ["LossProgressBar", "StopOnNonFiniteLoss", "TrainingDivergedError"]


class TrainingDivergedError(FloatingPointError):
    """A loss became NaN or infinite; the weights were not updated with it."""


class LossProgressBar:
    """An ignite progress bar (tqdm) per epoch that shows the losses named in ``keys`` of ``engine.state.output``."""

    def __init__(self, keys: Sequence[str] = ("loss_G", "loss_D"), persist: bool = False) -> None:
        self.keys = tuple(keys)
        self.bar = ProgressBar(persist=persist)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=self._losses)

    def _losses(self, output: dict) -> dict[str, float]:
        return {k: _scalar(output[k]) for k in self.keys if k in output}


class StopOnNonFiniteLoss:
    """Stop training with a clear error when ``output[key]`` is NaN or infinite.

    Unlike ignite's ``TerminateOnNan`` it raises (:class:`TrainingDivergedError`) instead of
    completing the run, so no checkpoint or model is written from the diverged weights: the last checkpoint stays
    the last good one.
    """

    def __init__(self, key: str = "loss") -> None:
        self.key = key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        value = _scalar(output[self.key]) if isinstance(output, dict) and self.key in output else None
        if value is not None and not math.isfinite(value):
            raise TrainingDivergedError(
                f"{self.key} is {value} at iteration {engine.state.iteration}: training stopped; the last saved "
                "checkpoint is intact. Resume from it with a lower learning rate or amp off."
            )


def _scalar(value) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
