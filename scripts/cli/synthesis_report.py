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
"""``python -m scripts synthesis_report RUN_DIR ...``: a Markdown table of synthesis runs (ablations side by side).

Reads each run's ``metrics.jsonl`` (written by :class:`scripts.engines.synthesis_monitor.SynthesisMonitor`) and reports
the last validation round and the round kept in ``best.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_rounds", "synthesis_report"]

COLUMNS = ("point_f1", "diversity", "stain_distance", "score")


def read_rounds(run_dir: str | Path) -> list[dict]:
    """The validation rounds of a run, oldest first."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no validation metrics (is {run_dir} a synthesis run folder?)")
    rounds = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rounds:
        raise ValueError(f"{path}: empty; the run has not validated yet")
    return rounds


def synthesis_report(*run_dirs: str, output: str | None = None) -> None:
    """Markdown table: per run, the last round and the best round (by ``score``) with their metrics."""
    if not run_dirs:
        raise ValueError("give at least one run folder, e.g. runs/synthesis_cpu_c")
    head = "| run | round | iteration | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(COLUMNS))]
    for run in run_dirs:
        rounds = read_rounds(run)
        for name, row in (("last", rounds[-1]), ("best", max(rounds, key=lambda r: r["score"]))):
            values = " | ".join(f"{row[c]:.4f}" for c in COLUMNS)
            lines.append(f"| {Path(run).name} | {name} | {row['iteration']} | {values} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if output:
        Path(output).write_text(table)
