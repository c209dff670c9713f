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
"""Atomic training checkpoints that a killed run resumes from.

MONAI's ``CheckpointSaver`` writes in place (``atomic=False``), so a run killed mid-write can leave a truncated
file as its newest checkpoint. :class:`TrainingCheckpoint` writes every checkpoint to a temporary file and
renames it, keeps the newest ``n_saved``, and on ``STARTED`` restores the newest one (networks, optimisers,
schedulers, image pools and the engine's iteration count) when ``resume`` is on. Each checkpoint also records the
run's ``settings`` (what it learns from: data, seed, loss options, ...); a resume under other settings stops with the
setting named, instead of silently continuing (or reusing the finished model of) an older configuration.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from networks.hover_unet import hover_unet_features
from scripts.data.atomic import atomic_path, remove_stale_temporaries
from scripts.runtime.distributed import is_main_process

__all__ = ["inference_network", "load_network_weights", "TrainingCheckpoint", "latest_checkpoint", "list_checkpoints"]

_NAME = re.compile(r"^checkpoint_(\d+)\.pt$")


def list_checkpoints(folder: str | Path) -> list[Path]:
    """The ``checkpoint_<iteration>.pt`` files of ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint of ``folder``, or ``None``."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


class TrainingCheckpoint:
    """Save ``save_dict`` atomically every ``save_interval`` epochs and when training completes; resume.

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict``/``load_state_dict`` (networks, optimisers, schedulers, ...). The
            engine's own state (its iteration count, and whatever else its ``state_dict`` holds) is saved under
            ``"trainer"`` too.
        save_interval: save every this many epochs (``0``: only at the end).
        n_saved: number of newest checkpoints kept.
        resume: on ``STARTED``, load the newest checkpoint of ``save_dir`` if there is one.
        settings: JSON-compatible settings that define what the run learns, saved in every checkpoint (``"settings"``)
            and compared on resume: a difference is an error naming the setting. The schedule's length is not one of
            them (a resumed run may train longer). Checkpoints written before settings were recorded resume with a
            warning.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: dict[str, Any],
        save_interval: int = 1,
        n_saved: int = 2,
        resume: bool = True,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        if n_saved < 1 or save_interval < 0:
            raise ValueError(f"need n_saved >= 1 and save_interval >= 0, got {n_saved}, {save_interval}.")
        reserved = sorted({"trainer", "settings"} & set(save_dict))
        if reserved:
            raise ValueError(f"TrainingCheckpoint: {reserved} are reserved for the engine's state and the settings.")
        missing = [k for k, v in save_dict.items() if not hasattr(v, "state_dict")]
        if missing:
            raise TypeError(f"TrainingCheckpoint: {missing} have no state_dict().")
        self.save_dir, self.save_dict = Path(save_dir), save_dict
        self.save_interval, self.n_saved, self.resume = save_interval, n_saved, resume
        self.settings = json.loads(json.dumps(dict(settings or {}), default=str))  # what a reloaded checkpoint holds
        self.logger = logging.getLogger(self.__class__.__name__)

    def attach(self, engine: Engine) -> None:
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load_latest)
        if self.save_interval:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def save(self, engine: Engine) -> Path:
        """Write ``checkpoint_<iteration>.pt`` (unless it exists) and delete all but the newest ``n_saved``.

        In a multi-process run only rank 0 writes (every rank holds the same weights); all ranks resume."""
        path = self.save_dir / f"checkpoint_{engine.state.iteration:08d}.pt"
        if not is_main_process():
            return path
        if not path.exists():
            with atomic_path(path) as tmp:
                state = {k: v.state_dict() for k, v in self.save_dict.items()}
                torch.save(state | {"trainer": engine.state_dict(), "settings": self.settings}, tmp)
            self.logger.info(f"saved {path}")
        for old in list_checkpoints(self.save_dir)[: -self.n_saved]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self, engine: Engine) -> Path | None:
        """Restore the newest checkpoint that can be read (if any); the engine keeps its configured ``max_epochs``.

        A damaged newest checkpoint (e.g. truncated by a full disk) is skipped with a warning naming it, and the next
        older one is used; a readable checkpoint of another configuration is an error, never skipped."""
        if is_main_process():
            remove_stale_temporaries(self.save_dir)
        candidates, damaged = list(reversed(list_checkpoints(self.save_dir))), []
        if not candidates:
            return None
        for path in candidates:
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
                break
            except Exception as e:  # a foreign or damaged file: say which, then try the older one
                damaged.append(f"{path} ({type(e).__name__}: {e})")
                self.logger.warning(f"{path}: cannot read this checkpoint ({type(e).__name__}); trying an older one.")
        else:
            raise ValueError("cannot read any checkpoint to resume from: " + "; ".join(damaged)) from None
        if damaged:
            self.logger.warning(f"resuming from {path}, skipped {len(damaged)} unreadable newer checkpoint(s)")
        missing = sorted(set(self.save_dict) - set(checkpoint)) + (["trainer"] if "trainer" not in checkpoint else [])
        if missing:
            raise ValueError(f"{path}: checkpoint lacks {missing}; it was written by a different configuration.")
        self._check_settings(path, checkpoint.get("settings"))
        engine_state = dict(checkpoint["trainer"])
        max_epochs = engine.state.max_epochs
        epoch_length = engine_state.get("epoch_length") or 1
        if max_epochs is not None and engine_state.get("iteration", 0) > max_epochs * epoch_length:
            raise ValueError(
                f"{path}: the checkpoint is at iteration {engine_state['iteration']}, beyond the configured "
                f"{max_epochs} epochs of {epoch_length} iterations; raise max_epochs to train further."
            )
        try:
            Checkpoint.load_objects(to_load=self.save_dict, checkpoint=checkpoint)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(f"{path}: does not match the configured networks ({first}).") from None
        engine.load_state_dict(engine_state | {"max_epochs": max_epochs})
        self.logger.info(f"resumed from {path} at iteration {engine.state.iteration}")
        return path

    def _check_settings(self, path: Path, saved: dict | None) -> None:
        """Raise if ``path`` was written under other settings than this run's (one line naming each difference)."""
        if not self.settings:
            return
        if saved is None:
            self.logger.warning(f"{path}: written before checkpoints recorded their settings; cannot check them.")
            return
        missing = object()
        changed = [
            f"{key} {saved.get(key, '(unset)')!r} -> {self.settings.get(key, '(unset)')!r}"
            for key in sorted(set(saved) | set(self.settings))
            if saved.get(key, missing) != self.settings.get(key, missing)
        ]
        if changed:
            raise ValueError(
                f"{path}: this run's settings differ from the checkpoint's ({'; '.join(changed)}); resume with the "
                f"checkpoint's settings, or train into a new output folder."
            )


