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
"""MONAI Label app (``scripts/apps/label_app``): the segmenter behind it (no MONAI Label needed) and, with a Python that
imports ``monailabel`` (this one, or ``POINTSYNTH_LABEL_PYTHON``), the server end to end on localhost: an exported
bundle served by ``monailabel start_server``, a MoNuSeg tile sent as QuPath's plugin sends it, nuclei back.

The weights are random (seeded); the checks are on the protocol: the nuclei equal those of the bundle's own
``monai.bundle run`` inference on the same tile, run by the same Python.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from scripts.apps.label_app.nuclei import (
    LABEL,
    ImageNotFoundError,
    NucleusSegmenter,
    annotation_result,
    region_of_interest,
    resolve_image,
)
from scripts.cli.export import export_bundle
from tests.helpers import REPO, SAMPLE, save_random_segmenter

LABEL_PYTHON_ENV = "POINTSYNTH_LABEL_PYTHON"
TILES = sorted((SAMPLE / "images").glob("*.png"))
ROI = [48, 64, 128, 112]  # y, x, h, w: a region of interest inside the 256 x 256 sample tiles
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
    "OMP_NUM_THREADS": "1",
    "POINTSYNTH_NO_REEXEC": "1",
    "MONAI_LABEL_SESSIONS": "false",  # no session folder in the home directory
    "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
}


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, Path, int]:
    """Seeded random weights and the sample tile on which they find the most nuclei (at least 10; most random
    networks find one blob per tile): ``(weights, tile, nuclei)``."""
    folder = tmp_path_factory.mktemp("label_weights")
    for seed in range(10):
        weights = save_random_segmenter(folder / f"model_{seed}.pt", seed=seed)
        segmenter = NucleusSegmenter(model_path=weights)
        counts = [len(segmenter.segment(tile)) for tile in TILES]
        best = int(np.argmax(counts))
        if counts[best] >= 10:
            return weights, TILES[best], counts[best]
    pytest.fail("no seeded random segmenter finds 10 nuclei on a sample tile")


def _bundle_geojson(weights: Path, tile: Path, output: Path, roi: list[int] | None = None) -> list[np.ndarray]:
    """Polygons of the bundle's ``inference`` (``inference.json``) on ``tile``, open rings."""
    parser = ConfigParser(ConfigParser.load_config_files([REPO / "bundle" / "configs" / "inference.json"]))
    parser.update({"model_path": str(weights), "input": str(tile), "output_dir": str(output), "outputs": ["geojson"]})
    parser["roi"] = roi
    summary = parser.get_parsed_content("evaluator").run()
    return _geojson_rings(Path(summary["images"][0]["outputs"]["geojson"]))


def _geojson_rings(path: Path) -> list[np.ndarray]:
    return [np.asarray(f["geometry"]["coordinates"][0])[:-1] for f in json.loads(path.read_text())["features"]]


def _assert_same_polygons(got: list, expected: list[np.ndarray]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), b, atol=1e-6)


def test_image_ids_resolve_only_inside_the_datastore(tmp_path):
    """Datastore ids, files inside the studies folder and the server's own upload files resolve; absolute paths
    elsewhere, ``..`` out of the datastore and links pointing out get one and the same "not found"."""
    studies, uploads, elsewhere = tmp_path / "studies", tmp_path / "uploads", tmp_path / "elsewhere"
    for folder in (studies, uploads, elsewhere):
        folder.mkdir()
    tile = studies / "tile.png"
    shutil.copy(TILES[0], tile)
    secret = elsewhere / "notes.txt"
    secret.write_text("a user's notes")
    (studies / "link.png").symlink_to(secret)
    upload = uploads / "tmpab12cd.png"
    shutil.copy(TILES[0], upload)
    ids = {"tile": str(tile)}
    pixels = np.zeros((40, 40, 3), np.uint8)

    def resolve(image):
        return resolve_image(image, studies, ids.get, uploads=uploads)

    assert resolve("tile") == str(tile)  # a datastore id
    assert resolve(str(tile)) == str(tile.resolve())
    assert resolve(str(upload)) == str(upload.resolve())
    assert resolve(pixels) is pixels
    refused = [
        str(secret),
        f"{studies}/../elsewhere/notes.txt",
        str(studies / "link.png"),
        "../elsewhere/notes.txt",
        "missing",
        str(studies / "missing.png"),
        str(uploads / "user.png"),
        str(studies),
        "/etc/hostname",
    ]
    for image in refused:
        with pytest.raises(ImageNotFoundError) as error:
            resolve(image)
        assert str(error.value) == f"image {image!r} not found in the datastore"
    with pytest.raises(ImageNotFoundError):  # a datastore that raises for an unknown id
        resolve_image("tile", studies, lambda image: {}[image], uploads=uploads)


