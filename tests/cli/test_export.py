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
"""Deployment: TorchScript export through MONAI's CLI, verify_net_in_out / verify_metadata (offline), the
self-contained bundle export, the single-tensor wrapper, and MONAI Deploy's MonaiBundleInferenceOperator contract.

No ``from __future__ import annotations``: a module below is TorchScript-scripted.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.utils import ensure_tuple
from PIL import Image
from torch import nn

from networks import HoVerNetSingleOutput, HoVerUNet
from scripts.__main__ import _commands
from scripts.cli.export import (
    EXPORT_MARKER,
    INFERENCE_CONFIGS,
    SCHEMA,
    SCHEMA_MD5,
    ExportError,
    code_closure,
    export,
    export_bundle,
    is_export,
)
from scripts.engines.checkpoint import load_network_weights
from scripts.inference.predict import TilePredictor
from tests.helpers import REPO, save_random_segmenter
from transforms import HoVerNetInstances, HVMap, TensorInstances, split_output

CONFIGS = REPO / "bundle" / "configs"
META = CONFIGS / "metadata.json"
INFERENCE = CONFIGS / "inference.json"
TILES = sorted((REPO / "bundle" / "sample_data" / "images").glob("*.png"))
NP, HV = "nucleus_prediction", "horizontal_vertical"
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}


def _run(args: list, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{args[:4]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def _eager(weights: Path) -> nn.Module:
    """``network_def`` of inference.json with the weights, in eval mode."""
    network = ConfigParser(ConfigParser.load_config_files([INFERENCE])).get_parsed_content("network_def")
    return load_network_weights(network, weights).eval()


def _tile(index: int = 0) -> np.ndarray:
    return np.array(Image.open(TILES[index]).convert("RGB"), dtype=np.uint8)  # (H, W, 3)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_random_segmenter(tmp_path_factory.mktemp("weights") / "model.pt")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, weights) -> Path:
    return export_bundle(weights, tmp_path_factory.mktemp("dist") / "pointsynth_nuclei_bundle", zip_file=True)


_OFFLINE_CLI = """
import json, runpy, socket, sys
def no_network(*args, **kwargs):
    raise OSError("network disabled by the test")
socket.socket.connect = socket.socket.connect_ex = socket.create_connection = no_network
import monai.apps.utils
monai.apps.utils._download_with_progress = no_network
for argv in json.loads(sys.argv[1]):
    sys.argv = ["monai.bundle", *argv]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
    print("=== done:", argv[0], flush=True)
