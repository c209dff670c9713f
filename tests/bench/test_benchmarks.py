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
"""Tests of ``scripts/bench``: the references are fair and the reports complete (speed itself is measured by the
benchmark command, not asserted here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.bench import Bench
from scripts.bench.benchmarks import naive_ellipse_mask, unet_features
from transforms import PointsToEllipseMask, read_points


def test_naive_sampler_reference_draws_the_same_prior(monuseg):
    points = read_points(monuseg / "points" / "TCGA-18-5592-01Z-00-DX1.csv")
    naive = naive_ellipse_mask(points, (1000, 1000))
    ours = PointsToEllipseMask(spatial_size=(1000, 1000)).sample(points).label
    naive_areas, our_areas = np.bincount(naive.ravel())[1:], np.bincount(ours.ravel())[1:]
    assert len(naive_areas) == len(our_areas) == len(points)
    assert abs(np.median(naive_areas) - np.median(our_areas)) < 0.15 * np.median(our_areas)


def test_transforms_report(tmp_path):
    output = tmp_path / "bench.json"
    Bench().transforms(output=str(output), threads=1)
    report = json.loads(output.read_text())
    for key in ("PointsToEllipseMask_speedup", "HVMap_speedup", "all_metrics_ms", "machine", "input"):
        assert key in report
    assert report["n_nuclei"] > 100
    ratio = report["naive_skimage_loop_ms"] / report["PointsToEllipseMask_ms"]  # rounded times: 5 % slack
    assert abs(report["PointsToEllipseMask_speedup"] - ratio) <= 0.05 * ratio + 0.1


def test_bench_inference_on_tiny_inputs(tmp_path):
    speed = tmp_path / "speed.json"
    Bench().inference(size=256, networks="cpu", reference=False, threads=1, output=str(speed))
    report = json.loads(speed.read_text())
    assert report["repeats"] == 3  # the median of 3 timed runs
    result = report["pipelines"]["ours_cpu"]
    assert result["tiles_per_s"] > 0 and result["tiled_vs_whole_aji"] >= 0.98 and 0 <= result["postprocess_share"] < 1
    assert result["window"] == "256x256" and result["windows_run"] == 1  # a 256 px tile: one window of itself
    # the shipped segmenter costs ~100 kFLOP per pixel; achieved GFLOP/s below the measured roofline
    assert 80 < result["kflop_per_pixel"] < 120 and 0 < result["roofline_fraction"] < 1
    roofline = report["roofline"]
    assert roofline["gflops"] == max(roofline["matmul_gflops"], roofline["conv3x3_gflops"])
    memory = tmp_path / "rss.json"
    Bench().inference(rss=True, slides="512", threads=1, output=str(memory))
    run = json.loads(memory.read_text())["runs"][0]
    assert run["slide"] == "512x512" and run["peak_rss_mb"] > 100 and run["regions"] >= 1


def test_bench_inference_times_the_compiled_pipeline_after_compiling_on_the_tile(tmp_path, monkeypatch):
    """``--compile`` adds ``ours_cpu_compiled`` (the same process, its agreement with eager and the speed-up); its
    warm-up runs on the timed tile itself, so the timed runs never compile. ``torch.compile`` is replaced by a
    recorder here (its outputs are tested in tests/inference/test_fast_paths.py)."""
    from scripts.inference.predict import TilePredictor

    compiled_shapes: list[tuple[int, ...]] = []
    forward = TilePredictor.forward

    def record(self, x):
        if getattr(self, "_compiled", None) is not None:
            compiled_shapes.append(tuple(x.shape[-2:]))
        return forward(self, x)

    monkeypatch.setattr(TilePredictor, "compile", lambda self: setattr(self, "_compiled", self.network))
    monkeypatch.setattr(TilePredictor, "forward", record)
    speed = tmp_path / "speed.json"
    Bench().inference(size=320, networks="cpu", reference=False, threads=1, repeats=1, compile=True, output=str(speed))
    report = json.loads(speed.read_text())["pipelines"]
    compiled = report["ours_cpu_compiled"]
    assert compiled["vs_eager_aji"] == 1.0 and compiled["nuclei"] == report["ours_cpu"]["nuclei"]
    assert compiled["speedup_vs_eager"] == pytest.approx(report["ours_cpu"]["seconds"] / compiled["seconds"], abs=0.01)
    assert 0 < compiled["roofline_fraction"] < 1 and compiled["warmup_s"] > 0
    # warm-up + one timed run, each one 320 px window: never the 256 px warm-up crop of the eager pipeline
    assert compiled_shapes == [(320, 320)] * 2


def test_bench_inference_with_another_width(tmp_path):
    """``--features`` reaches the tile pipeline (more FLOPs per pixel with MONAI's widths than the shipped network's)
    and the slide run's child process."""
    speed = tmp_path / "speed.json"
    Bench().inference(
        size=256, networks="cpu", reference=False, threads=1, features="32,32,64,128,256,32", output=str(speed)
    )
    report = json.loads(speed.read_text())
    assert report["features"] == [32, 32, 64, 128, 256, 32]
    assert 130 < report["pipelines"]["ours_cpu"]["kflop_per_pixel"] < 180  # ~152 kFLOP/px against ~98
    memory = tmp_path / "rss.json"
    Bench().inference(rss=True, slides="512", threads=1, features=[32, 32, 64, 128, 256, 32], output=str(memory))
    assert json.loads(memory.read_text())["runs"][0]["regions"] >= 1  # the child built the wide network
    with pytest.raises(ValueError, match="features: six positive ints"):
        unet_features("16,32,64")
    with pytest.raises(ValueError, match="repeats: a positive integer"):
        Bench().inference(size=256, networks="cpu", repeats=0)


