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
"""MONAI Deploy app: H&E tile -> nucleus instance map, through the SDK's ``MonaiBundleInferenceOperator``.

Needs ``monai-deploy-app-sdk`` (>= 4.0; runs on CPU). From the root of an exported bundle
(``python -m scripts export``), so that the bundle's code is imported::

    python -m scripts.apps.deploy_app -i tile.png -o out/ -m models/model.ts

(or ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` / ``HOLOSCAN_MODEL_PATH``). The operator reads
``metadata.json``, ``inference.json`` and ``deploy.json`` embedded in ``model.ts`` and runs ``deploy.json``'s
``preprocessing`` (scale to [0, 1]), ``inferer`` (sliding window) and ``postprocessing`` (HoVerNet watershed). The
input is one RGB image file, or a folder: every ``.png``/``.tif``/``.jpg`` in it. Each gives
``<output>/<stem>_instances.png`` (16-bit; ``.tif`` int32 beyond 65,535 nuclei).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from holoscan.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image, IOType, Operator, OperatorSpec
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)
from PIL import Image as PILImage

from scripts.data.images import read_image

__all__ = ["CONFIG_NAMES", "InstanceBundleInferenceOperator", "NucleusSegmentationApp", "list_tiles"]

CONFIG_NAMES = BundleConfigNames(config_names=["inference", "deploy"])
_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def list_tiles(path: str | Path) -> list[Path]:
    """The image files of ``path`` (one file, or the image files of a folder)."""
    path = Path(path)
    tiles = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in _SUFFIXES)
    if not tiles:
        raise ValueError(f"{path}: no image file ({', '.join(_SUFFIXES)}).")
    return tiles


class TileLoaderOperator(Operator):
    """Emit one tile per call: ``image`` (an SDK ``Image``, (H, W, 3) uint8) and ``name`` (its stem)."""

    def __init__(self, fragment: Any, *args: Any, tiles: list[Path], **kwargs: Any) -> None:
        self.tiles, self.index = tiles, 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("image")
        spec.output("name")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        path = self.tiles[self.index]
        self.index += 1
        pixels = read_image(path)
        op_output.emit(Image(pixels, metadata={}), "image")
        op_output.emit(path.stem, "name")


class InstanceBundleInferenceOperator(MonaiBundleInferenceOperator):
    """``MonaiBundleInferenceOperator`` that emits the post-processed instance map as an int32 (H, W) array.

    The base class sends an output of metadata type ``image`` as a uint8 ``Image``, which wraps instance ids past 255.
    """

    def _send_output(self, value: Any, name: str, metadata: dict, op_output: Any, context: Any) -> None:
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        op_output.emit(np.asarray(array, dtype=np.int32).reshape(array.shape[-2:]), name)


class InstanceMapWriterOperator(Operator):
    """Write each instance map as ``<output>/<name>_instances.png`` (16-bit) or ``.tif`` (int32, > 65,535 ids)."""

    def __init__(self, fragment: Any, *args: Any, output_folder: Path, **kwargs: Any) -> None:
        self.output_folder = Path(output_folder)
        self.written: list[Path] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("pred")
        spec.input("name")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        instances, name = op_input.receive("pred"), op_input.receive("name")
        self.output_folder.mkdir(parents=True, exist_ok=True)
        if int(instances.max(initial=0)) <= np.iinfo(np.uint16).max:
            path = self.output_folder / f"{name}_instances.png"
            PILImage.fromarray(instances.astype(np.uint16)).save(path)
        else:
            import tifffile

            path = self.output_folder / f"{name}_instances.tif"
            tifffile.imwrite(path, instances)
        self.written.append(path)
        logging.getLogger(__name__).info(f"{path}: {len(np.unique(instances)) - 1} nuclei")


class NucleusSegmentationApp(Application):
    """Tile loader -> :class:`InstanceBundleInferenceOperator` (the bundle) -> instance-map writer."""

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)
        tiles = list_tiles(app_context.input_path)
        loader = TileLoaderOperator(self, CountCondition(self, len(tiles)), tiles=tiles, name="tile_loader")
        inference = InstanceBundleInferenceOperator(
            self,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", np.ndarray, IOType.IN_MEMORY)],
            app_context=app_context,
            bundle_config_names=CONFIG_NAMES,
            name="nucleus_bundle_inference",
        )
        writer = InstanceMapWriterOperator(self, output_folder=Path(app_context.output_path), name="writer")
        self.add_flow(loader, inference, {("image", "image")})
        self.add_flow(loader, writer, {("name", "name")})
        self.add_flow(inference, writer, {("pred", "pred")})


if __name__ == "__main__":
    NucleusSegmentationApp().run()
