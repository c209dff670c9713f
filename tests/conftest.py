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
"""Shared fixtures: the embedded sample (always present) and the full MoNuSeg training data (if beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import MONUSEG, SAMPLE

# Workflows run in the test process must not restart it with the allocator setting (scripts.runtime.configure).
os.environ.setdefault("POINTSYNTH_NO_REEXEC", "1")


@pytest.fixture(scope="session")
def sample_names() -> list[str]:
    return sorted(p.stem for p in (SAMPLE / "images").glob("*.png"))


@pytest.fixture(scope="session")
def monuseg() -> Path:
    if not (MONUSEG / "split.json").is_file():
        pytest.skip(f"MoNuSeg training data not found at {MONUSEG}")
    return MONUSEG
