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
"""Tests of ``scripts/runtime/settings.py``: one reading of flags for the command line and the configs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scripts.runtime.settings import as_bool
from tests.helpers import REPO


@pytest.mark.parametrize("value", [True, 1, "true", "True", " yes", "on", "1"])
def test_true(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", [False, 0, "false", "FALSE", "no", "off", "0"])
def test_false(value):
    assert as_bool(value) is False


@pytest.mark.parametrize("value", ["maybe", "", 2, None, 0.5])
def test_anything_else_is_refused_naming_the_setting(value):
    with pytest.raises(ValueError, match=f"overwrite must be true or false, got {value!r}"):
        as_bool(value, "overwrite")


def test_the_segmentation_workflow_does_not_load_the_gan_trainer():
    code = (
        "import sys, scripts.engines.handlers, scripts.engines.segmentation; "
        "sys.exit('scripts.engines.cyclegan' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
