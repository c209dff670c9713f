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
"""The GPU path (``python -m scripts bench gpu``): what the paper-scale settings cost on a CUDA device.

Three measurements, a few minutes in all on one data-centre GPU: a training step of the paper-scale synthesis GAN
(``train_synthesis.json``), a training step of MONAI's HoVerNet segmenter (``train.json``, trained on pseudo masks
from the points so that no synthetic pairs are needed), and ``inference.json`` on a generated pyramidal slide in a
child process, read with cuCIM where it is installed, else tifffile. Without CUDA the same code runs on the CPU in a
reduced form (small crops, batches and slide), which is what the tests run.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from scripts.bench.benchmarks import _machine, _parser, median_time, slide_model, slide_run
from scripts.data.generated_slide import make_slide, slide_sources

GAN_CONFIGS = ("bundle/configs/train_synthesis.json",)
HOVERNET_CONFIGS = ("bundle/configs/train.json",)
FULL = {"gan": {}, "hovernet": {}, "slide": 20000}  # the configs' own crop and batch sizes
REDUCED = {
    "gan": {"crop_size": 64, "batch_size": 1, "num_workers": 0},
    "hovernet": {"batch_size": 1, "num_workers": 0},  # MONAI HoVerNet (fast) takes 256 px inputs only
    "slide": 1536,
}


def gpu_benchmark(
    steps: int = 20,
    slide_size: int | None = None,
    fill: float = 0.5,
    workers: int | None = None,
    model_path: str | None = None,
    data: str | None = None,
    reduced: bool | None = None,
) -> dict:
    """Time the GAN step, the HoVerNet step and slide inference on ``cuda`` (or, reduced, on the CPU).

    Args:
        steps: training steps timed per network (median, after 2 warm-up steps; reduced: none).
        slide_size: side of the generated slide (default 20000, reduced 1536).
        fill: fraction of the slide covered by the tissue disc.
        workers: post-processing threads of the slide run (default: half the CPU cores, at least 1).
        model_path: segmentation weights for the slide run (default: the shipped model).
        data: training data folder (default: the embedded sample).
        reduced: small crops, batches and slide (default: when CUDA is not available).
    """
    cuda = torch.cuda.is_available()
    reduced = not cuda if reduced is None else reduced
    device = torch.device("cuda" if cuda else "cpu")
    sizes = REDUCED if reduced else FULL
    result: dict = {
        "machine": _machine(),
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "reduced": reduced,
    }
    workers = workers or max(1, (os.cpu_count() or 2) // 2)
    # the slide first: a child's peak RSS counts the parent's memory at the fork (Linux keeps the high-water mark
    # across exec), so it runs before the trainers below hold theirs
    result["slide"] = _slide_inference(slide_size or sizes["slide"], fill, workers, model_path)
    warmup = 0 if reduced else 2  # reduced: a check that the path runs, not a measurement
    result["gan_step"] = training_step(GAN_CONFIGS, device, steps, data, sizes["gan"], warmup)
    result["hovernet_step"] = training_step(HOVERNET_CONFIGS, device, steps, data, sizes["hovernet"], warmup, True)
    return result


def training_step(
    configs: Sequence[str],
    device: torch.device,
    steps: int,
    data: str | None,
    overrides: dict,
    warmup: int = 2,
    pseudo: bool = False,
) -> dict:
    """Median seconds of one training iteration of the trainer in ``configs`` on ``device`` over ``steps`` after
    ``warmup`` (data loading included), its samples per second and, on CUDA, the peak memory the steps allocate."""
    settings = {"device": f"$torch.device('{device.type}')", **overrides}
    settings |= {"training_data": "pseudo"} if pseudo else {}
    parser = _parser(configs, data, **settings)
    parser["train#handlers"] = []
    trainer = parser.get_parsed_content("train#trainer")
    batches = _forever(parser.get_parsed_content("train#dataloader"))

    def step() -> None:
        trainer._iteration(trainer, next(batches))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_time(step, repeats=steps, warmup=warmup)
    batch = int(parser.get_parsed_content("batch_size"))
    result = {
        "config": configs[-1],
        "crop_batch": f"{parser.get_parsed_content('crop_size')} px, batch {batch}",
        "amp": bool(parser.get_parsed_content("amp")),
        "seconds_per_iteration": round(seconds, 4),
        "samples_per_second": round(batch / seconds, 4),
    }
    if device.type == "cuda":
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def _forever(loader) -> Iterator:
    while True:
        yield from loader


def _slide_inference(size: int, fill: float, workers: int, model_path: str | None) -> dict:
    """``inference.json`` (its device, amp and compile defaults) on a generated ``size``^2 slide, child process."""
    import shutil

    backend = "cucim" if importlib.util.find_spec("cucim") else "tifffile"
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    try:
        model, weights = slide_model(model_path, work)
        sources, origin = slide_sources()
        start = time.perf_counter()
        path = make_slide(work / f"slide_{size}.tif", size, sources, fill=fill)
        make_s = round(time.perf_counter() - start, 1)
        arguments = ["--backend", backend, "--workers", str(workers), "--num_threads", str(os.cpu_count() or 1)]
        run = slide_run(path, model, work, arguments, make_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"weights": weights, "slides_from": f"{origin}, tissue disc covering {fill:.0%}", "backend": backend,
            "workers": workers, **run}  # fmt: skip
