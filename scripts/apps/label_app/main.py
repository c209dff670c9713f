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
"""MONAI Label app: the bundle's nucleus instance segmentation as the infer task ``nuclei``.

``monailabel start_server --app scripts/apps/label_app --studies <folder of tiles/slides> --conf models nuclei``
(from the repository or from an exported bundle; ``bundle/docs/monailabel.md``). Configuration (``--conf KEY VALUE``):

- ``models``: ``nuclei`` (the only model; ``all`` too);
- ``bundle``: bundle folder with ``configs/inference.json`` and ``models/`` (default: the bundle this app belongs to,
  ``bundle/`` of the repository or the exported bundle's root);
- ``model_path``: the weights (default ``<bundle>/models/model.pt``);
- ``config_file``: comma-separated override files, e.g. ``configs/inference_hovernet.json``;
- ``overrides``: a JSON object of ``inference.json`` keys, e.g. ``{"amp": false, "flip_tta": true}``.

The task runs :class:`~scripts.inference.infer.NucleusInference` on the whole image, or on the requested region of it
(``location`` ``[x, y]`` and ``size`` ``[w, h]`` in level-0 pixels, as QuPath's MONAI Label plugin sends them), in one
call: regions with margins, seam-free, tissue detection on slides; MONAI Label's own WSI tiling (``tile_size``) is not
used, and ``min_poly_area`` is ignored (the bundle's post-processing sets the smallest nucleus). Results:
``/infer/wsi/nuclei`` and ``/infer/wsi_v2/nuclei`` return ASAP XML (``output=asap``, what QuPath reads), DSA JSON
(``dsa``) or JSON (``json``) with one polygon per nucleus; ``/infer/nuclei`` returns the instance map (16-bit PNG for
tiles) and the polygons as its ``params``. Polygons are in level-0 pixels, QuPath's pixel-corner convention, class
``Nucleus``.

This file is loaded by MONAI Label from its path: it puts the code root of this app (the folder holding ``scripts/``)
first on ``sys.path``, so that the bundle code (``scripts``, ``networks``, ``transforms``) is importable.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

CODE_ROOT = Path(__file__).resolve().parents[3]
if str(CODE_ROOT) not in sys.path:
    sys.path.insert(0, str(CODE_ROOT))

from fastapi import HTTPException  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType  # noqa: E402
from monailabel.transform.writer import PolygonWriter  # noqa: E402

from scripts.apps.label_app.nuclei import (  # noqa: E402
    LABEL,
    LABEL_COLOUR,
    ImageNotFoundError,
    NucleusSegmenter,
    annotation_result,
    resolve_image,
)

logger = logging.getLogger(__name__)

MODEL = "nuclei"
ANNOTATION_OUTPUTS = ("asap", "dsa", "json")  # formats of MONAI Label's pathology writer (PolygonWriter)


class NucleiInferTask(InferTask):
    """Nucleus instance segmentation of a tile, a slide or a region of one, returned as annotation polygons.

    Requests: ``image`` (a datastore id, a file or a region's RGB pixels), ``location``, ``size`` (level-0 region of
    interest; ``size`` ``[0, 0]``: the whole image), ``level``, ``output`` (``asap`` / ``dsa`` / ``json`` from the
    WSI endpoints; otherwise the result file is the instance map).
    """

    def __init__(self, segmenter: NucleusSegmenter) -> None:
        super().__init__(
            type=InferType.SEGMENTATION,
            labels={LABEL: 1},
            dimension=2,
            description=f"Nucleus instance segmentation (pointsynth-nuclei bundle {segmenter.version}, "
            "trained on synthetic data from point annotations)",
            config={"label_colors": {LABEL: list(LABEL_COLOUR)}},
        )
        self.segmenter = segmenter

    def info(self) -> dict[str, Any]:
        info = super().info()
        info.update(pathology=True, nuclick=False)  # what QuPath's and DSA's plugins look for
        return info

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict) -> tuple[str | None, dict]:
        output = request.get("output")
        annotations = output in ANNOTATION_OUTPUTS
        segmentation = self.segmenter.segment(
            request["image"],
            location=request.get("location"),
            size=request.get("size"),
            level=request.get("level"),
            label=not annotations,
        )
        result = annotation_result(segmentation)
        logger.info(f"{MODEL}: {result['nuclei']} nuclei; latencies {result['latencies']}")
        if not annotations:
            return str(segmentation.label), result
        data = {**request, "result": result, "latencies": result["latencies"]}
        file, params = PolygonWriter()(data)
        params["nuclei"] = result["nuclei"]
        return file, params


class PointSynthNucleiApp(MONAILabelApp):
    """MONAI Label app serving the pointsynth-nuclei bundle (one infer task, ``nuclei``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        models = [m.strip() for m in conf.get("models", MODEL).split(",") if m.strip()]
        invalid = [m for m in models if m not in (MODEL, "all")]
        if invalid:
            raise ValueError(f"unknown model(s) {invalid}: this app serves '{MODEL}' (--conf models {MODEL}).")
        self.studies_folder = studies if os.path.isdir(studies) else None  # a remote datastore: ids only
        overrides = json.loads(conf["overrides"]) if conf.get("overrides") else None
        config_file = [f.strip() for f in conf.get("config_file", "").split(",") if f.strip()]
        self.segmenter = NucleusSegmenter(
            bundle=conf.get("bundle"), model_path=conf.get("model_path"), config_file=config_file, overrides=overrides
        )
        logger.info(f"+++ Bundle {self.segmenter.bundle}; weights {self.segmenter.model_path}")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="pointsynth-nuclei",
            description="Nucleus instance segmentation learnt from point annotations by data synthesis",
            version=self.segmenter.version,
        )

    def init_infers(self) -> dict[str, InferTask]:
        return {MODEL: NucleiInferTask(self.segmenter)}

    def infer(self, request: dict, datastore=None) -> dict:
        """Images resolve only inside the datastore (by id or path) or as a file the client uploaded; anything else is
        one "not found" answer (``resolve_image``)."""
        datastore = datastore or self.datastore()
        self._checked(request.get("image"), datastore)  # refuses; MONAI Label then reads the request as it is
        return super().infer(request, datastore)

    def infer_wsi(self, request: dict, datastore=None) -> dict:
        """Local images go to the task in one call (it plans its own regions, with margins, over the region of
        interest); anything else (e.g. the regions of a remote datastore) goes through MONAI Label's handling."""
        datastore = datastore or self.datastore()
        task = self._infers.get(request.get("model"))
        path = self._checked(request.get("image"), datastore)
        if isinstance(task, NucleiInferTask) and isinstance(path, str) and os.path.isfile(path):
            return self.infer({**task.config(), **request, "image": path}, datastore)
        return super().infer_wsi(request, datastore)

    def _checked(self, image, datastore):
        """``image`` resolved by ``resolve_image``; ``None`` for an id that only a remote datastore can serve."""
        try:
            return resolve_image(image, self.studies_folder, datastore.get_image_uri)
        except ImageNotFoundError as e:
            if self.studies_folder is None and not os.path.exists(str(image)):
                return None  # a remote datastore (DSA, XNAT) reads its own ids
            raise HTTPException(status_code=404, detail=str(e)) from None