"""


@pytest.fixture(scope="module")
def monai_cli(tmp_path_factory, weights) -> tuple[Path, str]:
    """The documented ``python -m monai.bundle`` commands, run by MONAI's CLI entry in one process without network:
    ckpt_export, verify_net_in_out and (with jsonschema) verify_metadata against the shipped schema."""
    ts = tmp_path_factory.mktemp("ts") / "model.ts"
    commands = [
        ["ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file", str(weights), "--meta_file", str(META),
         "--config_file", str(INFERENCE)],
        ["verify_net_in_out", "network_def", "--meta_file", str(META), "--config_file", str(INFERENCE), "--device",
         "cpu"],
    ]  # fmt: skip
    if importlib.util.find_spec("jsonschema") is not None:
        schema = ["--filepath", str(CONFIGS / SCHEMA), "--hash_val", SCHEMA_MD5]
        commands.append(["verify_metadata", "--meta_file", str(META), *schema])
    out = _run([sys.executable, "-c", _OFFLINE_CLI, json.dumps(commands)])
    log = out.stdout + out.stderr
    assert [line.split()[-1] for line in log.splitlines() if line.startswith("=== done:")] == [c[0] for c in commands]
    return ts, log


def test_ckpt_export_cli_matches_eager(monai_cli, weights):
    ts, log = monai_cli
    assert "exported to file" in log
    with zipfile.ZipFile(ts) as z:
        assert {"model/extra/metadata.json", "model/extra/inference.json"} <= set(z.namelist())
    scripted, eager = torch.jit.load(str(ts)).eval(), _eager(weights)
    bare = load_network_weights(HoVerUNet(), weights).eval()
    for size in (64, 256):
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            expected, got, out = eager(x), scripted(x), bare(x)
        assert got.shape == (2, 4, size, size)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(expected, torch.cat([out[NP], out[HV]], dim=1))  # the documented channel order


def test_verify_net_in_out_cli(monai_cli):
    assert "data shape of network is verified with no error" in monai_cli[1]


def test_hovernet_override_loads_paper_scale_weights():
    """inference_hovernet.json: network_def wraps MONAI HoVerNet, whose weights from train.json load unchanged."""
    from monai.networks.nets import HoVerNet

    files = [INFERENCE, CONFIGS / "inference_hovernet.json"]
    network = ConfigParser(ConfigParser.load_config_files(files)).get_parsed_content("network_def")
    assert isinstance(network, HoVerNetSingleOutput) and isinstance(network.network, HoVerNet)
    trained = ConfigParser(ConfigParser.load_config_files([CONFIGS / "train.json"])).get_parsed_content("network_def")
    assert list(network.state_dict()) == list(trained.state_dict())
    network.load_state_dict(trained.state_dict())


def test_verify_metadata_offline(monai_cli, monkeypatch, tmp_path):
    pytest.importorskip("jsonschema", reason="verify_metadata needs jsonschema (not a project dependency yet)")
    assert "metadata is verified with no error" in monai_cli[1]  # the CLI command, in a process without network
    import socket

    import monai.apps.utils
    from monai.bundle import verify_metadata

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(monai.apps.utils, "_download_with_progress", no_network)
    schema = CONFIGS / SCHEMA
    verify_metadata(meta_file=str(META), filepath=str(schema), hash_val=SCHEMA_MD5)
    with pytest.raises((OSError, RuntimeError), match="network disabled"):  # without the file: a download
        verify_metadata(meta_file=str(META), filepath=str(tmp_path / "schema.json"))
    broken = json.loads(META.read_text())
    del broken["network_data_format"]["inputs"]["image"]["value_range"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="value_range"):
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(schema), hash_val=SCHEMA_MD5)


def test_export_writes_self_contained_bundle(exported, weights):
    for rel in ("configs/inference.json", "configs/deploy.json", "configs/metadata.json", f"configs/{SCHEMA}",
                "models/model.pt", "models/model.ts", "docs/README.md", "LICENSE", "transforms/__init__.py",
                "networks/mask_net.py", "networks/single_output.py", "transforms/postprocess.py"):  # fmt: skip
        assert (exported / rel).is_file(), rel
    assert json.loads((exported / "configs" / "inference.json").read_text())["bundle_root"] == "."
    assert not list(exported.rglob("__pycache__"))
    assert sorted(p.name for p in exported.parent.iterdir()) == [exported.name, exported.name + ".zip"]  # no temp
    with zipfile.ZipFile(exported / "models" / "model.ts") as z:
        assert {f"model/extra/{n}.json" for n in ("metadata", "inference", "deploy")} <= set(z.namelist())
    with zipfile.ZipFile(exported.parent / (exported.name + ".zip")) as z:
        names = z.namelist()
    assert f"{exported.name}/models/model.ts" in names and f"{exported.name}/networks/single_output.py" in names
    bundle_weights = torch.load(exported / "models" / "model.pt", weights_only=True)
    source = torch.load(weights, weights_only=True)
    assert list(bundle_weights) == list(source) and all(torch.equal(bundle_weights[k], source[k]) for k in source)


_FROM_BUNDLE = """
import sys
import numpy as np, torch
bundle, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, bundle)
import scripts, networks, transforms
for module in (scripts, networks, transforms):
    assert module.__file__.startswith(bundle), module.__file__
from monai.bundle import ConfigParser
parser = ConfigParser()
parser.read_config(f"{bundle}/configs/inference.json")
parser.read_meta(f"{bundle}/configs/metadata.json")
parser["bundle_root"] = bundle
network = parser.get_parsed_content("network").eval()
network.load_state_dict(torch.load(parser.get_parsed_content("model_path"), weights_only=True))
x = torch.from_numpy(np.load(f"{out}/x.npy"))
with torch.no_grad():
    np.save(f"{out}/eager.npy", network(x).numpy())
    np.save(f"{out}/ts.npy", torch.jit.load(f"{bundle}/models/model.ts").eval()(x).numpy())
