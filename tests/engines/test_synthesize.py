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
"""Stage 3: synthetic datasets from a generator (files, determinism, resume, bad input)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from networks import MaskToImageGenerator
from scripts.cli.synthesis_report import synthesis_colours
from scripts.data.images import read_image
from scripts.data.tiles import tile_datalist
from scripts.engines.synthesize import (
    load_generator,
    random_point_sources,
    real_point_sources,
    render_windows,
    synthesize,
)
from scripts.runtime.settings import clear_error
from tests.helpers import REPO, SAMPLE, parse_configs
from transforms import lab_statistics

PRIOR = REPO / "bundle" / "configs" / "point_prior_monuseg.json"


def _generator(noise: str = "spatial", ngf: int = 4) -> MaskToImageGenerator:
    torch.manual_seed(0)
    return MaskToImageGenerator(ngf=ngf, channel_multipliers=(4, 2, 1), z_dim=2, noise=noise, spade_hidden=8)


def _sources(tmp_path: Path) -> list[dict]:
    data = tmp_path / "data"
    for sub in ("images", "points"):
        shutil.copytree(SAMPLE / sub, data / sub)
    return real_point_sources(tile_datalist(data))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthesize_writes_aligned_pairs(tmp_path):
    sources = _sources(tmp_path)
    datalist = synthesize(_generator(), sources, tmp_path / "syn", 2, 3, seed=5, progress=False)
    items = json.loads(datalist.read_text())["training"]
    assert len(items) == len(sources) * 2 * 3 == len({i["image"] for i in items})
    assert len({i["label"] for i in items}) == len(sources) * 2  # noise draws share their mask
    for item in items[::3]:
        image = np.asarray(Image.open(tmp_path / "syn" / item["image"]))
        label = np.asarray(Image.open(tmp_path / "syn" / item["label"]))
        points = np.loadtxt(tmp_path / "syn" / item["points"], delimiter=",", skiprows=1, ndmin=2)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        assert label.dtype == np.uint16 and label.shape == (256, 256)
        ids = np.unique(label[label > 0])
        assert np.array_equal(ids, np.arange(1, len(points) + 1))  # contiguous ids, one per listed point
        y, x = np.floor(points + 0.5).astype(int).T
        assert np.mean(label[y, x] == np.arange(1, len(points) + 1)) > 0.95  # nucleus i+1 sits on point i
    draws = [np.asarray(Image.open(tmp_path / "syn" / items[d]["image"])).astype(int) for d in range(3)]
    assert np.abs(draws[0] - draws[1]).mean() > 1  # noise draws differ


def test_synthesize_is_deterministic_and_resumes_without_duplicates(tmp_path):
    sources = _sources(tmp_path)
    full = tmp_path / "full"
    synthesize(_generator(), sources, full, 2, 2, seed=1, progress=False)
    reference = _files(full)
    # an interrupted run: some pairs missing, a stale temporary left behind, no datalist yet
    part = tmp_path / "part"
    shutil.copytree(full, part)
    (part / "datalist.json").unlink()
    for name in list(reference)[::3]:
        if name.startswith(("images/", "labels/", "points/")):
            (part / name).unlink()
    (part / "images" / ".x_m0_z0.png.0a1b2c3d.tmp").write_bytes(b"half")
    synthesize(_generator(), sources, part, 2, 2, seed=1, progress=False)
    assert _files(part) == reference  # identical files, nothing duplicated, missing or half-written


def test_synthesize_refuses_other_settings_in_the_same_folder(tmp_path):
    sources = _sources(tmp_path)[:1]
    synthesize(_generator(), sources, tmp_path / "syn", 1, 1, seed=1, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(differing: \['seed'\]\)"):
        synthesize(_generator(), sources, tmp_path / "syn", 1, 1, seed=2, progress=False)


def test_noise_free_generator_and_empty_point_set(tmp_path):
    empty = [{"name": "empty", "points": np.zeros((0, 2)), "spatial_size": (100, 90)}]
    synthesize(_generator(noise="none"), empty, tmp_path / "syn", 1, 2, progress=False)
    label = np.asarray(Image.open(tmp_path / "syn" / "labels" / "empty_m0.png"))
    image = np.asarray(Image.open(tmp_path / "syn" / "images" / "empty_m0_z0.png"))
    assert label.shape == (100, 90) and label.max() == 0 and image.shape == (100, 90, 3)  # unpadded to the tile
    assert (tmp_path / "syn" / "points" / "empty_m0.csv").read_text() == "y,x\n"


@pytest.mark.parametrize("noise", ["spatial", "mixed", "vector", "none"])
def test_render_windows_applies_the_generator_as_trained(noise):
    """One window is the generator itself; on a larger mask each window sees its own crop of one noise draw."""
    generator = _generator(noise).eval()
    mask = (torch.rand(1, 3, 64, 64) > 0.5).float()
    z = generator.sample_noise(1, 64, 64)
    with torch.no_grad():
        whole = generator(mask, z)
        torch.testing.assert_close(render_windows(generator, mask, z, 64), whole)
        big = torch.cat([mask, mask.flip(-1)], -1)
        noise = generator.sample_noise(1, 64, 128)
        windows = render_windows(generator, big, noise, 64)
        left = generator(big[..., :64], noise if noise is None or noise.ndim == 2 else noise[..., :64])
    assert windows.shape == (1, 3, 64, 128) and torch.isfinite(windows).all()
    assert not torch.allclose(windows, generator(big, noise))  # not one pass over the whole mask
    # the first columns are covered by the first window alone
    torch.testing.assert_close(windows[..., :16], left[..., :16])


def test_synthesize_renders_in_windows_when_asked(tmp_path):
    sources = _sources(tmp_path)[:1]
    synthesize(_generator(), sources, tmp_path / "whole", 1, 1, seed=1, progress=False)
    synthesize(_generator(), sources, tmp_path / "windows", 1, 1, seed=1, progress=False, render_window=64)
    manifest = json.loads((tmp_path / "windows" / "manifest.json").read_text())
    assert manifest["render_window"] == 64 and "render_window" not in json.loads(
        (tmp_path / "whole" / "manifest.json").read_text()
    )
    whole, windows = (_files(tmp_path / k) for k in ("whole", "windows"))
    label = next(k for k in whole if k.startswith("labels/"))
    image = next(k for k in whole if k.startswith("images/"))
    assert whole[label] == windows[label] and whole[image] != windows[image]  # same mask, another rendering
    with pytest.raises(ValueError, match="render_window must be 0"):
        synthesize(_generator(), sources, tmp_path / "bad", 1, 1, progress=False, render_window=-1)


def test_random_point_sources_follow_the_prior():
    sources = random_point_sources(PRIOR, 3, (400, 500), seed=3)
    again = random_point_sources(PRIOR, 3, (400, 500), seed=3)
    assert [s["name"] for s in sources] == ["random0000", "random0001", "random0002"]
    for s, t in zip(sources, again, strict=True):
        assert np.array_equal(s["points"], t["points"]) and s["spatial_size"] == (400, 500)
        assert len(s["points"]) > 10 and (s["points"] >= -0.5).all()
    with pytest.raises(ValueError, match=">= 1"):
        random_point_sources(PRIOR, 0, (100, 100))


def test_generator_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_generator(_generator(), tmp_path / "best.pt")
    torch.save({"generator": _generator(ngf=8).state_dict()}, tmp_path / "best.pt")
    with pytest.raises(ValueError, match=r"do not match the configured generator \(\d+ shape mismatches"):
        load_generator(_generator(ngf=4), tmp_path / "best.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_generator(_generator(), tmp_path / "bad.pt")
    good = _generator()
    torch.save({"generator": good.state_dict(), "mask_net": {}}, tmp_path / "good.pt")
    loaded = load_generator(_generator(ngf=4), tmp_path / "good.pt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), good.state_dict().values(), strict=True))


def test_synthetic_pairs_use_only_the_gan_training_split(tmp_path):
    """No split.json and a seed other than 0: the validation tiles drawn with that seed give no synthetic pair."""
    data = tmp_path / "data"
    for sub in ("images", "points"):
        shutil.copytree(SAMPLE / sub, data / sub)
    configs = [REPO / "bundle" / "configs" / f for f in ("train_synthesis.json", "train_synthesis_smoke.json")]
    parser = parse_configs(*configs, REPO / "bundle" / "configs" / "synthesize.json", data_dir=str(data), seed=1)
    validation = {item["name"] for item in parser.get_parsed_content("datalist")["validation"]}
    assert validation and validation != {item["name"] for item in tile_datalist(data, seed=0)["validation"]}
    names = {source["name"] for source in parser.get_parsed_content("point_sources")}
    assert names == {item["name"] for item in tile_datalist(data, seed=1)["training"]}
    assert not names & validation


def test_colour_match_gives_each_image_the_colours_of_a_training_tile(tmp_path):
    """``colour_match: reinhard``: every image takes the LAB statistics of one real training tile (never a validation
    tile), drawn per image; the masks are the same as without it; the manifest records it."""
    data = tmp_path / "data"
    for sub in ("images", "points"):
        shutil.copytree(SAMPLE / sub, data / sub)
    configs = [REPO / "bundle" / "configs" / f for f in ("train_synthesis.json", "train_synthesis_smoke.json")]
    parser = parse_configs(*configs, REPO / "bundle" / "configs" / "synthesize.json", data_dir=str(data))
    assert parser.get_parsed_content("colour_targets") is None  # off by default
    parser["colour_match"] = "reinhard"
    datalist = parser.get_parsed_content("datalist")
    targets = parser.get_parsed_content("colour_targets")
    assert sorted(Path(t).stem for t in targets) == sorted(item["name"] for item in datalist["training"])
    sources = real_point_sources(datalist)
    plain = synthesize(_generator(), sources, tmp_path / "plain", 1, 3, seed=2, progress=False)
    matched = synthesize(
        _generator(), sources, tmp_path / "matched", 1, 3, seed=2, progress=False, colour_targets=targets
    )
    target_means = np.stack([lab_statistics(read_image(t).transpose(2, 0, 1))[0] for t in targets])
    chosen = set()
    for a, b in zip(
        json.loads(plain.read_text())["training"], json.loads(matched.read_text())["training"], strict=True
    ):
        assert (tmp_path / "plain" / a["label"]).read_bytes() == (tmp_path / "matched" / b["label"]).read_bytes()
        mean = lab_statistics(np.asarray(Image.open(tmp_path / "matched" / b["image"])).transpose(2, 0, 1))[0]
        distance = np.abs(target_means - mean).max(axis=1)
        assert distance.min() < 2.0  # the colours of one of the training tiles (up to rounding and gamut clipping)
        chosen.add(int(distance.argmin()))
    assert len(chosen) > 1 or len(targets) == 1  # drawn per image, not one colour for all
    # the colour diversity report: matched images spread like the real training tiles, the plain ones far less
    reports = {}
    for name in ("plain", "matched"):
        synthesis_colours(str(tmp_path / name), data=str(data), output=str(tmp_path / f"{name}.json"))
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["matched"]["masks"] == len(sources) and reports["matched"]["images"] == 3 * len(sources)
    assert reports["matched"]["real_training_tiles"] == len(targets)
    real = reports["matched"]["real_training_tiles_delta_e"]
    assert reports["plain"]["synthetic_images_delta_e"] < 0.5 * real < reports["matched"]["synthetic_images_delta_e"]
    # the validation tile's colour: matched pairs cover it about as well as the training tiles do, plain ones worse
    (tile,) = reports["matched"]["validation_tiles"].values()
    plain_tile = next(iter(reports["plain"]["validation_tiles"].values()))
    assert plain_tile["nearest_training_tile_delta_e"] == tile["nearest_training_tile_delta_e"] > 0
    assert tile["nearest_synthetic_image_delta_e"] < plain_tile["nearest_synthetic_image_delta_e"]
    manifest = json.loads((tmp_path / "matched" / "manifest.json").read_text())
    assert manifest["colour_match"] == {"method": "reinhard", "targets": [Path(t).stem for t in targets]}
    assert "colour_match" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())
    parser["colour_match"] = "macenko"
    with pytest.raises(RuntimeError) as error:  # MONAI wraps it; the run's error handler prints this one line
        parser.get_parsed_content("colour_targets")
    assert "colour_match must be one of ['none', 'reinhard'], got 'macenko'" in str(clear_error(error.value))
