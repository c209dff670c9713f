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
"""Which label-free GAN score predicts the segmenter? ``python -m scripts gan_selection``.

One (c) GAN run validates ``G`` and ``F`` after every epoch and keeps every checkpoint; each checkpoint's generator
renders the synthetic pairs of the ``c_real`` row and a segmenter trains on them (``compare --gan_checkpoint
<iteration>``, one output folder per checkpoint), scored on the validation tiles. The candidate scores are the GAN
monitor's (point F1 of ``F``, diversity, stain distance, their combination ``score`` that picks ``best.pt``) and,
with ``features``, the KID between crops of the synthetic images and of the real training tiles on the encoder
features of a segmenter trained on real tiles (e.g. the ``pseudo`` row's: points only). Reported per score: its
Spearman rank correlation with the segmenter's AJI (each score oriented so that higher means better) and the AJI of
the checkpoint it would pick. Only points and real training images enter the scores; the validation labels score
the segmenters, for this report only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from scripts.cli.compare import compare, integer_list
from scripts.cli.pipeline import CONFIGS, run_workflow
from scripts.cli.synthesis_report import read_rounds
from scripts.data.atomic import atomic_path
from scripts.engines.checkpoint import list_checkpoints, load_network_weights

__all__ = ["SCORES", "gan_selection", "kid_to_real", "spearman"]

#: candidate label-free scores -> True when higher is better
SCORES = {"score": True, "point_f1": True, "diversity": True, "stain_distance": False, "kid_real_features": False}


def gan_selection(
    data: str = "../shared/data/monuseg",
    output: str = "runs/gan_selection",
    profile: str = "cpu",
    seed: int = 0,
    features: str | None = None,
    crop_size: int = 256,
    gan_iterations: int | None = None,
    checkpoints: str | int | tuple | None = None,
) -> dict:
    """Train one (c) GAN keeping a checkpoint per epoch, a ``c_real`` segmenter per checkpoint, and rank the scores.

    Writes ``output/gan_c`` (the GAN), ``output/iteration_<k>/`` (``compare``'s folders for that checkpoint) and
    ``output/selection.md`` / ``.json``. Every stage resumes, so the command can be stopped and run again.

    Args:
        data: labelled data folder with ``split.json`` (the validation labels score the segmenters).
        output: results folder.
        profile: ``cpu`` or ``smoke`` (the GAN and segmenter profiles, as ``compare``).
        seed: seed of the GAN and of every segmenter.
        features: a segmenter ``model.pt`` of the profile's network trained on real tiles, whose encoder gives the
            KID features (``None``: no KID column).
        crop_size: side of the crops compared by the KID.
        gan_iterations: length of the GAN run (default: the profile's, ``cpu`` 1000; its learning rate decays over
            the last quarter).
        checkpoints: comma-separated iterations that get a segmenter (default: every validated checkpoint).
    """
    out = Path(output)
    gan_dir = out / "gan_c"
    gan_files = [CONFIGS / "train_synthesis.json", CONFIGS / f"train_synthesis_{profile}.json"]
    gan_files.append(CONFIGS / "ablation_c_full.json")
    if features is not None and not Path(features).is_file():
        raise SystemExit(f"error: features: {features}: not found (a segmenter model.pt of the {profile} profile)")
    asked = None if checkpoints is None else integer_list(checkpoints, "checkpoints", "500,1000")
    if gan_iterations is not None and (not isinstance(gan_iterations, int) or gan_iterations < 1):
        raise SystemExit(f"error: gan_iterations must be an integer >= 1, got {gan_iterations!r}")
    length = {} if gan_iterations is None else {"iterations": gan_iterations}
    run_workflow(
        "GAN, every epoch validated and kept",
        "training",
        gan_files,
        output_dir=str(gan_dir),
        data_dir=str(data),
        seed=seed,
        val_interval=1,
        keep_checkpoints=1000,
        **length,
    )
    rounds = {r["iteration"]: r for r in read_rounds(gan_dir)}
    chosen = _chosen(asked, sorted(rounds))
    encoder = _encoder(features, profile) if features is not None else None
    real = _real_crops(data, seed, crop_size) if encoder is not None else None
    results = []
    for checkpoint in list_checkpoints(gan_dir / "checkpoints"):
        iteration = int(checkpoint.stem.split("_")[1])
        if iteration not in chosen:
            continue  # not asked for, or not validated (a resumed run's extra checkpoint)
        folder = out / f"iteration_{iteration}"
        compare(data, str(folder), profile, "c_real", str(seed), gan_c=str(gan_dir), gan_checkpoint=iteration)
        seed_dir = folder / f"seed{seed}"
        metrics = json.loads((seed_dir / "c_real" / "evaluation" / "metrics.json").read_text())["mean"]
        row = {"iteration": iteration, "aji": metrics["aji"], "pq": metrics["pq"]}
        row.update({k: rounds[iteration][k] for k in SCORES if k in rounds[iteration]})
        if encoder is not None:
            synthetic = json.loads((seed_dir / "synthetic_c_real" / "datalist.json").read_text())["training"]
            images = [seed_dir / "synthetic_c_real" / item["image"] for item in synthetic]
            row["kid_real_features"] = kid_to_real(encoder, images, real, crop_size, seed)
        results.append(row)
    if len(results) < 2:
        raise SystemExit(f"error: {gan_dir}: fewer than two validated checkpoints chosen; nothing to rank")
    report = _report(results)
    _write(out / "selection", report)
    return report


def _chosen(asked: list[int] | None, validated: list[int]) -> list[int]:
    """The iterations asked for (all ``validated`` ones by default); each must be validated."""
    if asked is None:
        return validated
    missing = [v for v in asked if v not in validated]
    if missing:
        raise SystemExit(f"error: checkpoints {missing} were not validated by the GAN run; it has {validated}")
    return asked


def spearman(values: list[float], targets: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); ``nan`` when either side is constant."""
    from scipy.stats import spearmanr

    if len(set(values)) < 2 or len(set(targets)) < 2:
        return float("nan")
    return float(spearmanr(values, targets).statistic)


def kid_to_real(
    encoder: torch.nn.Module, images: list[Path], real: torch.Tensor, crop_size: int = 256, seed: int = 0
) -> float:
    """KID between one random ``crop_size`` crop of each image in ``images`` and the ``real`` crops
    (``(N, 3, S, S)`` in [-1, 1]), on the pooled features of ``encoder``."""
    from scripts.evaluation.synthesis_quality import kernel_inception_distance, pooled_features

    rng = np.random.default_rng(seed)
    fake = torch.stack([_crop(path, crop_size, rng) for path in images])
    kid, _ = kernel_inception_distance(
        pooled_features(encoder, fake, input_range="[0,1]"), pooled_features(encoder, real, input_range="[0,1]")
    )
    return kid


def _crop(path: Path, size: int, rng: np.random.Generator) -> torch.Tensor:
    from scripts.data.images import read_image

    image = read_image(path)
    if min(image.shape[:2]) < size:
        raise SystemExit(f"error: {path}: smaller than the {size} px KID crop")
    y, x = (int(rng.integers(0, s - size + 1)) for s in image.shape[:2])
    crop = torch.from_numpy(np.ascontiguousarray(image[y : y + size, x : x + size])).permute(2, 0, 1).float()
    return crop / 127.5 - 1.0


def _real_crops(data: str, seed: int, size: int, per_tile: int = 4) -> torch.Tensor:
    """``per_tile`` random crops of every real training tile, in [-1, 1]."""
    from scripts.engines.segmentation import real_training_items

    rng = np.random.default_rng(seed + 1)
    items = real_training_items(data, seed)
    return torch.stack([_crop(Path(item["image"]), size, rng) for item in items for _ in range(per_tile)])


def _encoder(model: str, profile: str) -> torch.nn.Module:
    """The encoder levels of the profile's segmenter with the weights of ``model``."""
    from monai.bundle import ConfigParser

    from scripts.evaluation.synthesis_quality import HookedFeatures

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / f"train_{profile}.json")])
    network = load_network_weights(parser.get_parsed_content("network_def"), model).eval()
    names = dict(network.named_modules())
    if "unet.down_4" in names:  # networks.HoVerUNet: the three deepest encoder levels
        return HookedFeatures(network, ["unet.down_2", "unet.down_3", "unet.down_4"])
    if "stages" in names:  # networks.ImageToMaskNet: every encoder stage
        return HookedFeatures(network, [f"stages.{i}" for i in range(len(names["stages"]))])
    raise SystemExit(f"error: features: {type(network).__name__} has no encoder levels known to gan_selection")