"""


def test_exported_bundle_works_without_the_repository(exported, weights, tmp_path):
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "x.npy", x.numpy())
    _run([sys.executable, "-c", _FROM_BUNDLE, exported, tmp_path], cwd=tmp_path)  # cwd != repo, no PYTHONPATH
    with torch.no_grad():
        expected = _eager(weights)(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "eager.npy"), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "ts.npy"), expected, rtol=1e-4, atol=1e-5)


def test_export_bad_input_leaves_nothing(weights, tmp_path, monkeypatch, capsys):
    assert _commands()["export"] is export
    bad = tmp_path / "other.pt"
    torch.save(HoVerUNet(features=(8, 16, 32, 64, 128, 8)).state_dict(), bad)
    with pytest.raises(SystemExit) as stop:  # python -m scripts export --model other.pt --output dist/b
        export(model=str(bad), output=str(tmp_path / "dist" / "b"), zip=True)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "do not match the configured model" in err and "shape mismatches" in err
    with pytest.raises(ExportError, match="weights not found"):
        export_bundle(tmp_path / "missing.pt", tmp_path / "dist" / "b")
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())

    def fail(*args, **kwargs):
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr("scripts.cli.export._export_torchscript", fail)  # fails after configs, code and model.pt
    with pytest.raises(RuntimeError, match="mid-export"):
        export_bundle(weights, tmp_path / "dist" / "b", zip_file=True)
    assert not list((tmp_path / "dist").iterdir())  # neither the folder nor a temporary one nor a zip
    (tmp_path / "dist" / "b").mkdir()
    with pytest.raises(ExportError, match="--overwrite"):
        export_bundle(weights, tmp_path / "dist" / "b")


def test_overwrite_replaces_only_an_earlier_export(exported, weights, tmp_path):
    """``--overwrite`` never deletes a user's folder (or the repository): only a folder an export wrote."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "my_notes.txt").write_text("years of work")
    for target in (notes, REPO, Path(".")):
        with pytest.raises(ExportError, match="not a bundle folder written by `export`"):
            export_bundle(weights, target, overwrite=True)
    assert (notes / "my_notes.txt").read_text() == "years of work" and (REPO / "README.md").is_file()
    assert is_export(exported) and (exported / EXPORT_MARKER).is_file()
    again = tmp_path / "again"
    shutil.copytree(exported, again)
    (again / "models" / "model.ts").write_bytes(b"stale")
    export_bundle(weights, again, overwrite=True)
    assert (again / "models" / "model.ts").read_bytes() != b"stale"


