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
"""Speed benchmarks: ``python -m scripts bench transforms``.

Every speed is reported as a ratio against a reference implementation run in the same process on the same
input (MONAI's own transform where one exists, else a straightforward loop written here), so the numbers
carry over between machines better than raw times.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SYNTHESIS_CONFIGS = ("bundle/configs/train_synthesis.json", "bundle/configs/train_synthesis_cpu.json")
DEFAULT_TILE = "TCGA-18-5592-01Z-00-DX1"  # 1000x1000 MoNuSeg training tile, 480 nuclei
MONUSEG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "monuseg"


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def naive_ellipse_mask(
    points: np.ndarray,
    size: tuple[int, int],
    seed: int = 0,
    area_range: tuple[float, float] = (256.0, 1440.0),
    reach: float = 0.75,
    max_overlap: float = 0.05,
    max_retries: int = 20,
    retry_shrink: float = 0.85,
) -> np.ndarray:
    """The straightforward algorithm, as a speed reference: the same paper prior, one nucleus at a time with
    ``skimage.draw.ellipse`` and overlap checks on full-image arrays."""
    from scipy.spatial import cKDTree
    from skimage.draw import ellipse

    rng = np.random.default_rng(seed)
    height, width = size
    label = np.zeros(size, dtype=np.int32)
    pixel = np.floor(points + 0.5).astype(int)
    distance = cKDTree(points).query(points, k=2)[0][:, 1] if len(points) > 1 else np.full(len(points), np.inf)
    for i, (cy, cx) in enumerate(points):
        high = min(area_range[1], math.pi * (reach * distance[i]) ** 2)
        low = min(area_range[0], high)
        shrink = 1.0
        for _ in range(max_retries + 1):
            area = rng.uniform(low, high) * shrink
            ratio = max(math.sqrt(1 - rng.uniform(0.5, 0.99) ** 2), 0.5)
            major = min(math.sqrt(area / (math.pi * ratio)), max(min(0.9 * distance[i], distance[i] - 0.75), 0.5))
            rr, cc = ellipse(cy, cx, major * ratio, major, shape=size, rotation=rng.uniform(0, math.pi))
            mask = np.zeros(size, dtype=bool)
            mask[rr, cc] = True
            mask[pixel[i, 0], pixel[i, 1]] = True
            covered = np.bincount(label[mask], minlength=i + 1)[1:]
            areas = np.bincount(label.ravel(), minlength=i + 1)[1:]
            if not (covered > max_overlap * np.maximum(areas, 1)).any() and not mask[pixel[:i, 0], pixel[:i, 1]].any():
                label[mask] = i + 1
                break
            shrink *= retry_shrink
    return label


def _default_points_and_label(tile: str) -> tuple[np.ndarray, np.ndarray, str]:
    """A real 1000x1000 MoNuSeg point file and label if ``../shared`` is there, else an assembled stand-in."""
    from PIL import Image

    from transforms import PointsToEllipseMask, read_points

    if (MONUSEG / "points" / f"{tile}.csv").is_file():
        points = read_points(MONUSEG / "points" / f"{tile}.csv")
        label = np.asarray(Image.open(MONUSEG / "labels" / f"{tile}.png")).astype(np.int32)
        return points, label, f"MoNuSeg {tile} (1000x1000, {len(points)} points)"
    sample = Path(__file__).resolve().parents[1] / "bundle" / "sample_data" / "points"
    crops = [read_points(p) for p in sorted(sample.glob("*.csv"))]
    points = np.concatenate([crops[(i + j) % len(crops)] + [256 * i, 256 * j] for i in range(4) for j in range(4)])
    points = points[(points < 999.5).all(axis=1)]
    sampler = PointsToEllipseMask(spatial_size=(1000, 1000))
    sampler.set_random_state(0)
    return points, sampler(points)[0].numpy(), f"16 embedded sample crops tiled to 1000x1000 ({len(points)} points)"


class Bench:
    """Benchmarks of the project (``python -m scripts bench <name>``)."""

    def transforms(self, tile: str = DEFAULT_TILE, output: str | None = None, threads: int = 2) -> None:
        """PointsToEllipseMask vs a per-nucleus skimage loop, HVMap vs MONAI ComputeHoVerMaps, all metrics."""
        from monai.transforms import ComputeHoVerMaps

        from scripts.metrics import instance_metrics
        from transforms import HVMap, PointsToEllipseMask

        torch.set_num_threads(threads)
        points, label, source = _default_points_and_label(tile)
        size = label.shape
        sampler = PointsToEllipseMask(spatial_size=size)
        sampler.set_random_state(0)
        ellipse_ours = median_time(lambda: sampler.sample(points), repeats=21)
        ellipse_naive = median_time(lambda: naive_ellipse_mask(points, size), repeats=3, warmup=0)
        hv_ours = median_time(lambda: HVMap()(label[None]), repeats=11)
        hv_monai = median_time(lambda: ComputeHoVerMaps()(label[None]), repeats=5)
        prediction = _perturbed(label)
        metrics_time = median_time(lambda: instance_metrics(prediction, label, points=points), repeats=5)
        result = {
            "input": source,
            "machine": _machine(),
            "PointsToEllipseMask_ms": round(ellipse_ours * 1e3, 2),
            "naive_skimage_loop_ms": round(ellipse_naive * 1e3, 1),
            "PointsToEllipseMask_speedup": round(ellipse_naive / ellipse_ours, 1),
            "HVMap_ms": round(hv_ours * 1e3, 2),
            "ComputeHoVerMaps_ms": round(hv_monai * 1e3, 1),
            "HVMap_speedup": round(hv_monai / hv_ours, 1),
            "all_metrics_ms": round(metrics_time * 1e3, 1),
            "n_nuclei": int(len(np.unique(label)) - 1),
        }
        print(json.dumps(result, indent=2))
        if output:
            Path(output).write_text(json.dumps(result, indent=2) + "\n")

    def synthesis(
        self, steps: int = 8, data: str | None = None, output: str | None = None, child: bool = False
    ) -> dict:
        """Training throughput of the synthesis GAN (``cpu`` profile) against a plain eager baseline, same process.

        Modes, each timed over ``steps`` iterations (data loading included) on the same trainer:
        ``eager_baseline`` (tiles decoded from PNG at every draw, fp32), ``profile`` (the ``cpu`` profile: decoded
        tiles cached by ``CacheDataset``), ``bf16_channels_last`` (the profile plus bfloat16 autocast and
        channels-last). The allocator setting only acts at process start, so the command also runs itself in a
        child process started with it and reports that run too (``with_fast_allocator``).
        """
        import os
        import subprocess
        import sys

        from monai.bundle import ConfigParser

        from scripts.runtime import FAST_ALLOCATOR, NO_REEXEC

        torch.set_num_threads(2)
        parser = ConfigParser()
        parser.read_config([str(REPO / c) for c in SYNTHESIS_CONFIGS])
        parser["train#handlers"] = []
        if data is not None:
            parser["data_dir"] = data
        trainer = parser.get_parsed_content("train#trainer")
        cached = parser.get_parsed_content("train#dataloader")
        parser["train#dataset"] = {
            "_target_": "Dataset",
            "data": parser["train#dataset#data"],
            "transform": "@train#preprocessing",
        }
        plain = parser.get_parsed_content("train#dataloader", instantiate=True, lazy=False)
        modes = {
            "eager_baseline": (plain, False, False),
            "profile": (cached, False, False),
            "bf16_channels_last": (cached, True, True),
        }

        def step_time(loader, amp: bool, channels_last: bool) -> float:
            trainer.amp = amp
            trainer.memory_format = torch.channels_last if channels_last else torch.contiguous_format
            for network in (
                trainer.generator,
                trainer.mask_net,
                trainer.image_discriminator,
                trainer.mask_discriminator,
            ):
                network.to(memory_format=trainer.memory_format)
            batches = iter(loader)
            return median_time(lambda: trainer._iteration(trainer, next(batches)), repeats=steps, warmup=1)

        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(2):  # interleaved rounds, so that drift of the machine hits every mode alike
            for name, (loader, amp, channels_last) in modes.items():
                times[name].append(step_time(loader, amp, channels_last))
        seconds = {name: min(values) for name, values in times.items()}
        result = {
            "machine": _machine(),
            "fast_allocator": FAST_ALLOCATOR in os.environ.get("GLIBC_TUNABLES", ""),
            "crop_batch": f"{parser['crop_size']} px, batch {parser['batch_size']}",
            "seconds_per_iteration": {k: round(v, 3) for k, v in seconds.items()},
            "iterations_per_second": {k: round(1 / v, 3) for k, v in seconds.items()},
            "speedup_vs_eager_baseline": {k: round(seconds["eager_baseline"] / v, 2) for k, v in seconds.items()},
        }
        if not child and not result["fast_allocator"]:
            env = {**os.environ, "GLIBC_TUNABLES": FAST_ALLOCATOR, NO_REEXEC: "1"}
            command = [sys.executable, "-m", "scripts", "bench", "synthesis", "--steps", str(steps), "--child", "True"]
            command += ["--data", data] if data is not None else []
            run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
            child_result = json.loads(run.stdout[run.stdout.index("{") :])
            result["with_fast_allocator"] = child_result
            fast = child_result["seconds_per_iteration"]["profile"]
            result["profile_with_allocator_vs_eager_baseline_without"] = round(seconds["eager_baseline"] / fast, 2)
        print(json.dumps(result, indent=2))
        if output:
            Path(output).write_text(json.dumps(result, indent=2) + "\n")


def _machine() -> str:
    """CPU model, core count and torch threads, for the record."""
    import os

    model = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next(
            (line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line), model
        )
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _perturbed(label: np.ndarray, seed: int = 0) -> np.ndarray:
    """A plausible prediction: labels shifted by 2 px, 10 % of nuclei removed, relabelled."""
    rng = np.random.default_rng(seed)
    shifted = np.roll(label, (2, -2), axis=(0, 1))
    ids = np.unique(shifted)[1:]
    shifted[np.isin(shifted, rng.choice(ids, size=len(ids) // 10, replace=False))] = 0
    return shifted * 3 + 5 * (shifted > 0)
