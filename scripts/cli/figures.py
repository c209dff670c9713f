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
"""Figures of the docs that no run draws by itself: ``python -m scripts augmentation_figure SYNTHETIC_DIR``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scripts import source_root

__all__ = ["augmentation_crops", "augmentation_figure"]


def augmentation_crops(
    training_data: str, data: str, appearance_randomisation: bool, crops: int, synthetic_datalist: str | None = None
) -> list[np.ndarray]:
    """``crops`` training crops (H x W x 3 uint8) as the ``cpu`` profile's ``train#preprocessing`` gives them to the
    segmenter, the random state of crop ``k`` seeded with ``k`` (the same crops with and without the randomisation)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    configs = source_root() / "configs"
    parser.read_config([str(configs / "train.json"), str(configs / "train_cpu.json")])
    parser.update(
        {"data_dir": data, "training_data": training_data, "appearance_randomisation": appearance_randomisation}
    )
    if synthetic_datalist is not None:
        parser.update({"synthetic_datalist": synthetic_datalist})
    chain = parser.get_parsed_content("train#preprocessing")
    items = parser.get_parsed_content("datalist")["training"]
    picks = np.linspace(0, len(items) - 1, crops).round().astype(int)
    out = []
    for k, index in enumerate(picks):
        chain.set_random_state(k)
        image = np.asarray(chain(dict(items[index]))["image"]).transpose(1, 2, 0)
        out.append((image * 255).clip(0, 255).astype(np.uint8))
    return out


def augmentation_figure(
    synthetic: str, data: str = "../shared/data/monuseg", output: str = "appearance_randomisation.jpg", crops: int = 4
) -> str:
    """Synthetic training crops without (top row) and with (middle) the ``cpu`` profile's appearance randomisation,
    and real training crops of ``data`` (bottom), as the segmenter sees them; ``synthetic``: a ``synthesize`` output
    folder. Writes ``output`` (JPEG or PNG) and returns its path."""
    from PIL import Image

    from scripts.data.atomic import atomic_path
    from scripts.evaluation.visualize import grid

    datalist = Path(synthetic) / "datalist.json"
    if not datalist.is_file():
        raise FileNotFoundError(f"{datalist}: not found (is {synthetic} a synthesize output folder?)")
    if crops < 1:
        raise ValueError(f"crops: {crops}, give at least 1")
    image_format = Image.registered_extensions().get(Path(output).suffix.lower())
    if image_format is None:
        raise ValueError(f"output: {output} has no image file extension (e.g. .jpg or .png)")
    rows = [
        augmentation_crops("synthetic", data, False, crops, str(datalist)),
        augmentation_crops("synthetic", data, True, crops, str(datalist)),
        augmentation_crops("dense", data, False, crops),
    ]
    with atomic_path(output) as tmp:  # never a half-written figure
        grid(rows).save(tmp, format=image_format, **({"quality": 85} if image_format == "JPEG" else {}))
    print(f"wrote {output}")
    return str(output)
