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
"""The bundle's nucleus inference behind the MONAI Label app, usable without MONAI Label.

:class:`NucleusSegmenter` loads a bundle folder once (``configs/inference.json`` with its overrides, the weights of
``model_path``) and runs :class:`~scripts.inference.infer.NucleusInference`, the streaming tiled inference of
``inference.json``, on a tile, a slide or a region of one. Its nuclei come back as the polygons of the GeoJSON
output (level-0 pixels, QuPath's pixel-corner convention); :func:`annotation_result` puts them into the per-region
result that MONAI Label's annotation writers (``PolygonWriter``: ASAP XML for QuPath, DSA JSON) consume.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "LABEL",
    "LABEL_COLOUR",
    "ImageNotFoundError",
    "NucleusSegmenter",
    "Segmentation",
    "annotation_result",
    "region_of_interest",
    "resolve_image",
]

LABEL = "Nucleus"
LABEL_COLOUR = (0, 200, 0)  # the outline colour of the overlay (scripts.data.writers.NUCLEUS_COLOUR)
# NucleusInference arguments set per request; every other argument comes from the bundle's `inference` config
_PER_REQUEST = frozenset({"network", "input", "output_dir", "outputs", "roi", "level", "mpp", "progress"})


@dataclass
class Segmentation:
    """The nuclei of one request.

    Attributes:
        polygons: one ``(k, 2)`` open ring (first vertex not repeated) per nucleus, level-0 ``(x, y)`` pixel corners.
        summary: what :meth:`NucleusInference.process` reports (shape, level, roi, nuclei, seconds).
        label: the instance map file (16-bit PNG for tiles, pyramidal TIFF for slides) when asked for; the caller
            owns it.
    """

    polygons: list[np.ndarray]
    summary: dict
    label: Path | None = None

    def __len__(self) -> int:
        return len(self.polygons)


class ImageNotFoundError(LookupError):
    """An image id that is neither in the datastore nor a file the server received from the client."""


def resolve_image(
    image: str | os.PathLike | np.ndarray,
    studies: str | os.PathLike | None,
    lookup: Callable[[str], str | None] | None = None,
    uploads: str | os.PathLike | None = None,
) -> str | np.ndarray:
    """The file (or pixels) a request's ``image`` may name, or :class:`ImageNotFoundError` with the same message for
    every refusal (whether a file exists elsewhere on the server is not revealed).

    Accepted: pixels; a datastore id that ``lookup`` resolves to a file; a file inside the ``studies`` folder (after
    resolving ``..`` and links); a file MONAI Label wrote for an upload (``tmp*`` directly in ``uploads``, by default
    the system's temporary folder). Anything else (absolute paths, ``..`` out of the datastore) is not found.
    """
    if isinstance(image, np.ndarray):
        return image
    name = os.fspath(image)
    not_found = ImageNotFoundError(f"image {name!r} not found in the datastore")
    uri = None
    if lookup is not None:
        try:
            uri = lookup(name)
        except Exception:  # any datastore refusal reads as "not found"
            uri = None
    if uri and os.path.isfile(uri):
        return uri
    path = Path(name)
    if not path.is_absolute() or not path.is_file():
        raise not_found
    real = path.resolve()
    inside_studies = studies is not None and os.path.isdir(studies) and real.is_relative_to(Path(studies).resolve())
    upload_dir = Path(uploads if uploads is not None else tempfile.gettempdir()).resolve()
    upload = real.parent == upload_dir and real.name.startswith("tmp")
    if inside_studies or upload:
        return str(real)
    raise not_found


def region_of_interest(location: Sequence[int] | None, size: Sequence[int] | None) -> list[int] | None:
    """MONAI Label's ``location`` ``[x, y]`` and ``size`` ``[w, h]`` (level-0 pixels) as our ``roi`` ``[y, x, h, w]``;
    ``None`` (the whole image) for a missing or empty size, as MONAI Label's clients send for whole tiles."""
    if not size or len(size) < 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        return None
    x, y = (int(v) for v in (location or (0, 0))[:2])
    return [y, x, int(size[1]), int(size[0])]


class NucleusSegmenter:
    """A bundle's segmenter, loaded once, run per request (one at a time).

    Args:
        bundle: bundle folder (``configs/inference.json``, ``models/``): an exported bundle or ``bundle/`` of the
            repository (default: the one this code belongs to).
        model_path: weights (default: the config's ``model_path``, ``<bundle>/models/model.pt``).
        config_file: override files merged over ``inference.json``, e.g. ``configs/inference_hovernet.json``
            (relative paths: to the bundle folder first, then to the working directory).
        overrides: config keys to set, e.g. ``{"amp": False, "flip_tta": True}``.

    Raises:
        ValueError: a missing bundle or config file, or weights that do not fit ``network_def``.
    """

    def __init__(
        self,
        bundle: str | os.PathLike | None = None,
        model_path: str | os.PathLike | None = None,
        config_file: str | Sequence[str] | None = None,
        overrides: dict | None = None,
    ) -> None:
        from monai.bundle import ConfigParser

        from scripts import source_root
        from scripts.runtime import configure

        self.bundle = Path(bundle).resolve() if bundle else source_root()
        files = [self.bundle / "configs" / "inference.json"]
        for name in [config_file] if isinstance(config_file, str) else list(config_file or []):
            candidates = [self.bundle / name, Path(name)]
            files.append(next((p for p in candidates if p.is_file()), candidates[-1]))
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"bundle config file(s) not found: {', '.join(missing)}.")
        parser = ConfigParser(ConfigParser.load_config_files(files))
        parser["bundle_root"] = str(self.bundle)
        if model_path:
            parser["model_path"] = str(Path(model_path).resolve())
        for key, value in (overrides or {}).items():
            parser[key] = value
        self.model_path = Path(parser.get_parsed_content("model_path"))
        try:
            self.network = parser.get_parsed_content("evaluator::network").eval()
        except Exception as e:  # MONAI wraps the weight check's ValueError: keep its message
            cause = e.__cause__ if isinstance(e.__cause__, ValueError) else e
            raise ValueError(f"cannot load the segmenter of {self.bundle}: {cause}") from None
        args = [k for k in parser.get("evaluator") if not k.startswith("_") and k not in _PER_REQUEST]
        self.kwargs = {k: parser.get_parsed_content(f"evaluator::{k}") for k in args}
        self.level, self.mpp = parser.get_parsed_content("level"), parser.get_parsed_content("mpp")
        configure(False, parser.get("num_threads"))  # threads only: a server is never restarted for the allocator
        self.metadata = _read_json(self.bundle / "configs" / "metadata.json")
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        """The bundle's version (``metadata.json``)."""
        return str(self.metadata.get("version", "0"))

    def segment(
        self,
        image: str | os.PathLike | np.ndarray,
        location: Sequence[int] | None = None,
        size: Sequence[int] | None = None,
        level: int | None = None,
        label: bool = False,
    ) -> Segmentation:
        """Segment the nuclei of ``image`` (a file, or the ``(H, W, 3)`` uint8 pixels of a region at ``location``).

        Args:
            image: a tile or slide file, or a region's RGB pixels (then ``location`` is its level-0 corner and only
                shifts the polygons).
            location, size: files only: the region of interest, level-0 ``[x, y]`` and ``[w, h]`` (default: all);
                nuclei whose centroid lies in it are returned whole.
            level: pyramid level to process (default: the config's ``level`` / ``mpp``, else 0).
            label: also write the instance map (ids in the order of ``polygons``).
        """
        from scripts.data.writers import PolygonCollector
        from scripts.inference.infer import NucleusInference

        offset, roi = np.zeros(2), None
        if isinstance(image, np.ndarray):  # a region's pixels: segmented in memory
            image = _channels_last(image)
            offset = np.asarray((location or (0, 0))[:2], dtype=np.float64)
        else:
            image, roi = Path(image), region_of_interest(location, size)
        collector = PolygonCollector()
        use_config = level is None
        with tempfile.TemporaryDirectory(prefix="pointsynth_label_") as tmp:  # the label map only, when asked for
            inference = NucleusInference(
                self.network,
                input=None,
                output_dir=Path(tmp),
                outputs=["label"] if label else [],
                roi=roi,
                level=self.level if use_config else int(level),
                mpp=self.mpp if use_config else None,
                progress=False,
                **self.kwargs,
            )
            with self._lock:
                summary = inference.process(image, sinks={"polygons": collector})
            label_file = None
            if label:
                source = Path(summary["outputs"]["label"])
                stem = image.stem if isinstance(image, Path) else "region"
                fd, name = tempfile.mkstemp(prefix=f"{stem}_instances_", suffix=source.suffix)
                os.close(fd)
                label_file = Path(shutil.move(source, name))
        return Segmentation([ring + offset for ring in collector.polygons], summary, label_file)


