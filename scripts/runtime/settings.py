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
"""Reading user-facing settings from the command line and from configs."""

from __future__ import annotations

__all__ = ["TRUE_WORDS", "FALSE_WORDS", "as_bool"]

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def as_bool(value: bool | int | str, name: str = "value") -> bool:
    """A flag from a config or the command line: python-fire passes ``--overwrite false`` as the string ``"false"``.

    Accepts booleans, 0/1 and the words of :data:`TRUE_WORDS` / :data:`FALSE_WORDS` (any case).

    Raises:
        ValueError: anything else, naming the setting (``name``) and its value.
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
    raise ValueError(f"{name} must be true or false, got {value!r}.")