class _Oracle(nn.Module):
    """A HoVerNet-style network whose outputs are those of a known instance label."""

    def __init__(self, np_logits: torch.Tensor, hv: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("np_logits", np_logits)
        self.register_buffer("hv", hv)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = x.shape[0]
        return {
            "nucleus_prediction": self.np_logits.expand(b, -1, -1, -1),
            "horizontal_vertical": self.hv.expand(b, -1, -1, -1),
        }


def test_single_tensor_wrapper_round_trip():
    label = np.asarray(Image.open(REPO / "bundle" / "sample_data" / "labels" / TILES[0].name)).astype(np.int32)
    foreground = torch.from_numpy(label > 0).float()
    logits = torch.stack([4.0 - 8.0 * foreground, 8.0 * foreground - 4.0])
    oracle = _Oracle(logits, torch.as_tensor(HVMap()(label[None]), dtype=torch.float32)).eval()
    wrapped = torch.jit.script(HoVerNetSingleOutput(oracle).eval())
    x = torch.zeros(1, 3, *label.shape)
    with torch.no_grad():
        reference, single = oracle(x), wrapped(x)
    assert single.shape == (1, 4, *label.shape)
    assert all(torch.equal(split_output(single)[k], reference[k]) for k in (NP, HV))
    expected = HoVerNetInstances().from_output({k: v[0] for k, v in reference.items()})
    got = TensorInstances()(single[0]).numpy()
    assert expected.max() > 20  # a real instance map, not an empty one
    np.testing.assert_array_equal(got, expected)
    # the state dict is the wrapped network's: weights load both ways
    net = HoVerUNet()
    wrapper = HoVerNetSingleOutput(HoVerUNet())
    assert list(wrapper.state_dict()) == list(net.state_dict())
    wrapper.load_state_dict(net.state_dict())
    net.load_state_dict(wrapper.state_dict())
    with pytest.raises(ValueError, match="4, H, W"):
        split_output(torch.zeros(1, 2, 8, 8))


def _operator_contract(ts: Path, tmp_path: Path) -> tuple:
    """What MonaiBundleInferenceOperator does with ``model.ts``: parse its embedded metadata and configs (ids device,
    inferer, preprocessing, postprocessing), drop LoadImage, pre-process, infer, keep ensure_tuple(output)[0],
    post-process under the output name."""
    with zipfile.ZipFile(ts) as z:
        meta = json.loads(z.read("model/extra/metadata.json"))
        for name in ("inference", "deploy"):
            (tmp_path / f"{name}.json").write_bytes(z.read(f"model/extra/{name}.json"))
    parser = ConfigParser()
    parser.read_meta(f=meta)
    parser.read_config([tmp_path / "inference.json", tmp_path / "deploy.json"])
    parser.parse()
    inputs, outputs = meta["network_data_format"]["inputs"], meta["network_data_format"]["outputs"]
    assert list(inputs) == ["image"] and list(outputs) == ["pred"] and outputs["pred"]["type"] == "image"
    device = parser.get_parsed_content("device")
    inferer = parser.get_parsed_content("inferer")
    pre, post = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")
    pre.transforms = tuple(t for t in pre.transforms if "LoadImage" not in type(t).__name__)
    data = pre({"image": MetaTensor(torch.from_numpy(_tile()))})  # the operator's Image input: (H, W, 3) uint8
    x = data.pop("image")[None].to(device)
    with torch.no_grad():
        raw = inferer(inputs=x, network=torch.jit.load(str(ts), map_location=device).eval())
    pred = ensure_tuple(raw)[0]
    assert pred.shape[0] == outputs["pred"]["num_channels"]
    return pred, post({"pred": pred, **data})["pred"]


def test_deploy_operator_contract(exported, weights, tmp_path):
    pred, instances = _operator_contract(exported / "models" / "model.ts", tmp_path)
    network = _eager(weights).network  # the dictionary network, as the tile workflow uses it
    predictor = TilePredictor(network)
    image = torch.from_numpy(_tile()).permute(2, 0, 1)
    reference = predictor.outputs(image)
    torch.testing.assert_close(pred, torch.cat([reference[NP], reference[HV]]), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(instances), predictor(image)[None])
    assert isinstance(ensure_tuple({NP: pred})[0], str)  # why the network must return one tensor, not a dict
    # the bundle's own `inference` (inference.json) finds the same nuclei as the Deploy operator (one post-processing)
    parser = ConfigParser(ConfigParser.load_config_files([INFERENCE]))
    parser.update({"model_path": str(weights), "input": str(TILES[0]), "output_dir": str(tmp_path / "bundle")})
    parser["outputs"] = ["label"]
    parser["amp"] = False  # the operator runs float32; a 256 px tile is one window in both
    summary = parser.get_parsed_content("evaluator").run()
    bundle = np.asarray(Image.open(summary["images"][0]["outputs"]["label"])).astype(np.int64)
    assert bundle.max() == np.asarray(instances).max() > 0
    np.testing.assert_array_equal(bundle > 0, np.asarray(instances)[0] > 0)


def _deploy_python() -> str | None:
    """A Python that imports monai-deploy-app-sdk: this one, or ``POINTSYNTH_DEPLOY_PYTHON``."""
    if importlib.util.find_spec("monai.deploy") is not None:
        return sys.executable
    return os.environ.get("POINTSYNTH_DEPLOY_PYTHON") or None


def test_deploy_app(exported, weights, tmp_path):
    python = _deploy_python()
    if python is None:
        pytest.skip("monai-deploy-app-sdk is not importable (pip install '.[deploy]', or set POINTSYNTH_DEPLOY_PYTHON)")
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for path in TILES[:2]:
        shutil.copy(path, tiles / path.name)
    _run([python, "-m", "scripts.apps.deploy_app", "-i", tiles, "-o", tmp_path / "out", "-m", "models/model.ts"],
         cwd=exported)  # fmt: skip
    predictor = TilePredictor(_eager(weights).network)
    for index, path in enumerate(TILES[:2]):
        got = np.asarray(Image.open(tmp_path / "out" / f"{path.stem}_instances.png")).astype(np.int32)
        np.testing.assert_array_equal(got, predictor(torch.from_numpy(_tile(index)).permute(2, 0, 1)))


def test_export_ships_only_the_inference_code(exported):
    shipped = {p.relative_to(exported).as_posix() for p in exported.rglob("*.py")}
    assert {"scripts/inference/infer.py", "scripts/apps/deploy_app.py", "scripts/apps/label_app/main.py"} <= shipped
    assert not [p for p in shipped if p.startswith(("scripts/bench/", "scripts/cli/"))]
    assert not [p for p in shipped if p.endswith(("cyclegan.py", "synthesize.py", "compare.py", "segmentation.py"))]
    assert sorted(p.name for p in (exported / "configs").glob("*.json")) == sorted(
        n for n in INFERENCE_CONFIGS if n.endswith(".json")
    )


def test_code_closure_follows_imports_and_packages():
    files = {p.relative_to(REPO).as_posix() for p in code_closure(["scripts.inference.predict"])}
    assert {"scripts/__init__.py", "scripts/inference/__init__.py", "scripts/inference/predict.py"} <= files
    assert {"transforms/__init__.py", "transforms/postprocess.py", "scripts/runtime/process.py"} <= files
    assert not [f for f in files if f.startswith(("scripts/cli/", "scripts/bench/", "scripts/engines/cyclegan"))]
