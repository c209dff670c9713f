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
"""User-facing settings: one reading of flags, up-front checks of the workflows' settings, and one-line errors.

The bundle workflows call :func:`check` first in ``initialize`` with their settings (``--iterations abc`` or
``--batch_size 0`` stops there, naming the setting, its value and what is allowed); :func:`install_error_handler`
turns an error that the project raised on purpose (a bad setting, a bad input file, ...) into one ``error:`` line and
exit status 2 instead of MONAI's 60-80 line traceback ending in "Failed to evaluate ConfigExpression". Set the
environment variable ``POINTSYNTH_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "DEBUG",
    "FALSE_WORDS",
    "RULES",
    "SettingError",
    "TRUE_WORDS",
    "as_bool",
    "check",
    "clear_error",
    "install_error_handler",
]

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
DEBUG = "POINTSYNTH_DEBUG"
_PROJECT = tuple(str(Path(__file__).resolve().parents[2] / name) for name in ("scripts", "transforms", "networks"))


class SettingError(ValueError):
    """A user-facing setting has a value outside what is allowed; the message names both."""


def as_bool(value: bool | int | str, name: str = "value") -> bool:
    """A flag from a config or the command line: python-fire passes ``--overwrite false`` as the string ``"false"``.

    Accepts booleans, 0/1 and the words of :data:`TRUE_WORDS` / :data:`FALSE_WORDS` (any case).

    Raises:
        SettingError: anything else, naming the setting (``name``) and its value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise SettingError(f"{name} must be true or false, got {value!r}.")


def _integer(minimum: int | None = None, optional: bool = False) -> Callable[[str, Any], None]:
    def rule(name: str, value: Any) -> None:
        if value is None and optional:
            return
        ok = isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)
        if not ok:
            allowed = "an integer" if minimum is None else f"an integer >= {minimum}"
            raise SettingError(f"{name} must be {allowed}{' or null' if optional else ''}, got {value!r}.")

    return rule


def _number(low: float, high: float | None = None, low_open: bool = False, high_open: bool = True, optional=False):
    def rule(name: str, value: Any) -> None:
        if value is None and optional:
            return
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and (value > low if low_open else value >= low)
        ok = ok and (high is None or (value < high if high_open else value <= high))
        if not ok:
            span = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{')' if high_open else ']'}"
            raise SettingError(f"{name} must be a number in {span}{' or null' if optional else ''}, got {value!r}.")

    return rule


def _choice(*choices: Any) -> Callable[[str, Any], None]:
    def rule(name: str, value: Any) -> None:
        if value not in choices:
            raise SettingError(f"{name} must be one of {list(choices)}, got {value!r}.")

    return rule


def _flag(name: str, value: Any) -> None:
    as_bool(value, name)


def _flag_or_auto(name: str, value: Any) -> None:
    if value != "auto":
        try:
            as_bool(value, name)
        except SettingError:
            raise SettingError(f"{name} must be true, false or auto, got {value!r}.") from None


#: the user-facing settings of the bundle workflows and what each allows
RULES: dict[str, Callable[[str, Any], None]] = {
    **{
        k: _integer(1)
        for k in ("iterations", "batch_size", "epoch_length", "val_interval", "keep_checkpoints", "sw_batch_size")
    },
    **{k: _integer(1) for k in ("region_size", "random_tiles", "masks_per_tile", "draws_per_mask", "overlay_size")},
    **{k: _integer(1) for k in ("ngf", "ndf", "spade_hidden")},
    **{k: _integer(16) for k in ("crop_size", "roi_size")},
    **{
        k: _integer(0)
        for k in ("num_workers", "margin", "workers", "freeze_encoder_epochs", "point_radius", "np_touching_gap")
    },
    "single_window": _integer(0),
    **{k: _integer() for k in ("seed", "synthesis_seed")},
    "num_threads": _integer(1, optional=True),
    "samples": _integer(1),
    "level": _integer(0, optional=True),
    "lr": _number(0.0, low_open=True),
    "overlap": _number(0.0, 1.0),
    "val_fraction": _number(0.0, 1.0),
    "lr_step_fraction": _number(0.0, 1.0, low_open=True, high_open=False),
    "mpp": _number(0.0, low_open=True, optional=True),
    "tile_mpp": _number(0.0, low_open=True, optional=True),
    "model_mpp": _number(0.0, low_open=True, optional=True),
    "tissue_threshold": _number(0.0, 1.0, low_open=True, optional=True),
    "fidelity_weight": _number(0.0),
    **{k: _flag for k in ("resume", "fast_allocator", "amp", "flip_tta", "tissue", "overwrite")},
    "compile": _flag_or_auto,
    "mask_prior": _choice("paper", "density"),
    "label_format": _choice("png", "tif"),
    "backend": _choice("auto", "tifffile", "openslide", "cucim"),
    "points_source": _choice("real", "random"),
    "points_section": _choice("training", "validation"),
    "training_data": _choice("synthetic", "dense", "pseudo", "synthetic+pseudo", "refined"),
    "eval_section": _choice("validation", "training", "all"),
}


def check(**settings: Any) -> None:
    """Check workflow settings against :data:`RULES` (first in a workflow's ``initialize``), and install the one-line
    error handler for the rest of the run.

    Raises:
        SettingError: the first setting outside what is allowed (its name, value and the allowed values).
        KeyError: a setting :data:`RULES` does not know (a mistake in the config, not the user's).
    """
    install_error_handler()
    for name, value in settings.items():
        if name not in RULES:
            raise KeyError(f"no rule for the setting {name!r}; add one to scripts.runtime.settings.RULES.")
        RULES[name](name, value)


def clear_error(error: BaseException) -> BaseException | None:
    """The exception in ``error``'s chain that the project raised on purpose, with a message meant for users: a
    :class:`SettingError`, or a ``ValueError`` / ``FileNotFoundError`` / ``FloatingPointError`` raised in the
    project's own code (``scripts/``, ``transforms/``, ``networks/``). ``None`` for anything else (a bug)."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, SettingError):
            return current
        if isinstance(current, (ValueError, FileNotFoundError, FloatingPointError)) and current.__traceback__:
            raised_in = traceback.extract_tb(current.__traceback__)[-1].filename
            if raised_in.startswith(_PROJECT):
                return current
        current = current.__cause__ or current.__context__
    return None


def _excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    clear = clear_error(error)
    if clear is None or os.environ.get(DEBUG):
        sys.__excepthook__(kind, error, tb)
        return
    message = str(clear).strip()
    print(f"error: {message}\n(set {DEBUG}=1 for the traceback)", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)


def install_error_handler() -> None:
    """Report uncaught errors that the project raised on purpose as one line and exit with status 2 (the traceback in
    ``POINTSYNTH_DEBUG`` mode)."""
    sys.excepthook = _excepthook