def inference_network(bundle: str | Path) -> torch.nn.Module:
    """A fresh ``network_def`` of ``<bundle>/configs/inference.json`` (the shipped model's architecture)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_files([Path(bundle) / "configs" / "inference.json"]))
    return parser.get_parsed_content("network_def")


def load_network_weights(
    network: torch.nn.Module, path: str | Path, key: str | None = None, what: str = "model"
) -> torch.nn.Module:
    """Load a state dict into ``network`` from ``path``: a bare state dict (``model.pt``) or a dictionary holding it
    under ``key`` (a training checkpoint, ``best.pt``).

    Raises:
        ValueError: the file is missing or unreadable, has no ``key``, or its weights do not fit ``network`` (with
            the first mismatching parameters and a hint to use the training run's configuration).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: {what} weights not found.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read the {what} weights ({type(e).__name__}: {e}).") from None
    if key is not None and isinstance(state, dict) and key in state:
        state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a {what} state dict" + (f" (no '{key}' entry)." if key else "."))
    own = network.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        details = []
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} shape mismatches, e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
        if missing:
            details.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        hint = "Use the same config files (profile, ablation) as the training run that wrote them."
        features = hover_unet_features(state)
        if features is not None and features != hover_unet_features(own):
            widths = json.dumps(list(features)).replace(" ", "")
            hint = (
                f"They are a HoVerUNet with features {widths}: pass --network_def#features '{widths}' (training and "
                f"evaluation configs) or --network_def#network#features '{widths}' (inference.json)."
            )
        raise ValueError(f"{path}: the weights do not match the configured {what} ({'; '.join(details)}). {hint}")
    network.load_state_dict(state)
    return network
