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
"""Export a trained segmenter as a self-contained MONAI bundle folder (and zip).

``python -m scripts export --model bundle/models/model.pt --output dist/pointsynth_nuclei_bundle [--zip]``

The folder holds ``configs/`` (``inference.json`` merged with any ``--config_file`` overrides, ``bundle_root`` set to
``"."``; the metadata schema in ``configs/schema/``), ``models/model.pt`` (the weights as a bare state dict) and
``models/model.ts`` (TorchScript through MONAI's ``ckpt_export``, with ``metadata.json``, ``inference.json`` and
``deploy.json`` embedded, as MONAI Deploy reads them), ``docs/``, ``LICENSE`` and the code that inference, the
MONAI Deploy app and the MONAI Label app import (:func:`code_closure`: ``transforms/``, ``networks/`` and the part of
``scripts/`` they need; no training, benchmark or command-line code): with the bundle root on ``sys.path`` (the
working directory of ``python -m monai.bundle run``, MONAI Label, MONAI Deploy with a bundle folder) no checkout is
needed.

Everything is written in a temporary folder beside the output and renamed at the end: on any error (missing model
file, weights that do not match ``network_def``, a failed TorchScript check) nothing is left behind.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import sys
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from scripts import CODE_ROOT as REPO
from scripts import source_root
from scripts.engines.checkpoint import load_network_weights

__all__ = [
    "CODE_PACKAGES",
    "EXPORT_MARKER",
    "INFERENCE_CONFIGS",
    "is_export",
    "SCHEMA",
    "code_closure",
    "SCHEMA_MD5",
    "ExportError",
    "export",
    "export_bundle",
]

CODE_PACKAGES = ("transforms", "networks", "scripts")
# what an exported bundle runs: the inference configs and the apps; their code closure is what ships of ``scripts/``
INFERENCE_CONFIGS = (
    "inference.json",
    "inference_hovernet.json",
    "multi_gpu_inference.json",
    "deploy.json",
    "metadata.json",
    "logging.conf",
)
APP_MODULES = ("scripts.apps.deploy_app", "scripts.apps.label_app.main")
EXPORT_MARKER = ".pointsynth-export"  # written into every exported folder: `--overwrite` replaces only such folders
_EXPORT_TOP_LEVEL = {"configs", "models", "docs", "LICENSE", "transforms", "networks", "scripts", EXPORT_MARKER}
SCHEMA = "schema/meta_schema_20240725.json"  # under configs/: MONAI's bundle metadata schema, verbatim
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"
EMBEDDED_CONFIGS = ("inference.json", "deploy.json")  # inside model.ts: what MonaiBundleInferenceOperator parses


class ExportError(ValueError):
    """The bundle cannot be exported (bad arguments, model file or weights); nothing was written."""


def export_bundle(
    model: str | os.PathLike,
    output: str | os.PathLike,
    zip_file: bool = False,
    config_file: str | Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the bundle folder ``output`` (and ``output.zip`` with ``zip_file``) for the weights ``model``.

    Args:
        model: weights of ``network_def``: a bare state dict (``model.pt``) or a training checkpoint (``network``).
        output: the bundle folder to create.
        zip_file: also write ``<output>.zip`` (one top folder named like ``output``).
        config_file: override files merged over ``inference.json`` (e.g. ``inference_hovernet.json``).
        overwrite: replace an existing ``output`` (and zip) that an earlier export wrote (recognised by its
            :data:`EXPORT_MARKER` file, or by ``configs/inference.json`` + ``models/model.pt`` + ``models/model.ts``
            and nothing else at its top level but what an export writes); any other folder or file is refused, so
            that no user file is ever deleted.

    Returns:
        the bundle folder.

    Raises:
        ExportError: missing model file, weights that do not fit ``network_def``, an existing output, or exported
            outputs that differ from the eager network's.
    """
    src = source_root()
    output = Path(output).resolve()
    archive = output.parent / f"{output.name}.zip"
    targets = [output] + ([archive] if zip_file else [])
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise ExportError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace.")
    if output.exists() and not is_export(output):
        raise ExportError(
            f"{output} exists and is not a bundle folder written by `export`; --overwrite only replaces an earlier "
            "export. Choose another --output (nothing was deleted)."
        )
    if zip_file and archive.exists() and not _is_export_zip(archive, output.name):
        raise ExportError(f"{archive} exists and is not an exported bundle zip; choose another --output.")
    overrides = [Path(f) for f in ([config_file] if isinstance(config_file, str) else list(config_file or []))]
    missing = [str(f) for f in overrides if not f.is_file()]
    if missing:
        raise ExportError(f"override config file(s) not found: {', '.join(missing)}.")
    config = ConfigParser.load_config_files([src / "configs" / "inference.json", *overrides])
    config["bundle_root"] = "."

    network = _network_def(config)
    try:
        load_network_weights(network, model, key="network")
    except ValueError as e:
        raise ExportError(str(e)) from None

    output.parent.mkdir(parents=True, exist_ok=True)
    for stale in output.parent.glob(f".{output.name}.*.tmp*"):  # left by a killed export
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    tmp = output.parent / f".{output.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp_zip = tmp.with_name(tmp.name + ".zip")
    try:
        _write_folder(tmp, src, config, network)
        if zip_file:
            _write_zip(tmp, tmp_zip, output.name)
        _replace(tmp, output)
        if zip_file:
            os.replace(tmp_zip, archive)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp_zip.unlink(missing_ok=True)
    return output


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is a bundle folder that :func:`export_bundle` wrote (so ``--overwrite`` may replace it)."""
    if not folder.is_dir() or folder.resolve() in (REPO.resolve(), *REPO.resolve().parents):
        return False
    if (folder / EXPORT_MARKER).is_file():
        return True
    required = ("configs/inference.json", "models/model.pt", "models/model.ts")
    return all((folder / f).is_file() for f in required) and {p.name for p in folder.iterdir()} <= _EXPORT_TOP_LEVEL


def _is_export_zip(archive: Path, name: str) -> bool:
    try:
        with zipfile.ZipFile(archive) as z:
            return f"{name}/models/model.ts" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _network_def(config: dict) -> torch.nn.Module:
    parser = ConfigParser(config)
    try:
        return parser.get_parsed_content("network_def")
    except Exception as e:
        raise ExportError(f"cannot build network_def from the inference config ({type(e).__name__}: {e}).") from None


def _patch_size(network: torch.nn.Module) -> int | None:
    """The only input size of a MONAI HoVerNet inside ``network`` (256 in fast mode, 270 in original), else None."""
    from monai.networks.nets import HoVerNet

    inner = getattr(network, "network", network)
    return (256 if str(inner.mode).upper() == "FAST" else 270) if isinstance(inner, HoVerNet) else None


def code_closure(modules: Sequence[str], root: Path = REPO) -> list[Path]:
    """The project files (under ``root``) that ``modules`` import, directly or not, with the ``__init__.py`` of every
    package on the way: what an exported bundle must carry to run them. Imports are read from the source (``ast``,
    function-level imports included), so nothing is executed."""
    seen: set[Path] = set()
    pending = list(modules)
    while pending:
        name = pending.pop()
        if name.split(".")[0] not in CODE_PACKAGES:
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way, then the module itself
            base = root.joinpath(*parts[:i])
            path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            if not path.is_file() or path in seen:
                continue
            seen.add(path)
            package = ".".join(parts[: i if path.name == "__init__.py" else i - 1])
            pending.extend(_imports(path, package))
    return sorted(seen)


def _imports(path: Path, package: str) -> list[str]:
    """Absolute names of the modules ``path`` imports (``from x import y`` yields ``x`` and ``x.y``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(filter(None, [*anchor, base]))
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def _config_modules(configs: Path) -> list[str]:
    """Modules named by ``$import`` lines and ``_target_`` values of the shipped configs."""
    modules = []
    for name in INFERENCE_CONFIGS:
        path = configs / name
        if path.suffix != ".json" or not path.is_file():
            continue
        text = path.read_text()
        modules += re.findall(r'"\$import ([\w.]+)', text)
        modules += [target.rsplit(".", 1)[0] for target in re.findall(r'"_target_": "([\w.]+)"', text)]
    return modules


def _write_folder(root: Path, src: Path, config: dict, network: torch.nn.Module) -> None:
    (root / "configs").mkdir(parents=True)
    for name in INFERENCE_CONFIGS:
        if (src / "configs" / name).is_file():
            shutil.copy2(src / "configs" / name, root / "configs" / name)
    shutil.copytree(src / "configs" / "schema", root / "configs" / "schema")
    patch = _patch_size(network)
    for path in (root / "configs").glob("*.json"):
        content = json.loads(path.read_text())
        if path.name == "inference.json":
            content = config
        elif path.name == "metadata.json" and patch is not None:  # HoVerNet: a fixed patch size, not 16*n
            for tensor in (
                content["network_data_format"]["inputs"]["image"],
                content["network_data_format"]["outputs"]["pred"],
            ):
                tensor["spatial_shape"] = [patch, patch]
        elif content.get("bundle_root") == "bundle":  # checkout-relative in the repo; the bundle root here
            content["bundle_root"] = "."
        path.write_text(json.dumps(content, indent=4) + "\n")
    if (src / "docs").is_dir():
        shutil.copytree(src / "docs", root / "docs")
    if (REPO / "LICENSE").is_file():
        shutil.copy2(REPO / "LICENSE", root / "LICENSE")
    readme = root / "docs" / "README.md"  # the model card (bundle/docs/README.md), else the checkout's README
    if src != REPO and not readme.is_file() and (REPO / "README.md").is_file():
        (root / "docs").mkdir(exist_ok=True)
        shutil.copy2(REPO / "README.md", root / "docs" / "README.md")
    for path in code_closure([*_config_modules(root / "configs"), *APP_MODULES]):
        target = root / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    shutil.copy2(REPO / "scripts" / "apps" / "label_app" / ".gitignore", root / "scripts" / "apps" / "label_app")

    (root / EXPORT_MARKER).write_text("written by `python -m scripts export`; --overwrite may replace this folder\n")
    (root / "models").mkdir()
    torch.save(network.state_dict(), root / "models" / "model.pt")
    _export_torchscript(root, network)
    _verify_metadata(root)


def _export_torchscript(root: Path, network: torch.nn.Module) -> None:
    """``models/model.ts`` through MONAI's ``ckpt_export`` (as the CLI does), checked against the eager network."""
    from monai.bundle import ckpt_export

    configs, ts = root / "configs", root / "models" / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(configs / "metadata.json"),
        config_file=[str(configs / name) for name in EMBEDDED_CONFIGS if (configs / name).is_file()],
        bundle_root=str(root),
    )
    size = _patch_size(network) or 256
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    network.eval()
    with torch.no_grad():
        expected, got = network(x), torch.jit.load(str(ts), map_location="cpu").eval()(x)
    if expected.shape != got.shape or not torch.allclose(expected, got, rtol=1e-4, atol=1e-5):
        raise ExportError(f"{ts.name}: the TorchScript outputs differ from the eager network's.")


