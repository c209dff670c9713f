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
"""Stage 4: the segmentation workflow (train.json), its data modes, evaluation (evaluate.json) and the main job."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from networks import HoVerNetSingleOutput, HoVerUNet, ImageToMaskNet
from scripts.cli.pipeline import pipeline
from scripts.data.datalist import PrepareError
from scripts.engines.checkpoint import list_checkpoints
from scripts.engines.handlers import TrainingDivergedError
from scripts.engines.segmentation import FreezeEncoder, encoder_parameters, evaluation_items, segmentation_datalist
from scripts.evaluation.metrics import instance_metrics
from scripts.inference.predict import TilePredictor
from scripts.runtime import Bf16Autocast
from tests.helpers import REPO, SAMPLE, load_label, parse_configs

CONFIGS = REPO / "bundle" / "configs"
TRAIN, SMOKE, EVALUATE = CONFIGS / "train.json", CONFIGS / "train_smoke.json", CONFIGS / "evaluate.json"


def _train(output_dir: Path, **overrides) -> ConfigParser:
    parser = parse_configs(TRAIN, SMOKE, output_dir=str(output_dir), **overrides)
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("training")
    return parser


def _data(tmp_path: Path, labels: bool = True) -> Path:
    data = tmp_path / "data"
    for sub in ("images", "points") + (("labels",) if labels else ()):
        shutil.copytree(SAMPLE / sub, data / sub)
    return data


# --- data ------------------------------------------------------------------------------------------------------------


def test_datalist_modes_use_labels_only_where_allowed(tmp_path):
    data = _data(tmp_path)
    pseudo = segmentation_datalist("pseudo", data, seed=0)
    dense = segmentation_datalist("dense", data, seed=0)
    assert len(pseudo["training"]) == 3 and len(pseudo["validation"]) == 1
    assert all(set(i) == {"image", "points", "name"} for i in pseudo["training"])  # no label reaches training
    assert all(set(i) == {"image", "label", "name"} for i in dense["training"])
    assert [i["name"] for i in dense["training"]] == [i["name"] for i in pseudo["training"]]
    assert {"image", "points", "label"} <= set(pseudo["validation"][0])
    synthetic = tmp_path / "synthetic.json"
    pairs = [
        {"image": str(Path(i["image"]).resolve()), "label": str(Path(i["label"]).resolve()), "name": f"{i['name']}_m"}
        for i in dense["training"][:2]
    ]
    synthetic.write_text(json.dumps({"training": pairs}))
    mixed = segmentation_datalist("synthetic+pseudo", data, synthetic, seed=0)
    assert mixed["training"] == pairs + pseudo["training"] and mixed["validation"] == pseudo["validation"]
    with pytest.raises(ValueError, match="training_data must be one of"):
        segmentation_datalist("labels", data)
    with pytest.raises(ValueError, match="synthetic datalist not found; run the synthesize workflow"):
        segmentation_datalist("synthetic", data, tmp_path / "missing.json")
    with pytest.raises(PrepareError, match="needs real instance labels"):
        segmentation_datalist("dense", _data(tmp_path / "nolabels", labels=False))
    with pytest.raises(PrepareError, match="evaluation needs real instance labels"):
        evaluation_items(tmp_path / "nolabels" / "data")
    assert len(evaluation_items(data, "all")) == 4


def test_tile_predictor_matches_the_networks_own_output_and_restores_its_mode():
    torch.manual_seed(0)
    net = ImageToMaskNet(features=(8, 16), blocks_per_stage=1).train()
    image = torch.from_numpy(np.array(Image.open(next((SAMPLE / "images").glob("*.png"))))).permute(2, 0, 1).float()
    predictor = TilePredictor(net, roi_size=256, intensity_range=(0.0, 1.0))
    outputs = predictor.outputs(image)
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        direct = net(image[None] / 255.0)
    for key, value in outputs.items():  # one window covering the tile: the sliding window is the identity
        assert torch.allclose(value, direct[key][0], atol=1e-5)
    label = predictor(image)
    assert label.shape == (256, 256) and label.dtype == np.int32
    wrapped = TilePredictor(HoVerNetSingleOutput(net), roi_size=256)  # the exported single-tensor form
    assert all(torch.equal(wrapped.outputs(image)[k], v) for k, v in outputs.items())


def test_bf16_autocast_keeps_the_networks_weights_and_float32_outputs():
    torch.manual_seed(0)
    net = ImageToMaskNet(features=(8, 16, 32), blocks_per_stage=1)
    keys = list(net.state_dict())
    x = torch.rand(2, 3, 64, 64)
    reference = net(x)
    wrapped = Bf16Autocast(net, channels_last=True)
    assert wrapped.module is net and list(net.state_dict()) == keys  # checkpoints of `net` are unchanged
    assert net.stem.weight.is_contiguous(memory_format=torch.channels_last)
    output = wrapped(x)
    for key, value in output.items():
        assert value.dtype == torch.float32 and value.shape == reference[key].shape
        assert torch.allclose(value, reference[key], atol=0.1, rtol=0.05)  # bf16 keeps ~3 significant digits
        assert not torch.equal(value, reference[key])  # it did compute in bf16
    sum(v.square().mean() for v in output.values()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


def test_cpu_profile_trains_in_bf16_where_the_cpu_computes_it(monkeypatch):
    """bf16 with AMX or AVX512-BF16 (channels-last with AMX only), fp32 elsewhere."""
    for amx, avx512_bf16, amp, channels_last in (
        (True, True, True, True),
        (False, True, True, False),
        (False, False, False, False),
    ):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        parser = parse_configs(TRAIN, CONFIGS / "train_cpu.json", device="$torch.device('cpu')")
        assert parser.get_parsed_content("amp") is amp
        assert parser.get_parsed_content("channels_last") is channels_last
        assert isinstance(parser.get_parsed_content("train_network"), Bf16Autocast) is amp
        assert parser.get_parsed_content("train#trainer#amp") is False  # MONAI's own amp is CUDA autocast only
    assert parse_configs(TRAIN, SMOKE).get_parsed_content("amp") is False  # tests stay fp32 everywhere


def test_cpu_profile_recipe(tmp_path):
    """The ``cpu`` segmenter: MONAI BasicUNet with HoVer outputs, Adam with a cosine schedule that ends at 0, rot90 /
    flip augmentation without resampling, HED stain jitter; it trains on the embedded sample."""
    parser = parse_configs(
        TRAIN, CONFIGS / "train_cpu.json", data_dir=str(SAMPLE), training_data="pseudo", iterations=6,
        epoch_length=3, val_interval=2, crop_size=64, output_dir=str(tmp_path / "run"), amp=False,
        device="$torch.device('cpu')",
    )  # fmt: skip
    assert isinstance(parser.get_parsed_content("network_def"), HoVerUNet)
    optimizer, scheduler = parser.get_parsed_content("optimizer"), parser.get_parsed_content("lr_scheduler")
    lrs = []
    for _ in range(6):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and all(a > b for a, b in itertools.pairwise(lrs))
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert "RandHEDJitterd" in names and "RandAffined" not in names and "RandRotate90d" in names
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["hv_label"].shape == (4, 2, 64, 64)
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("training")
    assert parser.get_parsed_content("train#trainer").state.iteration == 6
    assert (tmp_path / "run" / "model.pt").is_file()


def test_appearance_randomisation_is_on_for_synthetic_pairs_and_changes_only_the_image():
    """``appearance_randomisation`` appends random contrast curves, gamma, blur and noise to the cpu profile's
    augmentation, by default for synthetic pairs only (real images: off; the paper-scale profile: off); off, the
    transform chain is unchanged; on, the same seeds give the same targets and a different image, still in [0, 1]."""
    defaults = {
        data: parse_configs(TRAIN, CONFIGS / "train_cpu.json", training_data=data).get_parsed_content(
            "appearance_randomisation"
        )
        for data in ("synthetic", "synthetic+pseudo", "pseudo", "dense", "refined")
    }
    assert defaults == {"synthetic": True, "synthetic+pseudo": True, "pseudo": False, "dense": False, "refined": False}
    assert parse_configs(TRAIN).get_parsed_content("appearance_randomisation") is False
    settings = {"data_dir": str(SAMPLE), "training_data": "dense", "crop_size": 64, "amp": False}
    plain = parse_configs(TRAIN, CONFIGS / "train_cpu.json", **settings)
    on = parse_configs(TRAIN, CONFIGS / "train_cpu.json", appearance_randomisation=True, **settings)
    plain_chain = plain.get_parsed_content("train#preprocessing")
    on_chain = on.get_parsed_content("train#preprocessing")
    names = [type(t).__name__ for t in on_chain.transforms]
    assert names[: len(plain_chain.transforms) - 2] == [type(t).__name__ for t in plain_chain.transforms][:-2]
    assert len(names) == len(plain_chain.transforms) + 5 and "RandHistogramShiftd" in names
    assert "RandHistogramShiftd" not in [type(t).__name__ for t in plain_chain.transforms]
    changed = 0
    for seed, item in enumerate(plain.get_parsed_content("datalist")["training"] * 2):
        plain_chain.set_random_state(seed)
        on_chain.set_random_state(seed)
        a, b = plain_chain(dict(item)), on_chain(dict(item))
        assert torch.equal(a["label_np"], b["label_np"]) and torch.equal(a["hv_label"], b["hv_label"])
        assert 0.0 <= float(b["image"].min()) and float(b["image"].max()) <= 1.0
        changed += int(not torch.allclose(a["image"], b["image"]))
    assert changed >= 3


# --- the workflow ------------------------------------------------------------------------------------------


def test_smoke_training_selects_by_points_and_writes_the_model(tmp_path):
    parser = _train(tmp_path / "run")
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 4
    names = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert names == ["checkpoint_00000002.pt", "checkpoint_00000004.pt"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4]
    best = max(rows, key=lambda r: r["point_f1"])
    validator = parser.get_parsed_content("train#validator")
    assert validator.best == {"score": best["point_f1"], "iteration": best["iteration"]}
    # model.pt holds the selected weights: re-validating it reproduces the selected round's metrics
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    again = validator.validate()
    assert again["point_f1"] == pytest.approx(best["point_f1"]) and again["aji"] == pytest.approx(best["aji"])
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_bf16_channels_last_training_runs_and_evaluates(tmp_path):
    """What the ``cpu`` profile runs on CPUs with AMX: the network under bf16 autocast, losses and checkpoints fp32."""
    cpu = "$torch.device('cpu')"  # the CPU path also where a GPU is present
    parser = _train(tmp_path / "run", amp=True, device=cpu)
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer.network, Bf16Autocast) and trainer.scaler is None and trainer.state.iteration == 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4] and all(np.isfinite(r["point_f1"]) for r in rows)
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert list(saved) == list(ImageToMaskNet(**_smoke_network()).state_dict())  # the plain network's keys
    assert all(v.dtype == torch.float32 for v in saved.values() if v.is_floating_point())
    evaluation = parse_configs(
        TRAIN, SMOKE, EVALUATE, output_dir=str(tmp_path / "run"), amp=True, device=cpu, eval_section="all"
    )
    evaluation.get_parsed_content("evaluating")
    assert json.loads((tmp_path / "run" / "evaluation" / "metrics.json").read_text())["n_images"] == 4


def _smoke_network() -> dict:
    config = json.loads(SMOKE.read_text())["network_def"]
    return {k: v for k, v in config.items() if k != "_target_"}


def test_resume_continues_and_keeps_the_best_score(tmp_path):
    _train(tmp_path / "run")
    first = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    parser = _train(tmp_path / "run", iterations=8)
    assert parser.get_parsed_content("train#trainer").state.iteration == 8
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4, 6, 8]
    assert parser.get_parsed_content("train#validator").best["score"] == max(r["point_f1"] for r in rows)
    assert rows[:2] == first
    with pytest.raises(RuntimeError) as error:  # another recipe never continues this run
        _train(tmp_path / "run", iterations=10, np_touching_gap=1)
    assert isinstance(error.value.__cause__, ValueError)
    assert "settings differ from the checkpoint's (np_touching_gap 0 -> 1)" in str(error.value.__cause__)


def test_first_phase_trains_the_decoders_only(tmp_path):
    torch.manual_seed(0)
    net = ImageToMaskNet(features=(8, 16), blocks_per_stage=1)
    handler = FreezeEncoder(net, epochs=1)

    class _Engine:
        class state:  # noqa: N801
            epoch = 1

    handler(_Engine)
    assert not any(p.requires_grad for p in encoder_parameters(net))
    assert all(p.requires_grad for p in net.decoder_parameters())
    _Engine.state.epoch = 2
    handler(_Engine)
    assert all(p.requires_grad for p in net.parameters())
    # in the workflow: after epoch 1 (frozen) the encoder weights equal the initial ones, the decoders moved
    parser = parse_configs(TRAIN, SMOKE, output_dir=str(tmp_path / "run"), iterations=2, epoch_length=2)
    network = parser.get_parsed_content("network")
    start = {k: v.clone() for k, v in network.state_dict().items()}
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("training")
    enc = {id(p) for p in encoder_parameters(network)}
    named = dict(network.named_parameters())
    assert all(torch.equal(p, start[n]) for n, p in named.items() if id(p) in enc)
    assert any(not torch.equal(p, start[n]) for n, p in named.items() if id(p) not in enc)


def test_dense_upper_bound_may_select_on_labels_and_pseudo_must_not(tmp_path):
    parser = _train(tmp_path / "dense", training_data="dense", key_metric="aji")
    rows = [json.loads(line) for line in (tmp_path / "dense" / "metrics.jsonl").read_text().splitlines()]
    assert parser.get_parsed_content("train#validator").best["score"] == max(r["aji"] for r in rows)
    data = _data(tmp_path, labels=False)
    with pytest.raises(RuntimeError) as error:
        _train(tmp_path / "pseudo", data_dir=str(data), key_metric="aji")
    assert "needs labels for every validation tile" in str(error.value.__cause__)


def test_tiles_without_nuclei_train(tmp_path):
    data = _data(tmp_path)
    for path in (data / "points").glob("*.csv"):
        path.write_text("y,x\n")  # every tile without a point: pseudo masks are empty
    parser = _train(tmp_path / "run", data_dir=str(data))
    assert np.isfinite(float(parser.get_parsed_content("train#trainer").state.output["loss"].detach()))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path):
    _train(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in list_checkpoints(tmp_path / "run" / "checkpoints")}
    model = (tmp_path / "run" / "model.pt").read_bytes()
    nan_loss = "$lambda prediction, target: torch.tensor(float('nan'), requires_grad=True)"
    with pytest.raises(RuntimeError) as error:
        _train(tmp_path / "run", iterations=8, loss=nan_loss)
    assert isinstance(error.value.__cause__, TrainingDivergedError)
    assert "loss is nan at iteration 5" in str(error.value.__cause__)
    assert {p.name: p.read_bytes() for p in list_checkpoints(tmp_path / "run" / "checkpoints")} == before
    assert (tmp_path / "run" / "model.pt").read_bytes() == model


def test_evaluate_workflow_reports_and_rejects_a_foreign_model(tmp_path):
    _train(tmp_path / "run")
    parser = parse_configs(TRAIN, SMOKE, EVALUATE, output_dir=str(tmp_path / "run"), eval_section="all")
    parser.get_parsed_content("evaluating")
    report = json.loads((tmp_path / "run" / "evaluation" / "metrics.json").read_text())
    assert report["n_images"] == 4 and len(list((tmp_path / "run" / "evaluation" / "overlays").glob("*.png"))) == 4
    # the report's numbers are those of the saved model on each tile
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True))
    item = evaluation_items(SAMPLE, "all")[0]
    prediction = TilePredictor(network, roi_size=64).predict_item(item)
    expected = instance_metrics(prediction, load_label(Path(item["label"])))
    assert report["per_image"][item["name"]]["aji"] == pytest.approx(expected["aji"])
    torch.save(ImageToMaskNet(features=(8, 16, 32), blocks_per_stage=1).state_dict(), tmp_path / "other.pt")
    parser = parse_configs(
        TRAIN, SMOKE, EVALUATE, output_dir=str(tmp_path / "run"), model_path=str(tmp_path / "other.pt")
    )
    with pytest.raises(RuntimeError) as error:
        parser.get_parsed_content("evaluating")
    assert "other.pt: the weights do not match the configured segmentation model" in str(error.value.__cause__)


# --- the main job ------------------------------------------------------------------------------------------


def test_main_job_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "results"
    pipeline(output=str(out), profile="smoke", refine_rounds=1)
    summary = json.loads((out / "metrics.json").read_text())
    for name in ("summary.png", "metrics.md", "metrics.json", "evaluation/metrics.json", "segmentation/model.pt"):
        assert (out / name).is_file(), name
    assert (out / "refine" / "model.pt").is_file() and (out / "refine" / "refined_labels" / "datalist.json").is_file()
    assert set(summary["seconds"]) == {
        "1/5 mask -> image GAN", "2/5 synthesize", "3/5 segmenter", "4/5 refine",
        "5/5 evaluate ours (synthetic pairs)", "5/5 evaluate ours (synthetic pairs, refined)",
    }  # fmt: skip
    assert 0.0 <= summary["validation_mean"]["aji"] <= 1.0
    assert summary["validation_mean"] == summary["validation"]["ours (synthetic pairs, refined)"]
    picture = Image.open(out / "summary.png")
    assert picture.size == (4 * 260 + 4, 16 + 3 * 260 + 4)  # 3 rows x (points, mask, synthetic, prediction)
    assert "| ours (synthetic pairs) | 1 |" in (out / "metrics.md").read_text()
    assert "| ours (synthetic pairs, refined) | 1 |" in (out / "metrics.md").read_text()
    manifest = json.loads((out / "synthetic" / "manifest.json").read_text())
    assert manifest["colour_match"]["method"] == "reinhard"  # the default since 0.10.0: real tiles' colours
    images = sorted((out / "synthetic" / "images").glob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in images}
    pipeline(output=str(out), profile="smoke", refine_rounds=1)  # again: every stage resumes, nothing is redone
    assert sorted((out / "synthetic" / "images").glob("*.png")) == images
    assert {p: p.stat().st_mtime_ns for p in images} == stamps
    with pytest.raises(SystemExit, match="profile must be one of"):
        pipeline(output=str(out), profile="huge")
    with pytest.raises(SystemExit, match="colour_match must be one of"):
        pipeline(output=str(out), profile="smoke", colour_match="macenko")
    with pytest.raises(SystemExit, match="data folder not found"):
        pipeline(data=str(tmp_path / "missing"), output=str(out), profile="smoke")


def test_main_job_with_two_refine_rounds(tmp_path, monkeypatch):
    """The default: two rounds. Round 1's student teaches round 2 and round 2's student starts from it; the last round
    is the result, every round is evaluated."""
    import hashlib

    import scripts.engines.refine as refine_engine

    inits, initialise = [], refine_engine.initialise_student

    def recording_initialise(student, teacher_path, init="scratch"):
        inits.append((Path(teacher_path).parent.name, init))
        initialise(student, teacher_path, init)

    monkeypatch.setattr(refine_engine, "initialise_student", recording_initialise)
    out = tmp_path / "results"
    pipeline(output=str(out), profile="smoke")
    assert inits == [("segmentation", "scratch"), ("refine_round1", "teacher")]
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["seconds"]) == {
        "1/6 mask -> image GAN", "2/6 synthesize", "3/6 segmenter", "4/6 refine (round 1)", "5/6 refine (round 2)",
        "6/6 evaluate ours (synthetic pairs)", "6/6 evaluate ours (synthetic pairs, refined) round 1",
        "6/6 evaluate ours (synthetic pairs, refined) round 2",
    }  # fmt: skip
    first = hashlib.md5((out / "refine_round1" / "model.pt").read_bytes()).hexdigest()
    assert json.loads((out / "refine" / "refined_labels" / "teacher.json").read_text())["md5"] == first
    assert summary["validation_mean"] == summary["validation"]["ours (synthetic pairs, refined) round 2"]
    assert (out / "evaluation_refine_round1" / "metrics.json").is_file()
    # --refine False: the segmenter of synthetic pairs is the result, no refine folder
    pipeline(output=str(tmp_path / "segmenter_only"), profile="smoke", refine=False)
    summary = json.loads((tmp_path / "segmenter_only" / "metrics.json").read_text())
    assert set(summary["validation"]) == {"ours (synthetic pairs)"}
    assert not (tmp_path / "segmenter_only" / "refine").exists()
    for rounds, refine in ((0, True), (2, False)):
        with pytest.raises(SystemExit, match="refine_rounds"):
            pipeline(output=str(out), profile="smoke", refine=refine, refine_rounds=rounds)


@pytest.mark.slow
def test_compare_and_coherence_write_their_tables(tmp_path):
    from scripts.cli.compare import coherence, compare

    out = tmp_path / "compare"
    compare(data=str(SAMPLE), output=str(out), profile="smoke", rows="upper,c_real,c_real_pseudo,c_real_matched")
    seed0 = out / "seed0"
    table = (seed0 / "comparison.md").read_text()
    assert "| upper bound: real images + dense labels | 1 |" in table and "| (c) ours, real points | 1 |" in table
    assert "| (c) ours, real points, + pseudo masks on the real images | 1 |" in table
    assert "| (c) ours, real points, colours of real training tiles (Reinhard) | 1 |" in table
    # the two plain (c) rows share their pairs; the colour-matched row renders its own with the same GAN
    assert sorted(p.name for p in seed0.glob("synthetic_*")) == ["synthetic_c_real", "synthetic_c_real_reinhard"]
    matched = json.loads((seed0 / "synthetic_c_real_reinhard" / "manifest.json").read_text())
    assert matched["colour_match"]["method"] == "reinhard" and len(matched["colour_match"]["targets"]) == 3
    upper = json.loads((seed0 / "upper" / "evaluation" / "metrics.json").read_text())
    scores = json.loads((out / "comparison.json").read_text())["upper bound: real images + dense labels"]
    assert scores["mean"] == pytest.approx(upper["mean"]) and scores["spread"]["aji"] == 0.0
    assert scores["minutes_per_seed"][0] > 0
    synthetic = json.loads((seed0 / "synthetic_c_real" / "datalist.json").read_text())["training"]
    assert len(synthetic) == 3 * 2 * 2  # 3 training tiles x 2 masks x 2 draws

    # two seeds: seed 0's row is reused, seed 1 trains; the table gives the mean over seeds and their spread
    compare(data=str(SAMPLE), output=str(out), profile="smoke", rows="upper", seeds=(0, 1))
    other = json.loads((out / "seed1" / "upper" / "evaluation" / "metrics.json").read_text())["mean"]["aji"]
    scores = json.loads((out / "comparison.json").read_text())["upper bound: real images + dense labels"]
    assert scores["per_seed"]["aji"] == pytest.approx([upper["mean"]["aji"], other])
    assert scores["mean"]["aji"] == pytest.approx((upper["mean"]["aji"] + other) / 2)
    assert scores["spread"]["aji"] == pytest.approx(abs(upper["mean"]["aji"] - other))
    assert "AJI seed 1" in (out / "comparison.md").read_text()
    with pytest.raises(SystemExit, match="seeds must be"):
        compare(data=str(SAMPLE), output=str(out), profile="smoke", rows="upper", seeds="0,zero")
    coherence(data=str(SAMPLE), output=str(out), profile="smoke", gans=f"c={seed0 / 'gan_c'}")
    result = json.loads((out / "coherence.json").read_text())["(c) ablation_c_full"]
    assert 0.0 <= result["mean"]["object_dice"] <= 1.0
    # G(S) of the single validation tile, scored against S itself
    names = json.loads((out / "coherence_c" / "evaluation" / "metrics.json").read_text())["per_image"]
    assert list(names) == ["TCGA-G9-6336-01Z-00-DX1_y500_x200_m0_z0"]
    # the run's newest checkpoint instead of best.pt, under a suffixed name
    gans = f"c_last={seed0 / 'gan_c'}"
    coherence(data=str(SAMPLE), output=str(out), profile="smoke", gans=gans, gan_checkpoint="last")
    manifest = json.loads((out / "coherence_c_last" / "synthetic" / "manifest.json").read_text())
    newest = sorted((seed0 / "gan_c" / "checkpoints").glob("checkpoint_*.pt"))[-1]
    assert Path(manifest["generator_checkpoint"]) == newest
    assert "(c_last) ablation_c_full" in json.loads((out / "coherence.json").read_text())
    with pytest.raises(SystemExit, match="GAN names must be a, b or c"):
        coherence(data=str(SAMPLE), output=str(out), profile="smoke", gans=f"d={seed0 / 'gan_c'}")
    with pytest.raises(SystemExit, match="best.pt: not found"):  # a given GAN folder is used as is, never trained
        compare(data=str(SAMPLE), output=str(tmp_path / "other"), rows="c_real", gan_c=str(tmp_path / "no_gan"))
    with pytest.raises(SystemExit, match="gan_checkpoint must be .best., .last. or an iteration"):
        compare(data=str(SAMPLE), output=str(out), rows="c_real", gan_checkpoint="newest")
    with pytest.raises(SystemExit, match="unknown rows"):
        compare(data=str(SAMPLE), output=str(out), rows="upper,best")


def test_main_job_checks_the_whole_folder_before_the_first_stage(tmp_path):
    """Problems that a later stage would meet (labels, tile sizes) stop the main job before the GAN, all listed."""
    data = _data(tmp_path)
    names = sorted(p.stem for p in (data / "images").glob("*.png"))
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(data / "labels" / f"{names[0]}.png")  # a colour label
    small = np.asarray(Image.open(data / "images" / f"{names[1]}.png"))[:48, :48]
    Image.fromarray(small).save(data / "images" / f"{names[1]}.png")  # below the smoke GAN's 64 px crop
    (data / "points" / f"{names[1]}.csv").write_text("y,x\n10,10\n")
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as stop:
        pipeline(data=str(data), output=str(out), profile="smoke")
    message = str(stop.value)
    assert "nothing was run" in message and "smaller than the 64 px training crop" in message
    assert f"{names[0]}.png: label has shape" in message
    assert not out.exists()


def test_evaluating_from_the_command_line(tmp_path):
    """The README's ``run evaluating`` in a fresh process (evaluate.json's own imports replace train.json's: the
    settings check must still resolve), on the embedded sample with the shipped model."""
    import subprocess
    import sys

    configs = str([str(TRAIN), str(CONFIGS / "train_cpu.json"), str(EVALUATE)])
    command = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", configs]
    command += ["--data_dir", str(SAMPLE), "--model_path", str(REPO / "bundle" / "models" / "model.pt")]
    command += ["--output_dir", str(tmp_path), "--eval_section", "all", "--flip_tta", "False"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics["n_images"] == 4 and metrics["mean"]["aji"] > 0.3


_HAEMATOXYLIN_TEACHER = {"refine_outlines": "haematoxylin", "refine_student_init": "teacher"}


def test_every_synthetic_row_has_its_gan_folder_and_pairs():
    """Rows of one GAN share its run folder; rows with other synthesis settings or GANs get their own pairs."""
    from scripts.cli.compare import (
        FINE_TUNED_CHAINS,
        GANS,
        REFINED,
        ROWS,
        SEGMENTER,
        SYNTHESIS,
        refine_settings,
        with_teachers,
    )
    from scripts.engines.refine import OUTLINES, STUDENT_INIT
    from transforms.point_labels import POINTLESS

    pairs = {}
    for row, (_, _, ablation, points) in ROWS.items():
        if ablation is None:
            continue
        assert ablation in GANS and (REPO / "bundle" / "configs" / ablation).is_file()
        key = (ablation, points, tuple(sorted(SYNTHESIS.get(row, {}).items())))
        pairs.setdefault(key, []).append(row)
    assert pairs[("ablation_c_full.json", "real", ())] == ["c_real", "c_real_plain", "c_real_pseudo"]
    assert len(set(GANS.values())) == len(GANS)
    # every refined row names a row as its teacher, and settings refine.json has, with values it accepts
    refine = json.loads((REPO / "bundle" / "configs" / "refine.json").read_text())
    accepted = {"refine_outlines": OUTLINES, "refine_pointless": POINTLESS, "refine_student_init": STUDENT_INIT}
    for row, (teacher, settings) in REFINED.items():
        assert ROWS[row][1] == "refined" and teacher in ROWS
        assert all(key in refine and value in accepted[key] for key, value in settings.items()), row
    # every segmenter setting names an id of train.json + train_cpu.json ("a#b": b inside a)
    train_cpu = parse_configs(TRAIN, CONFIGS / "train_cpu.json")
    assert all(key in train_cpu for settings in SEGMENTER.values() for key in settings), SEGMENTER
    assert set(SEGMENTER) <= set(ROWS)
    assert REFINED["c_refined_bg"] == ("c_real", {"refine_outlines": "haematoxylin", "refine_pointless": "background"})
    assert REFINED["c_matched_refined"][0] == "c_real_matched"
    # a second round brings its whole chain of teachers, each before its student, and reuses one already listed
    assert with_teachers(["c_matched_refined3"]) == [
        "c_real_matched", "c_matched_refined", "c_matched_refined2", "c_matched_refined3"
    ]  # fmt: skip
    assert with_teachers(["c_real", "upper", "c_refined2"]) == ["c_real", "upper", "c_refined", "c_refined2"]
    chain = ["c_matched_refined2", "c_matched_refined3", "c_matched_refined4"]
    assert with_teachers(["c_matched_refined4"])[-3:] == chain
    # the fine-tuned rounds: the student starts from its teacher and trains the main job's later-round schedule
    all_fine_tuned = [f"c_matched_ft{k}" for k in FINE_TUNED_CHAINS["c_matched_ft"][0]]
    assert with_teachers(all_fine_tuned[-1:]) == ["c_real_matched", *all_fine_tuned]
    for row in ("c_refined2_ft", *(f"c_matched_refined{k}" for k in range(3, 9)), *all_fine_tuned):
        cpu = refine_settings(row, "cpu")
        assert cpu["refine_student_init"] == "teacher" and cpu["iterations"] == 700 and row not in SEGMENTER, row
        assert "iterations" not in refine_settings(row, "smoke")  # the smoke schedule as it is
    assert "iterations" not in refine_settings("c_matched_refined2", "cpu")  # a student from scratch: full schedule
    short = [f"c_matched_short{k}" for k in range(1, 4)]
    assert with_teachers(short[-1:]) == ["c_real_matched", *short]
    for row in short:  # the short chain's own schedule on cpu, the profile's elsewhere
        assert refine_settings(row, "cpu") == {**_HAEMATOXYLIN_TEACHER, "iterations": 400}
        assert refine_settings(row, "smoke") == _HAEMATOXYLIN_TEACHER
