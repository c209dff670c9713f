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
"""The paper's comparison (Tables 1-3) at one training budget: the same segmenter trained on dense labels (the upper
bound), on pseudo masks from the points, on CycleGAN pairs (a), on our pairs from real points (c) and on our pairs
from fully random point sets, each scored on the labelled validation tiles.

``python -m scripts compare --data ../shared/data/monuseg --output runs/compare`` runs whatever is missing (GANs,
synthetic datasets, segmenters, evaluations: each stage resumes) and writes ``comparison.md`` / ``.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scripts.cli.pipeline import CONFIGS, PROFILES, run_workflow
from scripts.data.atomic import atomic_path
from scripts.engines.checkpoint import latest_checkpoint, list_checkpoints
from scripts.evaluation.evaluate import COLUMN_LABELS, format_comparison

__all__ = [
    "FINE_TUNED_CHAINS",
    "REFINED",
    "ROWS",
    "SEGMENTER",
    "coherence",
    "compare",
    "integer_list",
    "refine_settings",
]

#: row id -> (row name, training data, GAN ablation file or None, point source)
ROWS = {
    "upper": ("upper bound: real images + dense labels", "dense", None, None),
    "pseudo": ("pseudo masks from the points", "pseudo", None, None),
    "pseudo_band2": ("pseudo masks, a 2 px band along their outlines ignored", "pseudo", None, None),
    "upper_nogap": (
        "upper bound, no gap between touching nuclei in the nucleus-pixel target (np_touching_gap: 0, before 0.14.0)",
        "dense",
        None,
        None,
    ),
    "pseudo_nogap": (
        "pseudo masks, no gap between touching masks in the nucleus-pixel target (np_touching_gap: 0, before 0.14.0)",
        "pseudo",
        None,
        None,
    ),
    "upper_gap": (
        "upper bound, a 2 px gap between touching nuclei in the nucleus-pixel target (np_touching_gap: 1)",
        "dense",
        None,
        None,
    ),
    "pseudo_gap": (
        "pseudo masks, a 2 px gap between touching masks in the nucleus-pixel target (np_touching_gap: 1)",
        "pseudo",
        None,
        None,
    ),
    "upper_wide": (
        "upper bound, MONAI's BasicUNet widths 32-32-64-128-256-32 (the cpu profile before 0.7.0)",
        "dense",
        None,
        None,
    ),
    "pseudo_wide": (
        "pseudo masks, MONAI's BasicUNet widths 32-32-64-128-256-32 (the cpu profile before 0.7.0)",
        "pseudo",
        None,
        None,
    ),
    "pseudo_long": (
        "pseudo masks, 1800 iterations (about the wide network's 1400 in wall time)",
        "pseudo",
        None,
        None,
    ),
    "pseudo_appearance": (
        "pseudo masks, with the appearance randomisation of the synthetic pairs",
        "pseudo",
        None,
        None,
    ),
    "a_real": ("(a) CycleGAN pairs, real points", "synthetic", "ablation_a_cyclegan.json", "real"),
    "c_real": ("(c) ours, real points", "synthetic", "ablation_c_full.json", "real"),
    "c_real_plain": (
        "(c) ours, real points, without appearance randomisation (the cpu profile before 0.8.0)",
        "synthetic",
        "ablation_c_full.json",
        "real",
    ),
    "c_random": ("(c) ours, random points", "synthetic", "ablation_c_full.json", "random"),
    "c_real_mixed": (
        "(c) ours, real points, G with a per-image appearance code + spatial noise",
        "synthetic",
        "ablation_c_mixed.json",
        "real",
    ),
    "c_real_matched": (
        "(c) ours, real points, colours of real training tiles (Reinhard)",
        "synthetic",
        "ablation_c_full.json",
        "real",
    ),
    "c_real_windowed": (
        "(c) ours, real points, rendered as trained (128 px windows)",
        "synthetic",
        "ablation_c_full.json",
        "real",
    ),
    "c_real_pseudo": (
        "(c) ours, real points, + pseudo masks on the real images",
        "synthetic+pseudo",
        "ablation_c_full.json",
        "real",
    ),
    "pseudo_refined": ("pseudo masks, then refined on the real tiles (teacher: pseudo)", "refined", None, None),
    "pseudo_refined2": ("pseudo masks, refined twice (teacher: pseudo_refined)", "refined", None, None),
    "pseudo_refined_h": (
        "pseudo masks, then refined with haematoxylin outlines (teacher: pseudo)",
        "refined",
        None,
        None,
    ),
    "c_refined": ("(c) ours, real points, then refined on the real tiles (teacher: c_real)", "refined", None, None),
    "c_refined_plain": (
        "(c) ours, refined on the real tiles, teacher without appearance randomisation (teacher: c_real_plain)",
        "refined",
        None,
        None,
    ),
    "c_matched_refined": (
        "(c) colour-matched pairs, then refined on the real tiles (teacher: c_real_matched)",
        "refined",
        None,
        None,
    ),
    "c_matched_refined2": (
        "(c) colour-matched pairs, refined twice on the real tiles (teacher: c_matched_refined)",
        "refined",
        None,
        None,
    ),
    "c_refined2": (
        "(c) ours, refined twice on the real tiles (teacher: c_refined)",
        "refined",
        None,
        None,
    ),
    "c_refined2_ft": (
        "(c) ours, refined twice, the second student fine-tuned from its teacher, 700 iterations (teacher: c_refined)",
        "refined",
        None,
        None,
    ),
    "c_refined_bg": (
        "(c) ours, refined, point-less nuclei taught as background (teacher: c_real)",
        "refined",
        None,
        None,
    ),
    "c_refined2_bg": (
        "(c) ours, refined twice, point-less nuclei taught as background (teacher: c_refined_bg)",
        "refined",
        None,
        None,
    ),
    "pseudo_refined2_bg": (
        "pseudo masks, refined twice, point-less nuclei taught as background (teacher: pseudo_refined_h)",
        "refined",
        None,
        None,
    ),
    "pseudo_refined_bg": (
        "pseudo masks, refined with haematoxylin outlines, point-less nuclei taught as background (teacher: pseudo)",
        "refined",
        None,
        None,
    ),
}

#: fine-tuned refine chains: row prefix -> (its rounds, the teacher of its first round when that is round 1, row name);
#: each round's teacher is the round before, and each student fine-tunes its teacher (:func:`refine_settings`)
FINE_TUNED_CHAINS = {
    # the colour-matched chain's rounds 3-8 (rounds 1-2, ``c_matched_refined`` and ``2``, train from scratch)
    "c_matched_refined": (
        range(3, 9),
        None,
        "(c) colour-matched pairs, {k} refine rounds, fine-tuned from round 3 (teacher: c_matched_refined{previous})",
    ),
    # the same chain with every round fine-tuned, the first from the synthetic-pair segmenter itself
    "c_matched_ft": (
        range(1, 7),
        "c_real_matched",
        "(c) colour-matched pairs, {k} refine rounds, every student fine-tuned from its teacher",
    ),
    # the same chain on a shorter schedule per round (cpu: 400 iterations instead of 700, ~6 instead of ~9 minutes)
    "c_matched_short": (
        range(1, 9),
        "c_real_matched",
        "(c) colour-matched pairs, {k} refine rounds, every student fine-tuned from its teacher, 400 iterations (cpu)",
    ),
}
#: fine-tuned row -> per-profile ``refine.json`` overrides of the profile's later-round schedule
SCHEDULES = {f"c_matched_short{k}": {"cpu": {"iterations": 400}} for k in FINE_TUNED_CHAINS["c_matched_short"][0]}
for _prefix, (_rounds, _, _name) in FINE_TUNED_CHAINS.items():
    ROWS.update({f"{_prefix}{k}": (_name.format(k=k, previous=k - 1), "refined", None, None) for k in _rounds})
ROWS["c_matched_refined6_gap"] = (
    "(c) colour-matched pairs, 6 refine rounds, the last with a 2 px gap between touching nuclei in the nucleus-pixel "
    "target (teacher: c_matched_refined5)",
    "refined",
    None,
    None,
)

#: GAN ablation file -> the name of its run folder (``gan_<name>``) and synthetic pairs (``synthetic_<name>_<points>``)
GANS = {"ablation_a_cyclegan.json": "a", "ablation_c_full.json": "c", "ablation_c_mixed.json": "c_mixed"}

#: row -> ``synthesize.json`` settings of its synthetic pairs (the rows without one share their pairs)
SYNTHESIS = {"c_real_matched": {"colour_match": "reinhard"}, "c_real_windowed": {"render_window": 128}}

#: row -> segmenter settings (``train_cpu.json``) of its own
SEGMENTER = {
    "pseudo_band2": {"pseudo_outline_ignore": 2},
    "upper_wide": {"network_def#features": [32, 32, 64, 128, 256, 32]},
    "pseudo_wide": {"network_def#features": [32, 32, 64, 128, 256, 32]},
    "pseudo_long": {"iterations": 1800},
    **dict.fromkeys(("upper_gap", "pseudo_gap", "c_matched_refined6_gap"), {"np_touching_gap": 1}),
    **dict.fromkeys(("upper_nogap", "pseudo_nogap"), {"np_touching_gap": 0}),
    "c_real_plain": {"appearance_randomisation": False},
    "pseudo_appearance": {"appearance_randomisation": True},
}

_HAEMATOXYLIN = {"refine_outlines": "haematoxylin"}
_BACKGROUND = {**_HAEMATOXYLIN, "refine_pointless": "background"}
#: refined row -> (the row whose segmenter is its teacher, run first when it is not among the rows; its
#: ``refine.json`` settings: :func:`refine_settings`)
REFINED = {
    "pseudo_refined": ("pseudo", {"refine_outlines": "teacher"}),
    "pseudo_refined2": ("pseudo_refined", {"refine_outlines": "teacher"}),
    "pseudo_refined_h": ("pseudo", _HAEMATOXYLIN),
    "pseudo_refined_bg": ("pseudo", _BACKGROUND),
    "pseudo_refined2_bg": ("pseudo_refined_h", _BACKGROUND),
    "c_refined": ("c_real", _HAEMATOXYLIN),
    "c_refined2": ("c_refined", _HAEMATOXYLIN),
    "c_refined_bg": ("c_real", _BACKGROUND),
    "c_refined2_bg": ("c_refined_bg", _BACKGROUND),
    "c_matched_refined": ("c_real_matched", _HAEMATOXYLIN),
    "c_refined_plain": ("c_real_plain", _HAEMATOXYLIN),
    "c_matched_refined2": ("c_matched_refined", _HAEMATOXYLIN),
    "c_refined2_ft": ("c_refined", {**_HAEMATOXYLIN, "refine_student_init": "teacher"}),
}
for _prefix, (_rounds, _first, _) in FINE_TUNED_CHAINS.items():
    REFINED.update(
        {
            f"{_prefix}{k}": (
                _first if k == 1 else f"{_prefix}{k - 1}",
                {**_HAEMATOXYLIN, "refine_student_init": "teacher"},
            )
            for k in _rounds
        }
    )


REFINED["c_matched_refined6_gap"] = ("c_matched_refined5", REFINED["c_matched_refined6"][1])


def refine_settings(row: str, profile: str) -> dict:
    """The ``refine.json`` settings of the refined ``row`` under ``profile``: a student that starts from its teacher
    (``refine_student_init: teacher``) trains on the profile's later-round schedule, as in the main job
    (``pipeline.PROFILES[profile].refine_later``: ``cpu`` 700 iterations instead of 1400), or the row's own
    (:data:`SCHEDULES`: ``c_matched_short*``, 400 on ``cpu``)."""
    settings = REFINED[row][1]
    if settings.get("refine_student_init") == "teacher":
        settings = {**settings, **PROFILES[profile].refine_later, **SCHEDULES.get(row, {}).get(profile, {})}
    return settings


def with_teachers(rows: list[str]) -> list[str]:
    """``rows`` with each refined row's teacher (and its teacher's) inserted before it unless listed earlier."""
    ordered = list(rows)
    for row in reversed(REFINED):  # a teacher that is itself refined gets its own teacher first
        teacher = REFINED[row][0]
        if row in ordered and teacher not in ordered[: ordered.index(row)]:
            ordered.insert(ordered.index(row), teacher)
    return ordered


def compare(
    data: str = "../shared/data/monuseg",
    output: str = "runs/compare",
    profile: str = "cpu",
    rows: str | tuple = tuple(ROWS),
    seeds: str | int | tuple = "0",
    gan_a: str | None = None,
    gan_c: str | None = None,
    gan_checkpoint: str | int = "best",
    masks_per_tile: int = 2,
    draws_per_mask: int = 2,
    random_tiles: int = 92,
) -> None:
    """Train and evaluate the rows of the comparison with the ``profile`` settings, once per seed.

    Writes ``comparison.md`` and ``comparison.json`` into ``output``: per row, the mean over seeds of the per-seed
    means over the validation tiles, the spread across seeds (max - min) and each seed's value, and the minutes per
    seed of the segmenter (training + evaluation). Each seed's runs and its own table are in ``output/seed<k>/``.

    Args:
        data: labelled data folder with ``split.json`` (training tiles: images + points; validation: labels too).
        output: results folder: ``seed<k>/<row>/`` (segmentation run and ``evaluation/``), ``seed<k>/gan_a``,
            ``seed<k>/gan_c``, ``seed<k>/synthetic_<a|c>_<real|random>``, ``comparison.md``.
        profile: ``cpu`` or ``smoke``: the ``train_synthesis_<profile>.json`` and ``train_<profile>.json`` files.
        rows: comma-separated row ids among ``upper, pseudo, a_real, c_real, c_random, c_real_pseudo`` (the
            synthetic pairs of ``c_real`` and the pseudo-mask tiles of ``pseudo`` together, not the paper's),
            ``pseudo_refined`` and ``c_refined`` (the ``refine`` stage: the real training tiles labelled by the
            ``pseudo`` or ``c_real`` segmenter under the points' constraints, then a student trained on them; the
            teacher row runs first; ``pseudo_refined`` keeps the teacher's outlines, ``c_refined`` uses the default
            haematoxylin outlines), ``pseudo_refined_h`` (as ``pseudo_refined`` with the outlines moved onto the
            haematoxylin-dark pixels), ``pseudo_refined2`` (a second round, teacher: ``pseudo_refined``),
            ``c_real_mixed`` (its own GAN, ``ablation_c_mixed.json``: ``G`` with ``noise: mixed``, an appearance
            code drawn per image beside the per-pixel noise) and ``c_real_matched`` (``c_real``'s GAN, each
            synthetic image given the LAB colour statistics of a random real training tile: ``synthesize.json``'s
            ``colour_match: reinhard``); ``c_matched_refined`` refines with the ``c_real_matched`` teacher,
            ``c_matched_refined2`` to ``c_matched_refined8`` add rounds 2 to 8 (each taught by the round before;
            from round 3 on the student fine-tunes its teacher for 700 iterations, as ``c_refined2_ft``);
            ``c_matched_ft1`` to ``c_matched_ft6`` are the same chain with every student fine-tuned from its
            teacher for 700 iterations, the first from ``c_real_matched`` itself, and ``c_matched_short1`` to
            ``c_matched_short8`` the same with 400 iterations per round; ``c_refined2_ft`` is
            ``c_refined2`` with the student starting from its teacher's weights (``refine_student_init: teacher``)
            and trained for 700 iterations instead of 1400;
            ``c_refined_bg`` and ``pseudo_refined_bg`` are ``c_refined`` and ``pseudo_refined_h`` with
            ``refine_pointless: background`` (a teacher's nucleus holding no point is taught as background unless it
            touches a labelled nucleus: every MoNuSeg nucleus carries a point); ``pseudo_band2`` is ``pseudo`` with
            ``pseudo_outline_ignore: 2`` (the loss skips 2 px on each side of every pseudo-mask outline);
            ``upper_gap``, ``pseudo_gap`` and ``c_matched_refined6_gap`` set ``np_touching_gap: 1`` (the
            nucleus-pixel target loses the pixel on each side of every outline two nuclei share, so the foreground
            itself separates touching nuclei; the cpu profile's default since 0.14.0, so that these rows now equal
            ``upper``, ``pseudo`` and ``c_matched_refined6``); ``upper_nogap`` and ``pseudo_nogap`` set 0 (the
            profile before 0.14.0);
            ``upper_wide`` and ``pseudo_wide`` train the 0.6.0 network (``features`` 32-32-64-128-256-32),
            ``pseudo_long`` 1800 iterations; ``c_real_plain`` trains on ``c_real``'s pairs without the cpu
            profile's ``appearance_randomisation`` (random contrast curves, gamma, blur and noise on every synthetic
            training crop, on by default since 0.8.0) and ``c_refined_plain`` refines with that teacher;
            ``pseudo_appearance`` is ``pseudo`` with that randomisation on the real training crops;
            ``c_refined2``, ``c_refined2_bg`` and ``pseudo_refined2_bg`` are second rounds (teachers:
            ``c_refined``, ``c_refined_bg``, ``pseudo_refined_h``); ``c_real_windowed`` renders the pairs as ``G`` was
            trained (``synthesize.json``'s ``render_window: 128``, the ``cpu`` GAN's crop size).
        seeds: comma-separated seeds (e.g. ``0,1``): every stage of every row runs once per seed. A difference between
            rows smaller than the seed spread is not a result.
        gan_a, gan_c: finished GAN run folders to use as they are (for every seed); by default
            ``output/seed<k>/gan_a`` and ``gan_c``, trained there (or resumed) with the ``profile`` settings first.
        gan_checkpoint: which ``G`` renders the synthetic pairs: ``best`` (the run's ``best.pt``, picked by point F1
            and stain distance), ``last`` (its newest ``checkpoints/checkpoint_<iteration>.pt``) or an iteration
            (``checkpoints/checkpoint_<iteration>.pt``, e.g. of a run with ``keep_checkpoints`` raised). Rows already
            evaluated in ``output`` are reused as they are: compare the two in separate ``output`` folders.
        masks_per_tile, draws_per_mask: synthetic pairs per real point set (23 tiles x 2 x 2 = 92 pairs).
        random_tiles: fully random point sets (one mask, one image each).
    """
    selected = [r.strip() for r in rows.split(",")] if isinstance(rows, str) else list(rows)
    unknown = [r for r in selected if r not in ROWS]
    if unknown:
        raise SystemExit(f"error: unknown rows {unknown}; choose among {list(ROWS)}")
    selected = with_teachers(selected)
    seed_list = integer_list(seeds, "seeds", "0,1")
    _check_gan_checkpoint(gan_checkpoint)
    out = Path(output)
    per_seed: dict[int, dict[str, dict]] = {}
    for seed in seed_list:
        per_seed[seed] = _compare_seed(
            data, out / f"seed{seed}", profile, selected, seed, gan_a, gan_c, gan_checkpoint,
            (masks_per_tile, draws_per_mask), random_tiles,
        )  # fmt: skip
    _write_seed_table(out / "comparison", f"Comparison on the validation tiles of {data} ({profile} profile)", per_seed)


def integer_list(value: str | int | tuple, name: str, example: str) -> list[int]:
    """A command-line list of distinct integers (``"0,1"``, a tuple from ``fire`` or one integer); a bad one stops
    with one error line naming ``name``."""
    values = (
        value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    )
    try:
        parsed = [int(v) for v in values if str(v).strip() != ""]
    except ValueError:
        raise SystemExit(f"error: {name} must be comma-separated integers, e.g. {example}; got {value!r}") from None
    if not parsed or len(set(parsed)) != len(parsed):
        raise SystemExit(f"error: {name} must be distinct integers, e.g. {example}; got {value!r}")
    return parsed


def _compare_seed(
    data: str,
    out: Path,
    profile: str,
    selected: list[str],
    seed: int,
    gan_a: str | None,
    gan_c: str | None,
    gan_checkpoint: str | int,
    counts_per_tile: tuple[int, int],
    random_tiles: int,
) -> dict[str, dict]:
    """The rows of one seed in ``out``; returns ``{row name: {"metrics": metrics.json, "minutes": segmenter}}``."""
    given_dirs = {"ablation_a_cyclegan.json": gan_a, "ablation_c_full.json": gan_c}
    gan_dirs = {file: Path(given_dirs.get(file) or out / f"gan_{name}") for file, name in GANS.items()}
    given = {file: given_dirs.get(file) is not None for file in GANS}
    common = {"data_dir": str(data), "seed": seed}
    seg_files = [CONFIGS / "train.json", CONFIGS / f"train_{profile}.json"]
    results = {}
    for row in selected:
        name, training_data, ablation, points = ROWS[row]
        row_dir = out / row
        metrics, timing = row_dir / "evaluation" / "metrics.json", row_dir / "timing.json"
        seg = {"output_dir": str(row_dir), "model_path": str(row_dir / "model.pt"), "training_data": training_data}
        seg.update(SEGMENTER.get(row, {}))
        if training_data == "dense":
            seg["key_metric"] = "aji"  # the upper bound may select on labels; every other row selects on points
        if not metrics.is_file():
            if ablation is not None:
                gan_files = [
                    CONFIGS / "train_synthesis.json",
                    CONFIGS / f"train_synthesis_{profile}.json",
                    CONFIGS / ablation,
                ]
                gan_dir = gan_dirs[ablation]
                if not given[ablation]:
                    run_workflow(f"{row}: GAN", "training", gan_files, output_dir=str(gan_dir), **common)
                synthesis = SYNTHESIS.get(row, {})
                suffix = "".join(f"_{value}" for value in synthesis.values())
                synthetic_dir = out / f"synthetic_{GANS[ablation]}_{points}{suffix}"  # shared by rows
                generator = _generator_checkpoint(gan_dir, gan_checkpoint)
                counts = (1, 1) if points == "random" else counts_per_tile
                run_workflow(
                    f"{row}: synthesize",
                    "synthesize",
                    [*gan_files, CONFIGS / "synthesize.json"],
                    output_dir=str(gan_dir),
                    generator_checkpoint=str(generator),
                    synthetic_dir=str(synthetic_dir),
                    points_source=points,
                    random_tiles=random_tiles,
                    masks_per_tile=counts[0],
                    draws_per_mask=counts[1],
                    **synthesis,
                    **common,
                )
                seg["synthetic_datalist"] = str(synthetic_dir / "datalist.json")
            if row in REFINED:
                teacher, settings = REFINED[row][0], refine_settings(row, profile)
                seconds = run_workflow(
                    f"{row} (seed {seed}): refine",
                    "refine",
                    [*seg_files, CONFIGS / "refine.json"],
                    teacher_path=str(out / teacher / "model.pt"),
                    **settings,
                    **seg,
                    **common,
                )
            else:
                seconds = run_workflow(f"{row} (seed {seed}): segmenter", "training", seg_files, **seg, **common)
            seconds += run_workflow(
                f"{row} (seed {seed}): evaluate",
                "evaluating",
                [*seg_files, CONFIGS / "evaluate.json"],
                eval_dir=str(row_dir / "evaluation"),
                **seg,
                **common,
            )
            with atomic_path(timing) as tmp:  # a resumed row's minutes count only its last part
                tmp.write_text(json.dumps({"segmenter_minutes": round(seconds / 60, 2)}) + "\n")
        minutes = json.loads(timing.read_text())["segmenter_minutes"] if timing.is_file() else None
        results[name] = {"metrics": json.loads(metrics.read_text()), "minutes": minutes}
    _write_table(
        out / "comparison",
        f"Comparison on the validation tiles of {data} ({profile} profile, seed {seed})",
        {k: v["metrics"] for k, v in results.items()},
    )
    return results


def coherence(
    data: str = "../shared/data/monuseg",
    output: str = "runs/compare",
    profile: str = "cpu",
    gans: str = "a=runs/synthesis_cpu_a,b=runs/synthesis_cpu_b,c=runs/synthesis_cpu_c",
    model: str | None = None,
    gan_checkpoint: str | int = "best",
    seed: int = 0,
) -> None:
    """Mask-image coherence: does a segmenter trained on real data find the nuclei of ``S`` in ``G(S)``?

    For every GAN, one mask is sampled from each *validation* tile's points and rendered once; the upper-bound
    segmenter (``model``, default ``output/seed0/upper/model.pt`` from :func:`compare`) segments the images, scored
    against ``S`` (object Dice, pixel F1, AJI, ...). Writes ``coherence.md`` / ``.json`` into ``output``.

    Args:
        gans: comma-separated ``name=run folder`` pairs; the ablation file is picked from the name's first letter
            (``a``, ``b`` or ``c``: ``c_long=runs/my_gan`` is a (c) run).
        gan_checkpoint: ``best`` (each run's ``best.pt``), ``last`` (its newest checkpoint) or an iteration.
    """
    ablations = {"a": "ablation_a_cyclegan.json", "b": "ablation_b_noise.json", "c": "ablation_c_full.json"}
    out = Path(output)
    model_path = Path(model or out / "seed0" / "upper" / "model.pt")
    if not model_path.is_file():
        raise SystemExit(f"error: {model_path}: no upper-bound model; run `compare --rows upper` first")
    _check_gan_checkpoint(gan_checkpoint)
    common = {"data_dir": str(data), "seed": seed}
    seg_files = [CONFIGS / "train.json", CONFIGS / f"train_{profile}.json", CONFIGS / "evaluate.json"]
    results = {}
    for pair in gans.split(","):
        name, folder = (x.strip() for x in pair.split("=", 1))
        if name[:1] not in ablations or name[1:2] not in ("", "_"):
            raise SystemExit(f"error: GAN names must be a, b or c (optionally + '_<suffix>'), got {name!r}")
        ablation = ablations[name[0]]
        gan_files = [CONFIGS / "train_synthesis.json", CONFIGS / f"train_synthesis_{profile}.json", CONFIGS / ablation]
        target = out / f"coherence_{name}"
        run_workflow(
            f"coherence {name}: synthesize",
            "synthesize",
            [*gan_files, CONFIGS / "synthesize.json"],
            output_dir=folder,
            generator_checkpoint=str(_generator_checkpoint(Path(folder), gan_checkpoint)),
            synthetic_dir=str(target / "synthetic"),
            points_section="validation",
            masks_per_tile=1,
            draws_per_mask=1,
            **common,
        )
        run_workflow(
            f"coherence {name}: upper-bound segmenter on G(S)",
            "evaluating",
            seg_files,
            output_dir=str(target),
            model_path=str(model_path),
            eval_datalist=str(target / "synthetic" / "datalist.json"),
            eval_dir=str(target / "evaluation"),
            **common,
        )
        results[f"({name}) {ablation[:-5]}"] = json.loads((target / "evaluation" / "metrics.json").read_text())
    _write_table(
        out / "coherence", f"Mask-image coherence: upper-bound segmenter on G(S) vs S ({profile} profile)", results
    )


def _check_gan_checkpoint(which: str | int) -> None:
    if str(which) not in ("best", "last") and not str(which).isdigit():
        raise SystemExit(f"error: gan_checkpoint must be 'best', 'last' or an iteration (e.g. 500), got {which!r}")


def _generator_checkpoint(gan_dir: Path, which: str | int) -> Path:
    """``gan_dir/best.pt``, the run's newest ``checkpoints/checkpoint_<iteration>.pt`` (``last``) or the one of a
    given iteration."""
    if which == "best":
        if not (gan_dir / "best.pt").is_file():
            raise SystemExit(f"error: {gan_dir / 'best.pt'}: not found; is {gan_dir} a finished GAN run?")
        return gan_dir / "best.pt"
    if str(which).isdigit():
        path = gan_dir / "checkpoints" / f"checkpoint_{int(which):08d}.pt"
        if not path.is_file():
            kept = [p.name for p in list_checkpoints(gan_dir / "checkpoints")]
            raise SystemExit(f"error: {path}: not found (gan_checkpoint={which}); the run keeps {kept}")
        return path
    newest = latest_checkpoint(gan_dir / "checkpoints")
    if newest is None:
        raise SystemExit(f"error: {gan_dir / 'checkpoints'}: no checkpoint_<iteration>.pt (gan_checkpoint='last')")
    return newest


def _write_table(stem: Path, title: str, results: dict[str, dict]) -> None:
    """``<stem>.md`` (the Markdown table of the runs' evaluations) and ``<stem>.json`` (their means and stds)."""
    table = format_comparison(results)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(f"# {title}\n\n{table}\n")
    with atomic_path(stem.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({k: {"mean": v["mean"], "std": v["std"]} for k, v in results.items()}, indent=2))
    print(table)


def _write_seed_table(stem: Path, title: str, per_seed: dict[int, dict[str, dict]]) -> None:
    """``<stem>.md`` / ``.json``: per row, the mean over seeds of each metric's per-seed mean over tiles, the spread
    across seeds (max - min), each seed's AJI and the segmenter's minutes per seed."""
    seeds = list(per_seed)
    names = list(per_seed[seeds[0]])
    summary: dict[str, dict] = {}
    for name in names:
        means = [per_seed[s][name]["metrics"]["mean"] for s in seeds]
        metrics = {m: [float(x[m]) for x in means] for m in means[0] if all(m in x for x in means)}
        minutes = [per_seed[s][name]["minutes"] for s in seeds]
        summary[name] = {
            "seeds": seeds,
            "mean": {m: float(np.mean(v)) for m, v in metrics.items()},
            "spread": {m: float(np.max(v) - np.min(v)) for m, v in metrics.items()},
            "per_seed": metrics,
            "minutes_per_seed": minutes,
        }
    columns = [
        c for c in ("aji", "pq", "point_f1", "pixel_iou", "pixel_f1", "object_dice") if c in summary[names[0]]["mean"]
    ]
    header = ["training data", "AJI", "AJI spread", *(f"AJI seed {s}" for s in seeds)]
    header += [COLUMN_LABELS.get(c, c) for c in columns if c != "aji"] + ["minutes / seed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in summary.items():
        cells = [name, f"{row['mean']['aji']:.3f}", f"{row['spread']['aji']:.3f}"]
        cells += [f"{v:.3f}" for v in row["per_seed"]["aji"]]
        cells += [f"{row['mean'][c]:.3f}" for c in columns if c != "aji"]
        known = [m for m in row["minutes_per_seed"] if m is not None]
        cells.append(f"{np.mean(known):.1f}" if known else "–")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    note = (
        f"Seeds {', '.join(map(str, seeds))}: each cell is the mean over seeds of the mean over the validation tiles; "
        "AJI spread is max - min across seeds. A difference between rows smaller than the spread is not a result."
    )
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(f"# {title}\n\n{note}\n\n{table}")
    with atomic_path(stem.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
