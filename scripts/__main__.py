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
"""Command line of the project: ``python -m scripts <command> [--flags]`` (``--help`` lists them)."""

from __future__ import annotations

import sys

import fire


def _commands() -> dict:
    from scripts.bench import Bench
    from scripts.cli import (
        compare,
        demo,
        export,
        figures,
        fit_points,
        gan_selection,
        label_quality,
        pipeline,
        postprocessing,
        prepare,
        release,
        synthesis_report,
    )

    return {
        "prepare": prepare.prepare,
        "pipeline": pipeline.pipeline,
        "compare": compare.compare,
        "coherence": compare.coherence,
        "gan_selection": gan_selection.gan_selection,
        "label_quality": label_quality.label_quality,
        "postprocessing": postprocessing.postprocessing,
        "demo": demo.demo,
        "bench": Bench,
        "synthesis_report": synthesis_report.synthesis_report,
        "synthesis_colours": synthesis_report.synthesis_colours,
        "fit_points": fit_points.fit_points,
        "export": export.export,
        "release": release.release,
        "augmentation_figure": figures.augmentation_figure,
    }


def main() -> None:
    from scripts.runtime.settings import install_error_handler

    install_error_handler()  # a bad setting or input file: one "error:" line and exit status 2
    try:
        fire.Fire(_commands(), name="scripts")
    except SystemExit as stop:  # a command's own "error: ..." stop: the same one line and exit status 2
        if not isinstance(stop.code, str):
            raise
        print(stop.code, file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
