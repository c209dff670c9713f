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
"""``python -m scripts release``: make a trained segmenter the bundle's shipped model (``bundle/models/model.pt``).

The weights are stored as a half-precision state dict (half the size; the network loads it as float32), after
checking on the embedded sample that the rounded weights segment exactly as the float32 ones do. ``large_files.yml``
gets the file's path and MD5, ``metadata.json`` its evaluation (``eval_metrics``), ``models/model.json`` both and the
model's provenance.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from scripts import CODE_ROOT, SAMPLE_DATA
from scripts.data.atomic import atomic_path
from scripts.data.images import read_image
from scripts.engines.checkpoint import inference_network, load_network_weights
from scripts.evaluation.metrics import aji
from scripts.inference.predict import TilePredictor

__all__ = ["release", "release_model"]

BUNDLE = CODE_ROOT / "bundle"
EVAL_KEYS = ("aji", "aji_plus", "pq", "object_dice", "pixel_iou", "pixel_f1", "point_f1")


def release_model(
    model: str | Path,
    evaluation: str | Path,
    provenance: str,
    bundle: str | Path = BUNDLE,
    network=None,
    min_agreement: float = 0.98,
) -> dict:
    """Write ``<bundle>/models/model.pt`` (fp16), ``model.json``, ``large_files.yml`` and ``metadata.json``
    ``eval_metrics``.

    Args:
        model: the trained weights (``model.pt`` of a training run, float32).
        evaluation: that model's ``evaluation/metrics.json`` (the validation tiles).
        provenance: how the model was trained (command, data, date, machine), stored in the metadata.
        bundle: the bundle folder.
        network: the segmenter to load into (default: ``network_def`` of the bundle's ``inference.json``).
        min_agreement: the lowest AJI allowed between the nuclei of the half-precision and the float32 weights on
            each sample tile.

    Returns:
        ``model.json``: ``{"path", "md5", "megabytes", "sample_aji_fp16_vs_fp32", "provenance", "validation"}``.

    Raises:
        ValueError: weights that do not fit, a missing evaluation, or half precision that changes the nuclei.
    """
    bundle = Path(bundle)
    if network is None:
        network = inference_network(bundle)
    full = load_network_weights(network, model, what="segmentation model").eval()
    report = json.loads(Path(evaluation).read_text()) if Path(evaluation).is_file() else None
    if report is None or "mean" not in report:
        raise ValueError(f"{evaluation}: not an evaluation report (metrics.json with 'mean').")
    state32 = {k: v.detach().clone() for k, v in full.state_dict().items()}
    half = {k: v.half() if v.is_floating_point() else v for k, v in state32.items()}
    agreement = []
    for path in sorted((SAMPLE_DATA / "images").glob("*.png")):
        image = torch.from_numpy(read_image(path).transpose(2, 0, 1).astype(np.float32))  # (3, H, W) in [0, 255]
        full.load_state_dict(state32)
        expected = TilePredictor(full)(image)
        full.load_state_dict(half)  # copied into the float32 parameters
        agreement.append(aji(TilePredictor(full)(image), expected) if expected.max() else 1.0)
    full.load_state_dict(state32)
    if min(agreement) < min_agreement:
        raise ValueError(f"half precision changes the nuclei (AJI {min(agreement):.3f} vs float32): not released.")
    target = bundle / "models" / "model.pt"
    with atomic_path(target) as tmp:
        torch.save(half, tmp)
    md5 = hashlib.md5(target.read_bytes()).hexdigest()
    with atomic_path(bundle / "large_files.yml") as tmp:
        tmp.write_text(
            "# The shipped weights (in git, 16-bit floats); `python -m scripts release` writes this file.\n"
            "large_files:\n"
            '  - path: "models/model.pt"\n'
            '    url: ""\n'
            f'    hash_val: "{md5}"\n'
            '    hash_type: "md5"\n'
        )
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["eval_metrics"] = {
        f"validation_mean_{k}": round(float(report["mean"][k]), 4) for k in EVAL_KEYS if k in report["mean"]
    }
    meta["eval_metrics"]["validation_images"] = int(report.get("n_images", 0))
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n")
    card = {
        "path": "models/model.pt",
        "md5": md5,
        "megabytes": round(target.stat().st_size / 2**20, 2),
        "sample_aji_fp16_vs_fp32": round(float(np.min(agreement)), 4),
        "provenance": provenance,
        "validation": {k: round(float(v), 4) for k, v in report["mean"].items()},
    }
    with atomic_path(bundle / "models" / "model.json") as tmp:
        tmp.write_text(json.dumps(card, indent=2) + "\n")
    return card


def release(model: str, evaluation: str, provenance: str) -> None:
    """Make ``model`` the bundle's shipped segmenter (``bundle/models/model.pt``, fp16), with its ``evaluation``
    (a bad file: one ``error:`` line and exit status 2, by :func:`scripts.runtime.settings.install_error_handler`)."""
    print(json.dumps(release_model(model, evaluation, provenance), indent=2))