def _verify_metadata(root: Path) -> None:
    """``verify_metadata`` against the shipped schema (never downloads: the file exists); skipped without jsonschema."""
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        print("[export] jsonschema is not installed: metadata.json not verified", file=sys.stderr)
        return
    from monai.bundle import verify_metadata

    schema = root / "configs" / SCHEMA
    if not schema.is_file():
        raise ExportError(f"metadata schema {SCHEMA} missing from configs/.")
    try:
        verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(schema), hash_val=SCHEMA_MD5)
    except ValueError as e:
        raise ExportError(f"metadata.json does not match the bundle schema: {e}") from None


def _write_zip(folder: Path, archive: Path, name: str) -> None:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, f"{name}/{path.relative_to(folder).as_posix()}")


def _replace(tmp: Path, output: Path) -> None:
    """Rename ``tmp`` to ``output``; an existing ``output`` is moved aside first and deleted after."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(output, old)
    try:
        os.replace(tmp, output)
    except BaseException:
        if old is not None:
            os.replace(old, output)
        raise
    if old is not None and old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    elif old is not None:
        old.unlink()


def export(
    model: str = "bundle/models/model.pt",
    output: str = "dist/pointsynth_nuclei_bundle",
    zip: bool = False,  # the CLI flag --zip
    config_file: str | Sequence[str] | None = None,
    overwrite: bool = False,
) -> None:
    """Export the segmenter ``model`` as a self-contained MONAI bundle folder ``output`` (and ``output.zip``).

    Args:
        model: the weights (``model.pt`` from training, or a training checkpoint).
        output: the bundle folder to write (atomically).
        zip: also write ``<output>.zip``.
        config_file: override file(s) for ``inference.json``, e.g. ``bundle/configs/inference_hovernet.json`` for
            paper-scale (MONAI HoVerNet) weights.
        overwrite: replace an existing output.
    """
    try:
        folder = export_bundle(model, output, zip_file=zip, config_file=config_file, overwrite=overwrite)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"[export] {folder}" + (f" and {folder.parent / (folder.name + '.zip')}" if zip else ""))
