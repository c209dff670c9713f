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
"""The main job: points -> masks -> GAN -> synthetic pairs -> segmenter -> refine -> evaluation, in one command.

``python -m scripts pipeline`` runs the bundle workflows (``train_synthesis.json``, ``synthesize.json``,
``train.json``, ``refine.json``, ``evaluate.json``) in this process with one profile, then draws a one-page summary.
Every stage resumes: run the same command again after an interruption and finished work is kept.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from monai.bundle import ConfigWorkflow
from PIL import Image

from scripts import CODE_ROOT, SAMPLE_DATA, runtime
from scripts.data.atomic import atomic_path
from scripts.data.datalist import PrepareError
from scripts.data.tiles import tile_datalist
from scripts.engines.synthesize import COLOUR_MATCH
from scripts.evaluation.evaluate import format_comparison
from scripts.evaluation.visualize import grid, instances_rgb, points_on
from scripts.runtime.settings import check

__all__ = ["PROFILES", "Profile", "pipeline", "run_workflow"]

REPO = CODE_ROOT
CONFIGS = REPO / "bundle" / "configs"
SAMPLE = SAMPLE_DATA


class Profile(NamedTuple):
    """The settings of one ``--profile`` of the main job."""

    gan: tuple[str, ...]  #: override files of ``train_synthesis.json``
    segmenter: tuple[str, ...]  #: override files of ``train.json``
    synthesize: dict  #: ``synthesize.json`` overrides
    refine: dict  #: ``refine.json`` overrides of the first refine round (its student trains from scratch)
    refine_later: dict  #: overrides of every later round: the student fine-tunes its teacher, on a shorter schedule


#: refine rounds of the main job: the second (fine-tuned) round adds ~0.01 AJI on MoNuSeg for ~8 minutes
DEFAULT_REFINE_ROUNDS = 2

#: the later rounds of ``cpu`` are the recipe of the compare rows ``c_matched_refined3``-``6`` (teacher init, 700 it.);
#: ``tiny`` is the ``cpu`` segmenter recipe with a shorter schedule on smaller crops
_FINE_TUNE = {"refine_student_init": "teacher"}
PROFILES = {
    "tiny": Profile(
        ("train_synthesis_tiny.json",),
        ("train_cpu.json", "train_tiny.json"),
        {"masks_per_tile": 2, "draws_per_mask": 2},
        {"iterations": 100},
        {**_FINE_TUNE, "iterations": 50},
    ),
    "cpu": Profile(
        ("train_synthesis_cpu.json",),
        ("train_cpu.json",),
        {"masks_per_tile": 2, "draws_per_mask": 2},
        {},
        {**_FINE_TUNE, "iterations": 700},
    ),
    "smoke": Profile(
        ("train_synthesis_smoke.json",),
        ("train_smoke.json",),
        {"masks_per_tile": 1, "draws_per_mask": 1},
        {},
        _FINE_TUNE,
    ),
}


def pipeline(
    data: str = str(SAMPLE),
    output: str = "results/pipeline",
    profile: str = "tiny",
    points: str = "real",
    seed: int = 0,
    refine: bool = True,
    refine_rounds: int | None = None,
    colour_match: str = "reinhard",
) -> None:
    """Run the whole method on a data folder and write ``output/summary.png`` and ``output/metrics.md``.

    Args:
        data: folder with ``images/`` and ``points/`` (``labels/`` to score the result, ``split.json`` to fix the
            validation tiles); the embedded MoNuSeg sample by default.
        output: results folder (``gan/``, ``synthetic/``, ``segmentation/``, ``refine/``, ``evaluation/``, the
            summary).
        profile: ``tiny`` (minutes, the embedded sample), ``cpu`` (the CPU profiles, e.g. on MoNuSeg) or
            ``smoke`` (seconds, for tests).
        points: ``real`` (synthesize from the training tiles' points) or ``random`` (from the fitted prior).
        seed: seed of every stage.
        refine: run the refine stage (``refine.json``): the segmenter trained on synthetic pairs labels the real
            training tiles under the points' constraints and a student trains on them; the student is the result
            (``refine/model.pt``). ``--refine False`` stops at the segmenter.
        refine_rounds: refine rounds (default 2); each round's student teaches the next one (``refine_round<k>/``
            for the rounds before the last, the last in ``refine/``); every round's model is evaluated. The first
            student trains from scratch, every later one fine-tunes its teacher on a shorter schedule (``cpu``: 700
            iterations, as the compare rows ``c_refined2_ft`` and ``c_matched_refined3``). ``cpu`` on MoNuSeg: 2
            rounds take ~69 minutes in all, 3 ~77 (the shipped model's chain has 5).
        colour_match: ``reinhard`` (since 0.10.0): each synthetic image takes the LAB colour statistics of a random
            real training tile (``synthesize.json``'s ``colour_match``; the compare rows ``c_real_matched`` and
            ``c_matched_refined*``); ``none``: the generator's colours (the rows ``c_real``, ``c_refined*``).
    """
    if profile not in PROFILES:
        raise SystemExit(f"error: profile must be one of {tuple(PROFILES)}, got {profile!r}")
    if points not in ("real", "random"):
        raise SystemExit(f"error: points must be 'real' or 'random', got {points!r}")
    if not refine and refine_rounds is not None:
        raise SystemExit(f"error: refine_rounds {refine_rounds} needs the refine stage (--refine True)")
    refine_rounds = DEFAULT_REFINE_ROUNDS if refine_rounds is None else refine_rounds
    if isinstance(refine_rounds, bool) or not isinstance(refine_rounds, int) or refine_rounds < 1:
        raise SystemExit(f"error: refine_rounds must be an integer >= 1, got {refine_rounds!r}")
    if colour_match not in COLOUR_MATCH:
        raise SystemExit(f"error: colour_match must be one of {COLOUR_MATCH}, got {colour_match!r}")
    check(seed=seed)
    data_dir, out = Path(data), Path(output)
    gan_profile, seg_profile, synth, refine_first, refine_later = PROFILES[profile]
    gan_files = [CONFIGS / "train_synthesis.json", *(CONFIGS / f for f in gan_profile)]
    seg_files = [CONFIGS / "train.json", *(CONFIGS / f for f in seg_profile)]
    problems = check_data_folder(data_dir, gan_files, seg_files, seed)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise SystemExit(f"error: {len(problems)} problem(s) in {data_dir}, nothing was run:\n{lines}")
    runtime.configure(fast_allocator=profile != "smoke")
    common = {"data_dir": str(data_dir), "seed": seed}
    gan_dir, synthetic_dir = out / "gan", out / "synthetic"
    seg_dir, model_path = out / "segmentation", out / "segmentation" / "model.pt"
    timings: dict[str, float] = {}
    total = 4 + refine_rounds if refine else 4

    def stage(name: str, run_id: str, files: list[Path], **overrides) -> None:
        name = f"{len(timings) + 1}/{total} {name}"
        timings[name] = run_workflow(name, run_id, files, **common, **overrides)

    stage("mask -> image GAN", "training", gan_files, output_dir=str(gan_dir))
    stage(
        "synthesize",
        "synthesize",
        [*gan_files, CONFIGS / "synthesize.json"],
        output_dir=str(gan_dir),
        synthetic_dir=str(synthetic_dir),
        points_source=points,
        colour_match=colour_match,
        **synth,
    )
    seg = {"output_dir": str(seg_dir), "model_path": str(model_path), "training_data": "synthetic"}
    stage("segmenter", "training", seg_files, synthetic_datalist=str(synthetic_dir / "datalist.json"), **seg)
    evaluations = {"ours (synthetic pairs)": (seg, out / "evaluation_segmenter" if refine else out / "evaluation")}
    teacher = model_path
    for round_ in range(1, refine_rounds + 1) if refine else ():
        last = round_ == refine_rounds
        folder = out / ("refine" if last else f"refine_round{round_}")
        refined = {"output_dir": str(folder), "model_path": str(folder / "model.pt")}
        stage(
            "refine" if refine_rounds == 1 else f"refine (round {round_})",
            "refine",
            [*seg_files, CONFIGS / "refine.json"],
            teacher_path=str(teacher),
            **refined,
            **(refine_first if round_ == 1 else refine_later),
        )
        row = "ours (synthetic pairs, refined)" + ("" if refine_rounds == 1 else f" round {round_}")
        eval_dir = out / "evaluation" if last else out / f"evaluation_refine_round{round_}"
        evaluations[row] = ({**refined, "training_data": "refined"}, eval_dir)
        teacher = folder / "model.pt"
    labelled = (data_dir / "labels").is_dir()
    if labelled:
        for row, (settings, eval_dir) in evaluations.items():
            name = f"evaluate {row}" if refine else "evaluate"
            timings[f"{total}/{total} {name}"] = run_workflow(
                name, "evaluating", [*seg_files, CONFIGS / "evaluate.json"], eval_dir=str(eval_dir), **common,
                **settings,
            )  # fmt: skip
    _summary(data_dir, out, labelled, timings, profile, points, {k: v[1] for k, v in evaluations.items()})
    print(f"[pipeline] done in {sum(timings.values()):.0f} s: {out / 'summary.png'}, {out / 'metrics.md'}")


def check_data_folder(data_dir: Path, gan_files: list[Path], seg_files: list[Path], seed: int = 0) -> list[str]:
    """Every problem of a data folder that a stage of the pipeline would meet, found before the first stage: image,
    point and label files (read by the same readers as training), points outside their tile, tiles smaller than
    the GAN's or the segmenter's training crop. Returns them as ``file: reason`` lines (empty: all good)."""
    from monai.bundle import ConfigParser

    from scripts.engines.segmentation import segmentation_datalist

    crop = max(int(ConfigParser.load_config_files(files).get("crop_size", 0)) for files in (gan_files, seg_files))
    problems: list[str] = []
    try:
        tile_datalist(data_dir, crop_size=crop, seed=seed)
    except PrepareError as e:
        problems += e.problems
    if (data_dir / "labels").is_dir():  # labels are read for scoring, and by `dense` rows
        try:
            segmentation_datalist("dense", data_dir, seed=seed)
        except PrepareError as e:
            problems += e.problems
    return list(dict.fromkeys(problems))


def run_workflow(name: str, run_id: str, files: list[Path], **overrides) -> float:
    """Run one bundle workflow (``run_id`` of the merged ``files`` with ``overrides``) in this process; returns
    its duration in seconds."""
    start = time.perf_counter()
    logging.getLogger(__name__).info(f"--- {name} ---")
    print(f"[pipeline] {name}", file=sys.stderr, flush=True)
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files],
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=None,
        run_id=run_id,
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return round(time.perf_counter() - start, 1)


def _summary(
    data_dir: Path, out: Path, labelled: bool, timings: dict, profile: str, points: str, evaluations: dict[str, Path]
) -> None:
    """``summary.png`` (points, sampled masks, synthetic images, the final model's predictions) and ``metrics.md`` /
    ``.json`` (``validation_mean``: the final model's; ``validation``: every evaluated model's)."""
    synthetic = json.loads((out / "synthetic" / "datalist.json").read_text())["training"]
    rows, size = [], 256
    for item in synthetic[:: max(1, len(synthetic) // 3)][:3]:
        image = np.asarray(Image.open(out / "synthetic" / item["image"]).convert("RGB"))
        label = np.asarray(Image.open(out / "synthetic" / item["label"])).astype(np.int32)
        source = _source_image(data_dir, item["name"])
        pts = np.loadtxt(out / "synthetic" / item["points"], delimiter=",", skiprows=1, ndmin=2)
        background = source if source is not None else np.full_like(image, 255)  # random point sets have no tile
        row = [points_on(background, pts), instances_rgb(label), image]
        rows.append([_crop(x, size) for x in row])
    titles = ["real tile + points", "mask sampled from the points", "synthetic image G(mask)"]
    metrics = {}
    if labelled:
        evaluation = json.loads((out / "evaluation" / "metrics.json").read_text())
        metrics = evaluation["mean"]
        names = list(evaluation["per_image"])[:3]
        overlays = [np.asarray(Image.open(out / "evaluation" / "overlays" / f"{n}.png").convert("RGB")) for n in names]
        for i, row in enumerate(rows):
            row.append(_crop(overlays[i % len(overlays)], size))
        titles.append("validation: prediction (green), truth (yellow)")
    picture = grid(rows, titles)
    with atomic_path(out / "summary.png") as tmp:
        picture.save(tmp, format="PNG")
    every = (
        {row: json.loads((d / "metrics.json").read_text())["mean"] for row, d in evaluations.items()}
        if labelled
        else {}
    )
    summary = {
        "profile": profile,
        "points": points,
        "seconds": timings,
        "validation_mean": metrics,
        "validation": every,
    }
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# Pipeline results ({profile} profile, {points} points)", "", "Stage times (s): "]
    lines[-1] += ", ".join(f"{k}: {v}" for k, v in timings.items())
    if labelled:
        lines += ["", format_comparison({row: str(d / "metrics.json") for row, d in evaluations.items()})]
    with atomic_path(out / "metrics.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _source_image(data_dir: Path, name: str) -> np.ndarray | None:
    stem = name.rsplit("_m", 1)[0]
    for path in (data_dir / "images").glob(f"{stem}.*"):
        return np.asarray(Image.open(path).convert("RGB"))
    return None


def _crop(image: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` crop (zero-padded if smaller)."""
    h, w = image.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    crop = image[top : top + size, left : left + size]
    padded = np.zeros((size, size, 3), dtype=np.uint8)
    padded[: crop.shape[0], : crop.shape[1]] = crop
    return padded