def test_region_of_interest():
    assert region_of_interest([64, 48], [112, 128]) == [48, 64, 128, 112]
    assert region_of_interest(None, [10, 20]) == [0, 0, 20, 10]
    for size in (None, [], [0, 0], [10, 0]):
        assert region_of_interest([5, 5], size) is None


def test_segmenter_equals_bundle_inference(case, tmp_path):
    """The app's segmenter returns the bundle inference's nuclei: polygons, count, instance map, MONAI Label result."""
    weights, tile, count = case
    segmenter = NucleusSegmenter(bundle=REPO / "bundle", model_path=weights)
    segmentation = segmenter.segment(tile, label=True)
    try:
        expected = _bundle_geojson(weights, tile, tmp_path / "whole")
        _assert_same_polygons(segmentation.polygons, expected)
        assert len(segmentation) == count
        instances = np.asarray(Image.open(segmentation.label))
        assert instances.dtype == np.uint16 and instances.max() == count
        assert len(np.unique(instances[instances > 0])) == count

    finally:
        segmentation.label.unlink()

    result = annotation_result(segmentation)
    assert result["nuclei"] == count
    assert result["annotation"]["labels"] == {LABEL: [0, 200, 0]}
    (element,) = result["annotation"]["elements"]
    assert element["label"] == LABEL and len(element["contours"]) == count
    assert set(result["latencies"]) >= {"pre", "infer", "post", "total"}
    json.dumps(result)  # plain JSON


def test_segmenter_region_and_pixels(case, tmp_path, monkeypatch):
    """A region of interest keeps the nuclei whose centroid lies in it (as ``roi`` does); pixels given directly
    are shifted by ``location``. Polygons and pixels stay in memory: no GeoJSON or image file is written."""
    weights, tile, _ = case
    segmenter = NucleusSegmenter(model_path=weights)
    y, x, h, w = ROI
    expected = _bundle_geojson(weights, tile, tmp_path / "roi", ROI)
    pixels = np.asarray(Image.open(tile).convert("RGB"))

    def no_files(*args, **kwargs):
        raise AssertionError("the label app wrote a file for a polygon request")

    monkeypatch.setattr("scripts.inference.infer.GeoJSONWriter", no_files)
    monkeypatch.setattr(Image.Image, "save", no_files)
    region = segmenter.segment(tile, location=[x, y], size=[w, h])
    _assert_same_polygons(region.polygons, expected)
    assert 0 < len(region) < len(segmenter.segment(tile))

    whole = segmenter.segment(tile)
    shifted = segmenter.segment(pixels, location=[1000, 2000])
    _assert_same_polygons(shifted.polygons, [ring + [1000, 2000] for ring in whole.polygons])
    with pytest.raises(ValueError, match="RGB"):
        segmenter.segment(pixels[..., 0])


def test_segmenter_errors(case, tmp_path):
    weights, _, _ = case
    with pytest.raises(ValueError, match="not found"):
        NucleusSegmenter(bundle=tmp_path)
    with pytest.raises(ValueError, match="not found"):
        NucleusSegmenter(model_path=weights, config_file="configs/missing.json")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="cannot load the segmenter"):
        NucleusSegmenter(model_path=tmp_path / "bad.pt")


# ---------------------------------------------------------------------------------------------- the server, end to end