def _report(results: list[dict]) -> dict:
    ajis = [r["aji"] for r in results]
    best = max(results, key=lambda r: r["aji"])
    predictors = {}
    for name, higher_better in SCORES.items():
        if not all(name in r for r in results):
            continue
        oriented = [r[name] if higher_better else -r[name] for r in results]
        pick = results[int(np.argmax(oriented))]
        predictors[name] = {
            "spearman_with_aji": spearman(oriented, ajis),
            "picks_iteration": pick["iteration"],
            "picked_aji": pick["aji"],
            "aji_lost": best["aji"] - pick["aji"],
        }
    return {"checkpoints": results, "best_iteration": best["iteration"], "predictors": predictors}


def _write(stem: Path, report: dict) -> None:
    columns = [k for k in SCORES if all(k in r for r in report["checkpoints"])]
    lines = ["| iteration | segmenter AJI | PQ | " + " | ".join(columns) + " |", "|---" * (3 + len(columns)) + "|"]
    for r in report["checkpoints"]:
        values = " | ".join(f"{r[k]:.4g}" for k in columns)
        lines.append(f"| {r['iteration']} | {r['aji']:.4f} | {r['pq']:.4f} | {values} |")
    lines += ["", "| score | Spearman with AJI | picks iteration | its AJI | AJI lost |", "|---|---|---|---|---|"]
    for name, p in report["predictors"].items():
        lines.append(
            f"| {name} | {p['spearman_with_aji']:.2f} | {p['picks_iteration']} | {p['picked_aji']:.4f} | "
            f"{p['aji_lost']:.4f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(stem.with_suffix(".md")) as tmp:
        tmp.write_text(table)
    with atomic_path(stem.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
