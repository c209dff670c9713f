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

from collections.abc import Sequence

from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["LossProgressBar"]


class LossProgressBar:
    """An ignite progress bar (tqdm) per epoch that shows the losses named in ``keys`` of ``engine.state.output``."""

    def __init__(self, keys: Sequence[str] = ("loss_G", "loss_D"), persist: bool = False) -> None:
        self.keys = tuple(keys)
        self.bar = ProgressBar(persist=persist)

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=self._losses)

    def _losses(self, output: dict) -> dict[str, float]:
        return {k: output[k] for k in self.keys if k in output}
