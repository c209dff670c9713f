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
"""``gan_selection``: one GAN run keeping every checkpoint, a segmenter per checkpoint, the scores ranked."""

from __future__ import annotations

import json
import math

import pytest

from scripts.cli.compare import compare
from scripts.cli.gan_selection import gan_selection, spearman
from tests.helpers import SAMPLE


def test_spearman_orders_and_ties():
    assert spearman([0.1, 0.5, 0.9, 0.3], [1.0, 2.0, 4.0, 1.5]) == pytest.approx(1.0)
    assert spearman([3.0, 2.0, 1.0], [0.2, 0.4, 0.6]) == pytest.approx(-1.0)
    assert spearman([1.0, 2.0, 3.0, 4.0], [0.1, 0.3, 0.2, 0.4]) == pytest.approx(0.8)
    assert math.isnan(spearman([1.0, 1.0, 1.0], [0.1, 0.2, 0.3]))


@pytest.mark.slow
def test_gan_selection_trains_a_segmenter_per_checkpoint_and_ranks_the_scores(tmp_path):
    out = tmp_path / "selection"
    report = gan_selection(data=str(SAMPLE), output=str(out), profile="smoke")
    # the smoke GAN: 4 iterations of 2-iteration epochs, validated and kept after each epoch
    kept = sorted(p.name for p in (out / "gan_c" / "checkpoints").glob("checkpoint_*.pt"))
    assert kept == ["checkpoint_00000002.pt", "checkpoint_00000004.pt"]
    assert [r["iteration"] for r in report["checkpoints"]] == [2, 4]
    rounds = [json.loads(line) for line in (out / "gan_c" / "metrics.jsonl").read_text().splitlines()]
    for row, validated in zip(report["checkpoints"], rounds, strict=True):
        assert row["iteration"] == validated["iteration"] and row["score"] == validated["score"]
        seed_dir = out / f"iteration_{row['iteration']}" / "seed0"
        manifest = json.loads((seed_dir / "synthetic_c_real" / "manifest.json").read_text())
        assert manifest["generator_checkpoint"].endswith(f"checkpoint_{row['iteration']:08d}.pt")
        metrics = json.loads((seed_dir / "c_real" / "evaluation" / "metrics.json").read_text())["mean"]
        assert row["aji"] == metrics["aji"] and 0.0 <= row["aji"] <= 1.0
    # each predictor picks the checkpoint its own (oriented) value ranks first
    by_score = max(report["checkpoints"], key=lambda r: r["score"])
    assert report["predictors"]["score"]["picks_iteration"] == by_score["iteration"]
    low_stain = min(report["checkpoints"], key=lambda r: r["stain_distance"])
    assert report["predictors"]["stain_distance"]["picks_iteration"] == low_stain["iteration"]
    best = max(r["aji"] for r in report["checkpoints"])
    for predictor in report["predictors"].values():
        assert predictor["aji_lost"] == pytest.approx(best - predictor["picked_aji"]) and predictor["aji_lost"] >= 0
    assert "kid_real_features" not in report["predictors"]
    assert "| score | Spearman with AJI |" in (out / "selection.md").read_text()

    # again with a feature network: everything above is reused, only the KID column is added
    model = out / "iteration_2" / "seed0" / "c_real" / "model.pt"
    stamp = model.stat().st_mtime_ns
    again = gan_selection(data=str(SAMPLE), output=str(out), profile="smoke", features=str(model), crop_size=64)
    assert model.stat().st_mtime_ns == stamp
    assert [r["aji"] for r in again["checkpoints"]] == [r["aji"] for r in report["checkpoints"]]
    assert all(math.isfinite(r["kid_real_features"]) for r in again["checkpoints"])
    assert "kid_real_features" in json.loads((out / "selection.json").read_text())["predictors"]

    with pytest.raises(SystemExit, match="fewer than two validated checkpoints"):  # one checkpoint chosen
        gan_selection(data=str(SAMPLE), output=str(out), profile="smoke", checkpoints="4")
    with pytest.raises(SystemExit, match=r"checkpoints \[3\] were not validated by the GAN run; it has \[2, 4\]"):
        gan_selection(data=str(SAMPLE), output=str(out), profile="smoke", checkpoints="2,3")
    with pytest.raises(SystemExit, match="checkpoints must be comma-separated integers"):  # before any training
        gan_selection(data=str(SAMPLE), output=str(tmp_path / "never"), profile="smoke", checkpoints="x,y")
    with pytest.raises(SystemExit, match="gan_iterations must be an integer >= 1, got 'many'"):
        gan_selection(data=str(SAMPLE), output=str(tmp_path / "never"), profile="smoke", gan_iterations="many")
    assert not (tmp_path / "never").exists()
    with pytest.raises(SystemExit, match="features: .*not found"):
        gan_selection(data=str(SAMPLE), output=str(out), profile="smoke", features=str(tmp_path / "none.pt"))
    with pytest.raises(SystemExit, match="checkpoint_00000003.pt: not found"):
        compare(data=str(SAMPLE), output=str(tmp_path / "c"), rows="c_real", gan_c=str(out / "gan_c"), gan_checkpoint=3)
