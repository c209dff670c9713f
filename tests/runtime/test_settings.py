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

import os
import subprocess
import sys

import pytest

from scripts.runtime.settings import DEBUG, SettingError, as_bool, check, clear_error
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


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("iterations", "abc", "iterations must be an integer >= 1, got 'abc'"),
        ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
        ("lr", "fast", r"lr must be a number in \(0.0, inf\), got 'fast'"),
        ("overlap", 1.0, r"overlap must be a number in \[0.0, 1.0\), got 1.0"),
        ("label_format", "jpg", r"label_format must be one of \['png', 'tif'\], got 'jpg'"),
        ("num_threads", 0, "num_threads must be an integer >= 1 or null, got 0"),
        ("tissue", "maybe", "tissue must be true or false, got 'maybe'"),
    ],
)
def test_check_names_the_setting_its_value_and_what_is_allowed(name, value, message):
    with pytest.raises(SettingError, match=message):
        check(**{name: value})


def test_check_accepts_good_values_and_knows_every_setting_it_is_given():
    check(iterations=10, batch_size=4, lr=1e-3, overlap=0.25, label_format="tif", num_threads=None, tissue="false")
    with pytest.raises(KeyError, match="no rule for the setting 'colour'"):
        check(colour="red")


def test_clear_error_finds_the_project_error_behind_monai_wrappers():
    from monai.bundle import ConfigParser

    parser = ConfigParser({"x": "$scripts.runtime.settings.check(iterations='abc')"}, globals={"scripts": "scripts"})
    with pytest.raises(RuntimeError) as wrapped:
        parser.get_parsed_content("x")
    assert isinstance(clear_error(wrapped.value), SettingError)
    try:
        raise ValueError("a library's own error")  # raised here, in a test: not the project's code
    except ValueError as e:
        assert clear_error(e) is None


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "POINTSYNTH_NO_REEXEC": "1"}
    env.pop(DEBUG, None)
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


TRAIN = "['bundle/configs/train.json','bundle/configs/train_smoke.json']"
INFER = "bundle/configs/inference.json"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["monai.bundle", "run", "training", "--config_file", TRAIN, "--iterations", "abc"], "iterations must be"),
        (["monai.bundle", "run", "training", "--config_file", TRAIN, "--epoch_length", "0"], "epoch_length must be"),
        (
            ["monai.bundle", "run", "--config_file", "bundle/configs/inference.json", "--region_size", "abc"],
            "region_size",
        ),
        (["scripts", "pipeline", "--seed", "abc"], "seed must be an integer, got 'abc'"),
        (["scripts", "demo", "--samples", "abc", "--output", "/tmp/pointsynth_demo_bad"], "samples must be"),
    ],
    ids=["iterations", "epoch_length", "region_size", "pipeline seed", "demo samples"],
)
def test_bad_settings_give_one_line_and_exit_2(args, message):
    run = _cli(*args)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and message in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "POINTSYNTH_DEBUG=1" in run.stderr


@pytest.mark.slow
def test_a_commands_own_stop_is_one_line_and_exit_2(tmp_path):
    run = _cli("scripts", "pipeline", "--profile", "huge", "--output", str(tmp_path / "out"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == ["error: profile must be one of ('tiny', 'cpu', 'smoke'), got 'huge'"]


@pytest.mark.slow
def test_debug_mode_shows_the_traceback():
    env_run = subprocess.run(
        [sys.executable, "-m", "scripts", "pipeline", "--seed", "abc"],
        cwd=REPO,
        env={**os.environ, DEBUG: "1", "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert env_run.returncode != 0 and "Traceback" in env_run.stderr