def _label_python() -> str | None:
    """A Python that imports ``monailabel``: this one, or ``POINTSYNTH_LABEL_PYTHON``."""
    if importlib.util.find_spec("monailabel") is not None:
        return sys.executable
    python = os.environ.get(LABEL_PYTHON_ENV)
    if python and not os.access(python, os.X_OK):
        pytest.fail(f"{LABEL_PYTHON_ENV}={python} is not an executable")
    return python or None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 60) -> bytes:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _multipart(fields: dict[str, str], files: dict[str, Path]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in
             fields.items()]  # fmt: skip
    for name, path in files.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
        parts.append(f"{head}Content-Type: image/png\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _asap_polygons(xml: bytes) -> list[np.ndarray]:
    """Polygons of an ASAP annotation XML, read as QuPath's plugin reads them (``Annotation`` > ``Coordinate``)."""
    root = ET.fromstring(xml)
    rings = []
    for annotation in root.iter("Annotation"):
        assert annotation.get("Name") == LABEL and annotation.get("Type") == "Polygon"
        rings.append(np.array([[float(c.get("X")), float(c.get("Y"))] for c in annotation.iter("Coordinate")]))
    return rings


_REFERENCE = """
import json, sys
from monai.bundle import run
tile, out, roi = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
run("run", config_file="configs/inference.json", input=tile, output_dir=out + "/whole", outputs=["geojson"])
run("run", config_file="configs/inference.json", input=tile, output_dir=out + "/roi", outputs=["geojson"], roi=roi)
"""


@pytest.mark.slow
def test_server_end_to_end(case, tmp_path):
    """``monailabel start_server`` with the app of an exported bundle; a tile uploaded as QuPath uploads it (ASAP XML
    back), a region of a datastore image (ASAP XML, DSA JSON), the instance map: the bundle inference's nuclei."""
    python = _label_python()
    if python is None:
        pytest.skip(f"monailabel is not importable here; set {LABEL_PYTHON_ENV} to a Python that has it "
                    "(bundle/docs/monailabel.md)")  # fmt: skip
    weights, tile, _ = case
    bundle = export_bundle(weights, tmp_path / "pointsynth_nuclei_bundle")
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(tile, studies / tile.name)
    y, x, h, w = ROI
    reference = subprocess.Popen(
        [python, "-c", _REFERENCE, str(tile), str(tmp_path / "reference"), json.dumps(ROI)],
        cwd=bundle, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [python, "-m", "monailabel.main", "start_server", "--app", str(bundle / "scripts" / "apps" / "label_app"),
             "--studies", str(studies), "--conf", "models", "nuclei", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        deadline, info = time.monotonic() + 60, None
        while info is None:
            assert server.poll() is None, f"the server exited ({server.returncode}):\n{log_tail()}"
            assert time.monotonic() < deadline, f"no /info/ after 60 s:\n{log_tail()}"
            try:
                info = json.loads(_request(f"{url}/info/", timeout=5))
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        model = info["models"]["nuclei"]
        assert model["pathology"] is True and model["labels"] == {LABEL: 1} and model["type"] == "segmentation"
        assert LABEL in info["labels"]

        _, stderr = reference.communicate(timeout=120)
        assert reference.returncode == 0, stderr[-3000:]
        expected = _geojson_rings(tmp_path / "reference" / "whole" / f"{tile.stem}_nuclei.geojson")
        expected_roi = _geojson_rings(tmp_path / "reference" / "roi" / f"{tile.stem}_nuclei.geojson")
        count = len(expected)  # this Python's torch may differ from the test's: compare within the label Python
        assert count >= 10 and 0 < len(expected_roi) < count

        # QuPath, image not in the datastore: the tile is uploaded to /infer/wsi_v2 (multipart: file + wsi)
        wsi = {"level": 0, "location": [0, 0], "size": [0, 0], "tile_size": [1024, 1024], "min_poly_area": 30,
               "params": {"foreground": [], "background": [], "max_workers": 1}}  # fmt: skip
        body, headers = _multipart({"wsi": json.dumps(wsi)}, {"file": tile})
        try:
            xml = _request(f"{url}/infer/wsi_v2/nuclei?output=asap", body, headers)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{e}: {e.read()[:2000]}\n{log_tail()}") from None
        polygons = _asap_polygons(xml)
        _assert_same_polygons(polygons, expected)
        width, height = Image.open(tile).size
        for ring in polygons:
            assert len(ring) >= 3
            assert ring.min() >= 0 and ring[:, 0].max() <= width and ring[:, 1].max() <= height

        # QuPath, image in the datastore (by id): a region of it, /infer/wsi with a JSON body; DSA JSON too
        query = f"image={tile.stem}"
        region = json.dumps({"level": 0, "location": [x, y], "size": [w, h], "tile_size": [1024, 1024]}).encode()
        json_headers = {"Content-Type": "application/json"}
        _assert_same_polygons(_asap_polygons(_request(f"{url}/infer/wsi/nuclei?{query}&output=asap", region,
                                                      json_headers)), expected_roi)  # fmt: skip
        dsa = json.loads(_request(f"{url}/infer/wsi/nuclei?{query}&output=dsa", region, json_headers))
        assert len(dsa["elements"]) == len(expected_roi)
        assert all(e["closed"] and e["label"]["value"] == LABEL for e in dsa["elements"])

        # the label map from the plain infer endpoint: a 16-bit instance map with one id per nucleus
        instances = np.asarray(Image.open(BytesIO(_request(f"{url}/infer/nuclei?{query}&output=image", b""))))
        assert instances.shape == (height, width) and instances.max() == count
        assert len(np.unique(instances[instances > 0])) == count

        # a server file outside the datastore is "not found", by path or through the WSI endpoint
        outside = tmp_path / "reference" / "whole" / f"{tile.stem}_nuclei.geojson"
        answers = []
        for endpoint, data in (("infer/nuclei", b""), ("infer/wsi/nuclei", region)):
            with pytest.raises(urllib.error.HTTPError) as refused:
                _request(f"{url}/{endpoint}?image={urllib.parse.quote(str(outside))}", data, json_headers)
            assert refused.value.code == 404
            answers.append(refused.value.read().decode(errors="replace"))
        assert all("not found in the datastore" in a for a in answers), answers
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if reference.poll() is None:
            reference.kill()
            reference.wait()