def test_bench_gpu_runs_reduced_on_the_cpu(tmp_path):
    """Without CUDA ``bench gpu`` runs its three measurements in reduced form (small crops, batch 1, a small slide)."""
    output = tmp_path / "gpu.json"
    Bench().gpu(steps=1, slide_size=1024, workers=1, reduced=True, output=str(output))
    report = json.loads(output.read_text())
    assert report["reduced"] is True
    gan, hovernet = report["gan_step"], report["hovernet_step"]
    assert gan["config"].endswith("train_synthesis.json") and gan["crop_batch"] == "64 px, batch 1"
    assert hovernet["config"].endswith("train.json") and hovernet["crop_batch"] == "256 px, batch 1"
    for step in (gan, hovernet):
        assert step["seconds_per_iteration"] > 0
        assert abs(step["samples_per_second"] * step["seconds_per_iteration"] - 1) < 0.05  # batch 1
    slide = report["slide"]
    assert slide["slide"] == "1024x1024" and slide["backend"] in ("tifffile", "cucim")
    assert slide["nuclei"] > 50 and slide["megapixels_per_s"] > 0  # a half-filled 1024^2 slide of MoNuSeg tissue
    assert slide["peak_rss_mb"] >= slide["peak_rss_floor_mb"] > 0


def test_slide_run_removes_only_the_folder_it_made(tmp_path, monkeypatch):
    """A slide run writes its outputs to a new folder inside ``work`` and removes only that one."""
    from scripts.bench import benchmarks

    def fake_child(command):  # stands in for inference.json: writes the summary it would write
        out = Path(command[command.index("--output_dir") + 1])
        summary = {"shape": [512, 512], "seconds": 2.0, "regions": 1, "skipped_regions": 0, "nuclei": 7,
                   "megapixels": 0.262144, "postprocess_s": 0.5, "network_s": 1.5}  # fmt: skip
        (out / "summary.json").write_text(json.dumps({"images": [summary]}))
        return 300.0, 2.5, ""

    monkeypatch.setattr(benchmarks, "_run_child", fake_child)
    slide = tmp_path / "slide.tif"
    slide.write_bytes(b"0" * 1024)
    mine = tmp_path / "out_slide"  # a user's folder with the name the outputs once had
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    run = benchmarks.slide_run(slide, None, tmp_path, [], 0.1)
    assert (mine / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out_slide", "slide.tif"]
    assert run["slide"] == "512x512" and run["megapixels_per_s"] == round(0.262144 / 2.0, 3)
    assert run["postprocess_share"] == 0.25 and run["peak_rss_mb"] == 300.0
