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
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from scripts import CODE_ROOT, SAMPLE_DATA
from scripts.data.generated_slide import make_slide, slide_sources
from scripts.runtime.settings import as_bool

REPO = CODE_ROOT
SYNTHESIS_CONFIGS = ("bundle/configs/train_synthesis.json", "bundle/configs/train_synthesis_cpu.json")
TRAINING_CONFIGS = {
    "synthesis": SYNTHESIS_CONFIGS,
    "segmentation": ("bundle/configs/train.json", "bundle/configs/train_cpu.json"),
}
DEFAULT_TILE = "TCGA-18-5592-01Z-00-DX1"  # 1000x1000 MoNuSeg training tile, 480 nuclei
MONUSEG = REPO.parent / "shared" / "data" / "monuseg"


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
    sample = SAMPLE_DATA / "points"
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

        from scripts.evaluation.metrics import instance_metrics
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
    ) -> None:
        """Training throughput of the synthesis GAN (``cpu`` profile) against a plain eager baseline, same process.

        Modes, each timed over ``steps`` iterations (data loading included) in one process: ``eager_baseline``
        (tiles decoded from PNG at every draw, fp32), ``cached`` (decoded tiles cached by ``CacheDataset``, fp32),
        ``cached_bf16`` (plus bfloat16 autocast), ``cached_bf16_channels_last`` (and channels-last),
        ``cached_compiled`` (fp32 with ``compile: true``: the iteration's forward passes through ``torch.compile``,
        compiled in the warm-up). ``profile`` names the mode the ``cpu`` profile picks on this machine (bf16 +
        channels-last where its ``amp`` is on: :func:`scripts.runtime.fast_bf16`, CPUs with AMX) and
        ``profile_vs_eager_baseline`` its speed-up. The allocator setting only acts at process start, so the command
        also runs itself in a child process started with it and reports that run too (``with_fast_allocator``).
        """
        import os

        from scripts.runtime import FAST_ALLOCATOR

        torch.set_num_threads(2)
        parser = _parser(SYNTHESIS_CONFIGS, data)
        parser["train#handlers"] = []
        trainer = parser.get_parsed_content("train#trainer")
        cached = parser.get_parsed_content("train#dataloader")
        parser["train#dataset"] = {
            "_target_": "Dataset",
            "data": parser["train#dataset#data"],
            "transform": "@train#preprocessing",
        }
        plain = parser.get_parsed_content("train#dataloader", instantiate=True, lazy=False)
        parser["compile"] = True
        compiled = parser.get_parsed_content("train#trainer", instantiate=True, lazy=False)
        modes = {
            "eager_baseline": (trainer, plain, False, False),
            "cached": (trainer, cached, False, False),
            "cached_bf16": (trainer, cached, True, False),
            "cached_bf16_channels_last": (trainer, cached, True, True),
            "cached_compiled": (compiled, cached, False, False),
        }

        def step_time(trainer, loader, amp: bool, channels_last: bool) -> float:
            trainer.bf16 = amp
            trainer.memory_format = torch.channels_last if channels_last else torch.contiguous_format
            for network in (
                trainer.generator,
                trainer.mask_net,
                trainer.image_discriminator,
                trainer.mask_discriminator,
            ):
                network.to(memory_format=trainer.memory_format)
            batches = iter(loader)
            return median_time(lambda: trainer._iteration(trainer, next(batches)), repeats=steps, warmup=2)

        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(2):  # interleaved rounds, so that drift of the machine hits every mode alike
            for name, (engine, loader, amp, channels_last) in modes.items():
                times[name].append(step_time(engine, loader, amp, channels_last))
        seconds = {name: min(values) for name, values in times.items()}
        profile = "cached_bf16_channels_last" if parser.get_parsed_content("amp") else "cached"
        result = {
            "machine": _machine(),
            "fast_allocator": FAST_ALLOCATOR in os.environ.get("GLIBC_TUNABLES", ""),
            "crop_batch": f"{parser['crop_size']} px, batch {parser['batch_size']}",
            "seconds_per_iteration": {k: round(v, 3) for k, v in seconds.items()},
            "iterations_per_second": {k: round(1 / v, 3) for k, v in seconds.items()},
            "speedup_vs_eager_baseline": {k: round(seconds["eager_baseline"] / v, 2) for k, v in seconds.items()},
            "profile": profile,
            "profile_vs_eager_baseline": round(seconds["eager_baseline"] / seconds[profile], 2),
        }
        if not child and not result["fast_allocator"]:
            child_result = _allocator_child("synthesis", steps, data)
            result["with_fast_allocator"] = child_result
            fast = child_result["seconds_per_iteration"][profile]
            result["profile_with_allocator_vs_eager_baseline_without"] = round(seconds["eager_baseline"] / fast, 2)
        _report(result, output)

    def segmentation(
        self, steps: int = 8, data: str | None = None, output: str | None = None, child: bool = False
    ) -> None:
        """Training throughput of the segmenter (``cpu`` profile, pseudo masks from the real points) in fp32 against
        bfloat16 autocast (:class:`scripts.runtime.Bf16Autocast`), without and with channels-last, same process,
        interleaved.

        ``profile`` names the mode the ``cpu`` profile picks on this machine (bf16 where
        :func:`scripts.runtime.native_bf16` says so, channels-last with AMX). As for ``synthesis``, a child process
        started with the allocator setting repeats the measurement (``with_fast_allocator``).
        """
        import os

        from scripts.runtime import FAST_ALLOCATOR

        torch.set_num_threads(2)
        trainers = {}
        for name, amp, channels_last in (
            ("fp32", False, False),
            ("bf16", True, False),
            ("bf16_channels_last", True, True),
        ):
            parser = _parser(
                TRAINING_CONFIGS["segmentation"], data, training_data="pseudo", amp=amp, channels_last=channels_last
            )
            parser["train#handlers"] = []
            trainers[name] = (parser.get_parsed_content("train#trainer"), parser)

        def step_time(trainer) -> float:
            batches = iter(trainer.data_loader)
            return median_time(lambda: trainer._iteration(trainer, next(batches)), repeats=steps, warmup=2)

        times: dict[str, list[float]] = {name: [] for name in trainers}
        for _ in range(2):  # interleaved rounds, so that drift of the machine hits both modes alike
            for name, (trainer, _) in trainers.items():
                times[name].append(step_time(trainer))
        seconds = {name: min(values) for name, values in times.items()}
        parser = trainers["fp32"][1]
        default = _parser(TRAINING_CONFIGS["segmentation"], data)
        amp, channels_last = default.get_parsed_content("amp"), default.get_parsed_content("channels_last")
        profile = ("bf16_channels_last" if channels_last else "bf16") if amp else "fp32"
        result = {
            "machine": _machine(),
            "fast_allocator": FAST_ALLOCATOR in os.environ.get("GLIBC_TUNABLES", ""),
            "crop_batch": f"{parser['crop_size']} px, batch {parser['batch_size']}",
            "seconds_per_iteration": {k: round(v, 3) for k, v in seconds.items()},
            "speedup_vs_fp32": {k: round(seconds["fp32"] / v, 2) for k, v in seconds.items()},
            "profile": profile,
        }
        if not child and not result["fast_allocator"]:
            result["with_fast_allocator"] = _allocator_child("segmentation", steps, data)
        _report(result, output)

    def distributed(
        self,
        workflow: str = "synthesis",
        steps: int = 10,
        processes: str | Sequence[int] = (1, 2),
        data: str | None = None,
        output: str | None = None,
    ) -> None:
        """Training throughput of ``workflow`` (``synthesis`` or ``segmentation``, ``cpu`` profile) under ``torchrun``
        with 1, 2, ... processes (``multi_gpu_train.json``; gloo on CPUs, nccl on GPUs), same per-process batch.

        The segmenter trains on pseudo masks (``training_data`` ``pseudo``: the real tiles and their points), which
        costs the same per step as synthetic pairs. Each run trains 2 epochs of ``steps`` iterations (no validation
        round, no resume) and reports the second epoch's time (ignite's epoch timer: handlers such as checkpoints
        excluded), so start-up and warm-up are left out. ``samples_per_second`` counts every process's batch;
        ``scaling`` is relative to the first count.
        """
        import os
        import subprocess
        import sys
        import tempfile

        if workflow not in TRAINING_CONFIGS:
            raise SystemExit(f"error: workflow must be one of {list(TRAINING_CONFIGS)}, got {workflow!r}")
        counts = [int(n) for n in (processes.split(",") if isinstance(processes, str) else processes)]
        files = [str(REPO / c) for c in (*TRAINING_CONFIGS[workflow], "bundle/configs/multi_gpu_train.json")]
        runs = {}
        with tempfile.TemporaryDirectory(prefix="bench_distributed_") as work:
            timing = Path(work) / "timing.json"
            timing.write_text(
                json.dumps(
                    {
                        "finalize": [
                            "$scripts.runtime.distributed.is_main_process() and torch.save({'epoch_s': "
                            "@train#trainer.state.times['EPOCH_COMPLETED'], 'threads': torch.get_num_threads()}, "
                            "@output_dir + '/times.pt')",  # no 'import' in it: MONAI would parse it as one
                            "$scripts.runtime.distributed.cleanup()",
                        ]
                    }
                )
            )
            for n in counts:
                out = Path(work) / f"run_{n}"
                command = [
                    sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                    f"--nproc_per_node={n}", "-m", "monai.bundle", "run", "training",
                    "--config_file", str([*files, str(timing)]), "--output_dir", str(out), "--resume", "False",
                    "--epoch_length", str(steps), "--iterations", str(2 * steps), "--val_interval", "1000",
                ]  # fmt: skip
                command += ["--data_dir", data] if data is not None else []
                command += ["--training_data", "pseudo"] if workflow == "segmentation" else []  # needs points only
                run = subprocess.run(command, cwd=REPO, env=dict(os.environ), capture_output=True, text=True)
                if run.returncode:
                    raise RuntimeError(f"torchrun with {n} processes failed:\n{(run.stdout + run.stderr)[-3000:]}")
                measured = torch.load(out / "times.pt", weights_only=True)
                runs[n] = measured
        batch = json.loads((REPO / TRAINING_CONFIGS[workflow][1]).read_text())["batch_size"]
        first = counts[0]
        result = {
            "machine": _machine(),
            "workflow": workflow,
            "batch_per_process": batch,
            "steps_timed": steps,
            "runs": {
                str(n): {
                    "threads_per_process": r["threads"],
                    "seconds_per_iteration": round(r["epoch_s"] / steps, 3),
                    "samples_per_second": round(n * batch * steps / r["epoch_s"], 3),
                }
                for n, r in runs.items()
            },
        }
        base = result["runs"][str(first)]["samples_per_second"]
        for r in result["runs"].values():
            r["scaling"] = round(r["samples_per_second"] / base, 2)
        print(json.dumps(result, indent=2))
        if output:
            Path(output).write_text(json.dumps(result, indent=2) + "\n")

    def inference(
        self,
        tile: str = DEFAULT_TILE,
        size: int = 1000,
        networks: str | Sequence[str] = ("cpu", "hovernet"),
        reference: bool = True,
        model_path: str | None = None,
        features: str | Sequence[int] | None = None,
        hovernet_path: str | None = None,
        amp: bool | None = None,
        threads: int = 2,
        repeats: int = 3,
        rss: bool = False,
        slides: str | Sequence[int] = (5000, 20000),
        fill: float = 0.5,
        slide: str | None = None,
        fast_allocator: bool = True,
        compile: bool = False,
        output: str | None = None,
    ) -> None:
        """Inference speed and memory (``python -m scripts bench inference [--rss] [--slide PATH]``).

        Default: on one MoNuSeg tile (``size`` x ``size`` crop of ``tile``), in this process: our pipeline
        (``NucleusInference``, outputs label + GeoJSON + CSV) with the ``cpu`` segmenter and MONAI ``HoVerNet`` (fast,
        ``decoder_padding=True``, 256 px windows as ``inference_hovernet.json``): tiles/s, Mpx/s, post-processing share,
        and, for ``cpu``, tiled (``size // 2`` regions) vs whole-tile AJI, the network's FLOPs per window
        (``torch.utils.flop_counter``), its achieved GFLOP/s and their fraction of the roofline (the best of a large
        matmul and a 64-channel 3x3 convolution timed here, in the same dtype); MONAI's pipeline with the same ``cpu``
        network (``SlidingWindowInferer`` 256 px at overlap 0.25, float32, + ``HoVerNetInstanceMapPostProcessing``) and
        the time ratio; then, with ``hovernet`` among ``networks``, MONAI's own HoVerNet pipeline,
        ``SlidingWindowHoVerNetInferer`` + ``HoVerNet`` (fast, MONAI bundle settings: 164 px output, overlap
        1 - 164/256) + ``HoVerNetInstanceMapPostProcessing``, on the same image, and the time ratio. ``--rss``:
        generates pyramidal TIFFs of the ``slides`` sizes from MoNuSeg tiles (tissue disc covering ``fill``) in a
        temporary folder and runs ``inference.json`` on each in a child process, reporting its time and peak RSS
        (``--fast_allocator False`` runs the children without the glibc setting of ``scripts.runtime``, which never
        returns freed memory). ``--slide PATH``: the same child-process run on your slide. ``amp``: bfloat16
        autocast (default: where the CPU computes bf16 natively, as ``inference.json``). ``features``: the six
        ``HoVerUNet`` widths of ``model_path`` (default the shipped network's, 16,32,64,128,256,16), e.g.
        ``32,32,64,128,256,32`` for MONAI's ``BasicUNet`` widths (the ``cpu`` profile before 0.7.0). ``repeats``: timed
        runs of each tile pipeline (after one warm-up; MONAI's own HoVerNet pipeline, ~3 min, runs once); the run of
        median time is reported (this shared machine's speed varies from run to run). ``compile``: also time our
        tile pipeline with the network through ``torch.compile`` (``ours_cpu_compiled``, in the same process: the
        steady state of a folder of tiles once ``compile: auto`` has switched it on), after a warm-up on the tile
        itself that compiles it (its seconds: ``warmup_s``).
        """
        import shutil
        import tempfile

        from scripts.runtime import native_bf16

        torch.set_num_threads(threads)
        amp = native_bf16("cpu") if amp is None else as_bool(amp, "amp")
        networks = [networks] if isinstance(networks, str) and "," not in networks else networks
        networks = networks.split(",") if isinstance(networks, str) else list(networks)
        features = unet_features(features)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats: a positive integer, got {repeats!r}.")
        compile = as_bool(compile, "compile")
        work = Path(tempfile.mkdtemp(prefix="bench_inference_"))
        result: dict = {"machine": _machine(), "features": list(features) if features else "inference.json"}
        try:
            if rss or slide:
                model, result["weights"] = slide_model(model_path, work, features)
                if slide:
                    targets = [(Path(slide), None)]
                else:
                    sizes = [int(v) for v in (slides.split(",") if isinstance(slides, str) else slides)]
                    sources, origin = slide_sources()
                    result["slides_from"] = f"{origin}, tissue disc covering {fill:.0%}"
                    targets = []
                    for side in sizes:
                        start = time.perf_counter()
                        path = make_slide(work / f"slide_{side}.tif", side, sources, fill=fill)
                        targets.append((path, round(time.perf_counter() - start, 1)))
                arguments = ["--num_threads", str(threads), "--amp", str(amp), "--fast_allocator", str(fast_allocator)]
                arguments += ["--network_def#network#features", json.dumps(list(features))] if features else []
                runs = [
                    slide_run(path, model, work, arguments, make_s, name=str(path) if slide else None)
                    for path, make_s in targets
                ]
                result["runs"], result["fast_allocator"] = runs, fast_allocator
                if len(runs) > 1:
                    result["rss_ratio_largest_vs_smallest"] = round(runs[-1]["peak_rss_mb"] / runs[0]["peak_rss_mb"], 3)
            else:
                result |= self._inference_speed(
                    tile, size, networks, reference, model_path, features, hovernet_path, amp, work, repeats, compile
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(result, indent=2))
        if output:
            Path(output).write_text(json.dumps(result, indent=2) + "\n")

    def gpu(
        self,
        steps: int = 20,
        slide_size: int | None = None,
        fill: float = 0.5,
        workers: int | None = None,
        model_path: str | None = None,
        data: str | None = None,
        reduced: bool | None = None,
        output: str | None = None,
    ) -> None:
        """The GPU path (``python -m scripts bench gpu``): a training step of the paper-scale GAN and of MONAI's
        HoVerNet, and slide inference Mpx/s, on CUDA; reduced and on the CPU where CUDA is missing
        (:func:`scripts.bench.gpu.gpu_benchmark`)."""
        from scripts.bench.gpu import gpu_benchmark

        reduced = None if reduced is None else as_bool(reduced, "reduced")
        _report(gpu_benchmark(steps, slide_size, fill, workers, model_path, data, reduced), output)

    def _inference_speed(
        self, tile, size, networks, reference, model_path, features, hovernet_path, amp, work, repeats=1, compile=False
    ) -> dict:
        from monai.apps.pathology.inferers import SlidingWindowHoVerNetInferer
        from PIL import Image

        from scripts.evaluation.metrics import aji
        from scripts.inference.infer import NucleusInference

        source = MONUSEG / "images" / f"{tile}.png"
        if source.is_file():
            image, origin = np.asarray(Image.open(source).convert("RGB"))[:size, :size], f"MoNuSeg {tile}"
        else:
            sources, origin = slide_sources(size)
            image = np.ascontiguousarray(sources[0][:size, :size])
        path, warm = work / "tile.png", work / "warm.png"
        Image.fromarray(image).save(path)
        Image.fromarray(np.ascontiguousarray(image[:256, :256])).save(warm)  # warm-up input: first-call costs only
        height, width = image.shape[:2]
        result: dict = {"input": f"{origin}, {height}x{width}", "amp": amp, "repeats": repeats, "pipelines": {}}

        def ours(network: torch.nn.Module, name: str, region_size: int = 2048, timed: bool = True, **windows) -> dict:
            engine = NucleusInference(
                network,
                path,
                work / name,
                outputs=("label", "geojson", "csv"),
                region_size=region_size,
                amp=amp,
                progress=False,
                **windows,
            )
            start = time.perf_counter()
            engine.process(path if windows.get("compile") else warm)  # compiling needs the timed input's shapes
            warmup_s = time.perf_counter() - start
            runs = sorted((engine.process(path) for _ in range(repeats if timed else 1)), key=lambda r: r["seconds"])
            summary = runs[len(runs) // 2]  # the median run
            summary["label_map"] = np.asarray(Image.open(summary["outputs"]["label"])).astype(np.int32)
            summary["window"] = engine._grid.size  # (h, w): the tile in one window, or roi_size windows
            summary["warmup_s"] = round(warmup_s, 1)
            return summary

        for name in networks:
            if name == "cpu":
                network, weights = _cpu_segmenter(model_path, features=features)
                windows: dict = {}
            elif name == "hovernet":
                network, weights = _hovernet(True, hovernet_path)
                windows = {"roi_size": 256, "overlap": 0.25, "sw_batch_size": 4, "single_window": 0}  # as its config
            else:
                raise ValueError(f"unknown network '{name}' (cpu, hovernet).")
            summary = ours(network, name, **windows)
            seconds = summary["seconds"]
            entry = {"weights": weights, **_tile_entry(summary, height * width)}
            if name == "cpu":
                flops = _forward_flops(network, summary["window"])
                achieved = flops * summary["windows"] / summary["network_s"] / 1e9
                entry["gflop_per_window"] = round(flops / 1e9, 2)
                entry["kflop_per_pixel"] = round(flops * summary["windows"] / (height * width) / 1e3, 1)
                entry["network_gflops"] = round(achieved, 1)
                tiled = ours(network, f"{name}_tiled", region_size=max(size // 2, 192), timed=False)
                entry["tiled_regions"] = tiled["regions"]
                entry["tiled_vs_whole_aji"] = round(aji(tiled["label_map"], summary["label_map"]), 4)
                entry["tiled_nuclei"] = tiled["nuclei"]
                result["roofline"] = _roofline(amp)
                entry["roofline_fraction"] = round(achieved / result["roofline"]["gflops"], 3)
                if reference:
                    result["pipelines"]["monai_cpu"] = _monai_pipeline(
                        network, path, warm, height * width, weights, repeats=repeats
                    )
                    result["speedup_vs_monai_same_network"] = round(
                        result["pipelines"]["monai_cpu"]["seconds"] / seconds, 2
                    )
            result["pipelines"][f"ours_{name}"] = entry
            if name == "cpu" and compile:
                compiled_run = ours(network, "cpu_compiled", compile=True)
                compiled = {**_tile_entry(compiled_run, height * width), "warmup_s": compiled_run["warmup_s"]}
                result["pipelines"]["ours_cpu_compiled"] = compiled
                compiled["network_gflops"] = round(flops * compiled["windows_run"] / compiled["network_s"] / 1e9, 1)
                compiled["roofline_fraction"] = round(compiled["network_gflops"] / result["roofline"]["gflops"], 3)
                compiled["vs_eager_aji"] = round(aji(compiled_run["label_map"], summary["label_map"]), 4)
                compiled["speedup_vs_eager"] = round(seconds / compiled["seconds"], 2)
        if reference and "hovernet" in networks:
            network, weights = _hovernet(False, hovernet_path)
            inferer = SlidingWindowHoVerNetInferer(
                roi_size=256,
                sw_batch_size=4,
                overlap=1 - 164 / 256,
                padding_mode="constant",
                cval=0,
                extra_input_padding=((256 - 164) // 2,) * 4,
            )
            monai = _monai_pipeline(network, path, warm, height * width, weights, inferer)  # ~3 min: one run
            result["pipelines"]["monai_hovernet"] = monai
            if "ours_hovernet" in result["pipelines"]:
                ours_s = result["pipelines"]["ours_hovernet"]["seconds"]
                result["speedup_vs_monai_hovernet"] = round(monai["seconds"] / ours_s, 2)
        return result


def _tile_entry(summary: dict, area: int) -> dict:
    """The timing fields of a tile run's (median) ``summary`` from ``NucleusInference.process``."""
    seconds, network_s, post_s = summary["seconds"], summary["network_s"], summary["postprocess_s"]
    return {
        "seconds": seconds,
        "tiles_per_s": round(1 / seconds, 4),
        "megapixels_per_s": round(area / 1e6 / seconds, 4),
        "network_s": network_s,
        "postprocess_s": post_s,
        "postprocess_share": round(post_s / max(network_s + post_s, 1e-9), 3),
        "nuclei": summary["nuclei"],
        "window": "x".join(str(v) for v in summary["window"]),
        "windows_run": summary["windows"],
    }


def _monai_pipeline(
    network: torch.nn.Module,
    path: Path,
    warm: Path,
    area: int,
    weights: str,
    inferer: Callable | None = None,
    repeats: int = 1,
) -> dict:
    """MONAI's tile pipeline, float32: ``inferer`` (default ``SlidingWindowInferer``, 256 px windows at overlap 0.25,
    Gaussian) + ``HoVerNetInstanceMapPostProcessing`` (MONAI bundle settings), timed on ``path`` after ``warm``
    (the median of ``repeats`` runs)."""
    import warnings

    from monai.apps.pathology.transforms.post.array import HoVerNetInstanceMapPostProcessing
    from monai.inferers import SlidingWindowInferer
    from PIL import Image

    from transforms import split_output

    network.eval()
    inferer = inferer or SlidingWindowInferer(roi_size=256, sw_batch_size=4, overlap=0.25, mode="gaussian")
    postprocessing = HoVerNetInstanceMapPostProcessing(sobel_kernel_size=21, marker_threshold=0.4, marker_radius=2)

    def run(file: Path) -> tuple[float, float, int]:
        start = time.perf_counter()
        pixels = np.asarray(Image.open(file).convert("RGB"))
        x = torch.from_numpy(pixels.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
        with torch.no_grad():
            output = inferer(x, network)
        if isinstance(output, torch.Tensor):
            output = split_output(output)
        network_s = time.perf_counter() - start
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info, _ = postprocessing(output["nucleus_prediction"][0], output["horizontal_vertical"][0])
        return time.perf_counter() - start, network_s, len(info)

    run(warm)
    runs = sorted(run(path) for _ in range(repeats))
    seconds, network_s, count = runs[len(runs) // 2]
    return {
        "weights": weights,
        "seconds": round(seconds, 3),
        "tiles_per_s": round(1 / seconds, 4),
        "megapixels_per_s": round(area / 1e6 / seconds, 4),
        "network_s": round(network_s, 3),
        "postprocess_s": round(seconds - network_s, 3),
        "postprocess_share": round((seconds - network_s) / seconds, 3),
        "nuclei": count,
    }


def slide_model(model_path: str | None, work: Path, features: Sequence[int] | None = None) -> tuple[str | None, str]:
    """The weights a slide run uses (``None``: the shipped model) and their description; seeded random weights
    (``HoVerUNet`` with ``features``) saved in ``work`` when no model is given and none is shipped, or when
    ``features`` differ from the shipped network's."""
    if model_path is None and (features or not (REPO / "bundle" / "models" / "model.pt").is_file()):
        network, weights = _cpu_segmenter(None, features=features)
        torch.save(network.state_dict(), work / "model.pt")
        return str(work / "model.pt"), weights
    return model_path, model_path or str(REPO / "bundle" / "models" / "model.pt")


def slide_run(
    path: Path, model: str | None, work: Path, arguments: Sequence[str], make_s: float | None, name: str | None = None
) -> dict:
    """``inference.json`` on the slide at ``path`` in a child process (``model``: weights, default the shipped model;
    ``arguments``: more ``--key value`` overrides): its time, peak RSS, Mpx/s and post-processing share. The outputs
    go to a new folder inside ``work``, removed afterwards; nothing else in ``work`` is touched.

    Linux carries a process's peak RSS across ``fork`` and ``exec``, so the child's peak reads at least this
    process's own peak at the launch: reported as ``peak_rss_floor_mb`` (a peak equal to it says nothing)."""
    import resource
    import shutil
    import sys
    import tempfile

    out = Path(tempfile.mkdtemp(prefix=f"out_{path.stem}_", dir=work))  # its own folder: never a user's
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    command += ["bundle/configs/inference.json", "--input", str(path), "--output_dir", str(out)]
    command += ["--model_path", str(model)] if model else []
    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak, seconds, _ = _run_child([*command, *arguments])
    summary = json.loads((out / "summary.json").read_text())["images"][0]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "slide": name or f"{summary['shape'][0]}x{summary['shape'][1]}",
        "slide_file_mb": round(path.stat().st_size / 2**20, 1),
        "make_s": make_s,
        "peak_rss_mb": round(peak, 1),
        "peak_rss_floor_mb": round(floor, 1),
        "process_s": round(seconds, 1),
        "inference_s": summary["seconds"],
        "regions": summary["regions"],
        "skipped_regions": summary["skipped_regions"],
        "nuclei": summary["nuclei"],
        "megapixels_per_s": round(summary["megapixels"] / summary["seconds"], 3),
        "regions_per_s": round(summary["regions"] / summary["seconds"], 3),
        "postprocess_share": round(
            summary["postprocess_s"] / max(summary["network_s"] + summary["postprocess_s"], 1e-9), 3
        ),
    }


def _forward_flops(network: torch.nn.Module, window: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``network`` on a (1, 3, *window) input (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network.eval()(torch.zeros(1, 3, *window))
    return int(counter.get_total_flops())


def _roofline(amp: bool, repeats: int = 5) -> dict:
    """GFLOP/s this machine reaches in the inference dtype (bf16 autocast when ``amp``) on a 2048^3 matmul and on a
    64 -> 64 channel 3x3 convolution of a (1, 64, 512, 512) input; the roofline is the better of the two."""
    from scripts.runtime import bf16_autocast

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval()
    x = torch.randn(1, 64, 512, 512)
    with torch.no_grad(), bf16_autocast("cpu", amp):
        matmul = 2 * 2048**3 / median_time(lambda: a @ b, repeats) / 1e9
        convolution = 2 * 64 * 64 * 9 * 512 * 512 / median_time(lambda: conv(x), repeats) / 1e9
    return {
        "dtype": "bfloat16" if amp else "float32",
        "matmul_gflops": round(matmul, 1),
        "conv3x3_gflops": round(convolution, 1),
        "gflops": round(max(matmul, convolution), 1),
    }


def unet_features(features: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``features`` (``"16,32,64,128,256,16"``, a JSON list or a sequence) as six positive ints, ``None`` for the
    default; one clear ``ValueError`` otherwise."""
    if features is None:
        return None
    try:
        values = json.loads(f"[{features.strip('[]()')}]") if isinstance(features, str) else list(features)
        values = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 6 or min(values) < 1:
        raise ValueError(f"features: six positive ints (HoVerUNet widths, e.g. 16,32,64,128,256,16), got {features!r}.")
    return values


def _cpu_segmenter(
    model_path: str | Path | None, seed: int = 0, features: Sequence[int] | None = None
) -> tuple[torch.nn.Module, str]:
    """The ``cpu`` profile's segmenter (``HoVerUNet`` with ``features``, default the shipped ones) with ``model_path``'s
    weights (default ``bundle/models/model.pt`` if present and ``features`` are the default), else seeded random
    weights."""
    from networks import HoVerUNet
    from scripts.engines.checkpoint import load_network_weights

    torch.manual_seed(seed)
    network = HoVerUNet(features=features) if features else HoVerUNet()
    path = Path(model_path) if model_path else REPO / "bundle" / "models" / "model.pt"
    if model_path or (path.is_file() and not features):
        return load_network_weights(network, path, what="segmentation model"), str(path)
    return network, "random weights (seed 0): no trained model given"


def _hovernet(decoder_padding: bool, weights_path: str | Path | None, seed: int = 0) -> tuple[torch.nn.Module, str]:
    from monai.networks.nets import HoVerNet

    from scripts.engines.checkpoint import load_network_weights

    torch.manual_seed(seed)  # the same random weights for both decoder paddings (they share parameter shapes)
    network = HoVerNet(mode="fast", in_channels=3, out_classes=0, decoder_padding=decoder_padding)
    if weights_path:
        return load_network_weights(network, weights_path, what="HoVerNet"), str(weights_path)
    return network, "random weights (seed 0)"


def _run_child(command: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run ``command`` from the repository root; returns (peak RSS in MiB of that process, wall seconds, output)."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryFile(mode="w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        log.seek(0)
        output = log.read()
    if child.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({child.returncode}):\n{output[-3000:]}")
    return usage.ru_maxrss / 1024, seconds, output


def _parser(configs: Sequence[str], data: str | None, **overrides):
    """A ``ConfigParser`` of the repository's ``configs`` with ``data_dir`` (if given) and ``overrides`` set."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / c) for c in configs])
    for key, value in {**({"data_dir": data} if data is not None else {}), **overrides}.items():
        parser[key] = value
    return parser


def _allocator_child(benchmark: str, steps: int, data: str | None) -> dict:
    """The result of ``bench <benchmark>`` run again in a child process started with the allocator setting (it only
    acts at process start)."""
    import os
    import subprocess
    import sys

    from scripts.runtime import FAST_ALLOCATOR, NO_REEXEC

    env = {**os.environ, "GLIBC_TUNABLES": FAST_ALLOCATOR, NO_REEXEC: "1"}
    command = [sys.executable, "-m", "scripts", "bench", benchmark, "--steps", str(steps), "--child", "True"]
    command += ["--data", data] if data is not None else []
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return json.loads(run.stdout[run.stdout.index("{") :])


def _report(result: dict, output: str | None) -> None:
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
