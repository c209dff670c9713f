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
"""Reports on synthesis: ``python -m scripts synthesis_report RUN_DIR ...``, a Markdown table of synthesis runs
(ablations side by side) from each run's ``metrics.jsonl`` (written by
:class:`scripts.engines.synthesis_monitor.SynthesisMonitor`): the last validation round and the round kept in
``best.pt``; ``python -m scripts synthesis_colours SYNTHETIC_DIR``: the colour diversity of a synthetic dataset against
the real training tiles.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["read_rounds", "synthesis_colours", "synthesis_report"]

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


def synthesis_colours(synthetic_dir: str, data: str = "../shared/data/monuseg", output: str | None = None) -> None:
    """Colour diversity (:func:`scripts.evaluation.synthesis_quality.colour_spread`, delta E of mean LAB colours):
    across the noise draws of each mask of the synthetic dataset in ``synthetic_dir`` (mean over masks), across all
    its images, and across the real training tiles of ``data`` (its ``split.json`` training section, or the default
    split): a generator that draws one average stain gives draws of one mask a spread far below the real tiles'.
    Per validation tile (images only), the distance of its mean colour to the nearest training tile and to the
    nearest synthetic image: which real colours the pairs do not cover. Prints the JSON report (and writes it to
    ``output``)."""
    from scripts.data.images import read_image
    from scripts.data.tiles import tile_datalist
    from scripts.evaluation.synthesis_quality import colour_spread
    from transforms import lab_statistics

    folder = Path(synthetic_dir)
    datalist = folder / "datalist.json"
    if not datalist.is_file():
        raise FileNotFoundError(f"{datalist}: not found (is {synthetic_dir} a synthesize output folder?)")

    def mean_colour(path: str | Path) -> np.ndarray:
        return lab_statistics(read_image(path).transpose(2, 0, 1))[0]

    draws: dict[str, list[np.ndarray]] = defaultdict(list)
    for item in json.loads(datalist.read_text())["training"]:
        draws[item["label"]].append(mean_colour(folder / item["image"]))
    per_mask = [colour_spread(np.stack(colours)) for colours in draws.values() if len(colours) > 1]
    tiles = tile_datalist(data)
    real = np.stack([mean_colour(item["image"]) for item in tiles["training"]])
    synthetic = np.concatenate([np.stack(colours) for colours in draws.values()])

    def nearest(colour: np.ndarray, colours: np.ndarray) -> float:
        return round(float(np.linalg.norm(colours - colour, axis=1).min()), 2)

    validation = {}
    for item in tiles["validation"]:
        colour = mean_colour(item["image"])
        validation[Path(item["image"]).stem] = {
            "nearest_training_tile_delta_e": nearest(colour, real),
            "nearest_synthetic_image_delta_e": nearest(colour, synthetic),
        }
    result = {
        "synthetic_dir": str(folder),
        "masks": len(draws),
        "images": sum(len(colours) for colours in draws.values()),
        "draws_of_one_mask_delta_e": round(float(np.mean(per_mask)), 2) if per_mask else None,
        "synthetic_images_delta_e": round(colour_spread(synthetic), 2),
        "real_training_tiles_delta_e": round(colour_spread(real), 2),
        "real_training_tiles": len(real),
        "validation_tiles": validation,
    }
    print(json.dumps(result, indent=2))
    if output:
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