def annotation_result(segmentation: Segmentation, decimals: int = 2) -> dict:
    """The result of one region as MONAI Label's pathology tasks return it (``FindContoursd`` + ``PolygonWriter``):
    ``annotation``: ``labels`` (name -> colour) and ``elements`` (``label``, ``contours``: ``[[x, y], ...]`` per
    nucleus, level-0 pixel corners), ``nuclei`` (the count) and ``latencies`` in seconds."""
    summary = segmentation.summary
    contours = [np.round(ring, decimals).tolist() for ring in segmentation.polygons]
    total, infer, post = summary.get("seconds", 0.0), summary.get("network_s", 0.0), summary.get("postprocess_s", 0.0)
    return {
        "annotation": {
            "labels": {LABEL: list(LABEL_COLOUR)},
            "elements": [{"label": LABEL, "contours": contours}] if contours else [],
        },
        "nuclei": len(contours),
        "image_shape": summary.get("shape"),
        "level": summary.get("level"),
        "latencies": {
            "pre": round(max(total - infer - post, 0.0), 3),
            "infer": round(infer, 3),
            "post": round(post, 3),
            "total": round(total, 3),
        },
    }


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _channels_last(pixels: np.ndarray) -> np.ndarray:
    """A region's pixels as ``(H, W, C)``: MONAI Label may send ``(C, H, W)``."""
    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"a region must be RGB pixels (H, W, 3), got shape {array.shape}.")
    return np.clip(array, 0, 255).astype(np.uint8) if array.dtype != np.uint8 else array
