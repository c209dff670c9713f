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
"""Tests of ``transforms/random_points.py`` and ``scripts/data/point_prior.py``: fitted vs sampled statistics, the
clustering and hard-core parameters, seeding, prior validation and the ``fit_points`` command."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from scipy.spatial import cKDTree

from scripts.cli.fit_points import fit_points
from scripts.data.point_prior import fit_point_prior, point_statistics, pooled_statistics, read_tiles
from tests.helpers import REPO, SAMPLE
from transforms import PointsToEllipseMaskd, RandomPoints, RandomPointsd, load_point_prior, points_inside

SHIPPED = REPO / "bundle" / "configs" / "point_prior_monuseg.json"
SHAPE_KEYS = ("hard_core", "soft_core", "cluster_sigma", "cluster_scale")


def toy_prior(**kwargs) -> dict:
    """A prior with one tile density of 5 points per 10^4 px^2 (MoNuSeg's median is ~4.3)."""
    base = {"mpp": 0.25, "density": {"values": [5.0], "bandwidth": 0.0}, "hard_core": 0.0, "soft_core": 0.0}
    return base | {"cluster_sigma": 0.0, "cluster_scale": 80.0} | kwargs


def sample_tiles(prior: dict, sizes: list, n: int, seed: int = 1, **kwargs) -> list:
    sampler = RandomPoints(prior, **kwargs)
    sampler.set_random_state(seed)
    return [(sampler.sample(sizes[i % len(sizes)]).points, sizes[i % len(sizes)]) for i in range(n)]


def log_ratio(a: float, b: float) -> float:
    return abs(math.log(a / b))


@pytest.fixture(scope="module")
def sample_fit(tmp_path_factory) -> tuple[dict, list]:
    """The ``fit_points`` command on the embedded sample (4 tiles of 256x256, 217 points)."""
    output = tmp_path_factory.mktemp("prior") / "sample_prior.json"
    fit_points(data=str(SAMPLE), output=str(output))
    return json.loads(output.read_text()), read_tiles(SAMPLE)[0]


@pytest.fixture(scope="module")
def monuseg_fit(monuseg: Path) -> tuple[dict, list]:
    items, _ = read_tiles(monuseg, monuseg / "split.json", "train")
    return fit_point_prior(items), items


def test_fitted_prior_reproduces_monuseg_statistics(monuseg_fit):
    prior, items = monuseg_fit
    assert (prior["n_tiles"], prior["n_points"], prior["mpp"]) == (23, 13500, 0.25)
    real = pooled_statistics(items)
    sampled = pooled_statistics(sample_tiles(prior, [s for _, s in items], 400))
    # 400 tiles drawn from the density law: the standard error of the mean density is ~3.5 %
    assert log_ratio(sampled["density"]["mean"], real["density"]["mean"]) < 0.10
    assert log_ratio(sampled["nn"]["0.5"], real["nn"]["0.5"]) < 0.10  # 22.6 px real
    assert log_ratio(sampled["nn"]["0.05"], real["nn"]["0.05"]) < 0.10
    for q in ("100", "200"):  # 1.22 and 2.05 real: clustered at the scale of a few nuclei
        assert log_ratio(sampled["vmr"][q], real["vmr"][q]) < 0.15, q


def test_fitted_prior_reproduces_sample_statistics(sample_fit):
    prior, items = sample_fit
    assert (prior["n_tiles"], prior["n_points"]) == (4, 217)
    real = pooled_statistics(items)
    sampled = pooled_statistics(sample_tiles(prior, [s for _, s in items], 1000))
    assert log_ratio(sampled["density"]["mean"], real["density"]["mean"]) < 0.10
    assert log_ratio(sampled["nn"]["0.5"], real["nn"]["0.5"]) < 0.10
    # four 2x2-quadrat tiles make a noisy VMR (0.84, 0.67 real; regular, not clustered): 25 %
    for q in ("50", "100"):
        assert log_ratio(sampled["vmr"][q], real["vmr"][q]) < 0.25, q
    assert sampled["vmr"]["200"] is None  # 256 px tiles hold no 2x2 quadrats of 200 px


def test_shipped_monuseg_prior_is_a_fresh_fit(monuseg_fit):
    shipped = load_point_prior(SHIPPED)
    fresh, _ = monuseg_fit
    assert shipped["source"]["section"] == "train" and len(shipped["source"]["tiles"]) == 23
    assert (shipped["n_tiles"], shipped["n_points"], shipped["mpp"]) == (fresh["n_tiles"], fresh["n_points"], 0.25)
    assert shipped["density"]["values"] == pytest.approx(fresh["density"]["values"], rel=1e-9)
    assert shipped["density"]["bandwidth"] == pytest.approx(fresh["density"]["bandwidth"], rel=1e-9)
    assert [shipped[k] for k in SHAPE_KEYS] == pytest.approx([fresh[k] for k in SHAPE_KEYS], rel=1e-4)
    assert shipped["statistics"]["nn"] == pytest.approx(fresh["statistics"]["nn"], rel=1e-9)
    assert shipped["statistics"]["vmr"] == pytest.approx(fresh["statistics"]["vmr"], rel=1e-9)


def test_shipped_prior_loads_and_samples_a_monuseg_like_tile():
    sampler = RandomPoints(SHIPPED, spatial_size=(1000, 1000))
    sampler.set_random_state(0)
    stats = pooled_statistics([(sampler.sample().points, (1000, 1000)) for _ in range(40)])
    assert 4.0 < stats["density"]["mean"] < 8.0 and 18.0 < stats["nn"]["0.5"] < 27.0
    assert stats["vmr"]["200"] > 1.3  # clustered, as MoNuSeg (2.05)


def test_cluster_sigma_controls_the_quadrat_variance():
    sizes = [(1000, 1000)]
    poisson = pooled_statistics(sample_tiles(toy_prior(), sizes, 60))
    clustered = pooled_statistics(sample_tiles(toy_prior(cluster_sigma=0.6), sizes, 60))
    # Poisson: VMR 1 (sd of the mean over 60 tiles of 25 quadrats ~0.04)
    assert poisson["vmr"]["100"] == pytest.approx(1.0, abs=0.12)
    assert poisson["vmr"]["200"] == pytest.approx(1.0, abs=0.12)
    # LGCP: VMR - 1 ~ m (exp(sigma^2 rho) - 1) grows with the quadrat's mean count m (5 and 20 points)
    assert clustered["vmr"]["100"] > 1.5 and clustered["vmr"]["200"] > 3.0
    # Poisson NN median is sqrt(ln 2 / pi) / sqrt(lambda) = 21.0 px at 5 per 10^4 px^2 (edges make it longer)
    assert poisson["nn"]["0.5"] == pytest.approx(21.0, rel=0.06)
    # a larger correlation length moves the clustering to larger scales
    wide = pooled_statistics(sample_tiles(toy_prior(cluster_sigma=0.6, cluster_scale=250.0), sizes, 60))
    assert wide["vmr"]["200"] / wide["vmr"]["100"] > clustered["vmr"]["200"] / clustered["vmr"]["100"]


def test_core_makes_points_regular_and_is_never_violated():
    prior = toy_prior(hard_core=0.4, soft_core=0.6, cluster_sigma=0.5, cluster_scale=60.0)
    sampler = RandomPoints(prior)
    sampler.set_random_state(3)
    for size in [(1000, 1000), (300, 1000), (257, 131), (64, 64)]:
        result = sampler.sample(size)
        points = result.points.astype(np.float64)
        assert result.points.dtype == np.float32 and points.shape == (result.requested, 2)
        assert points_inside(points, size).all()
        # points come in placement order: no earlier point within a later point's inhibition distance
        i, j = cKDTree(points).query_pairs(result.radii.max(), output_type="ndarray").T
        i, j = np.minimum(i, j), np.maximum(i, j)
        assert (np.linalg.norm(points[i] - points[j], axis=1) >= result.radii[j] - 1e-3).all()
    # without clustering the local spacing is the tile's: no pair closer than hard_core / sqrt(density)
    sampler = RandomPoints(toy_prior(hard_core=0.5, soft_core=0.5))
    sampler.set_random_state(4)
    points = sampler.sample((1000, 1000)).points
    min_distance = cKDTree(points).query(points, k=2)[0][:, 1].min()
    assert min_distance >= 0.5 * math.sqrt(1e4 / 5.0) - 1e-3  # 11.2 px
    poisson_nn = math.sqrt(math.log(2) / math.pi) * math.sqrt(1e4 / 5.0)
    assert point_statistics(points, (1000, 1000))["nn"]["0.5"] > 1.3 * poisson_nn  # regular
    assert point_statistics(points, (1000, 1000))["vmr"]["100"] < 0.7


def test_seeded_and_deterministic():
    prior = toy_prior(hard_core=0.2, soft_core=0.5, cluster_sigma=0.5)
    draws = {}
    for seed in (7, 7, 8):
        sampler = RandomPoints(prior, spatial_size=(500, 400))
        sampler.set_random_state(seed)
        draws.setdefault(seed, []).append(torch.cat([sampler(), sampler()]))
    assert torch.equal(draws[7][0], draws[7][1])
    assert draws[7][0].shape != draws[8][0].shape or not torch.equal(draws[7][0], draws[8][0])
    out = sampler()
    assert isinstance(out, MetaTensor) and out.meta["spatial_shape"] == (500, 400) and out.meta["requested"] == len(out)


def test_dictionary_transform_and_mask_pipeline():
    chain = Compose(
        [
            RandomPointsd("points", toy_prior(hard_core=0.3, soft_core=0.6), spatial_size=(256, 256)),
            PointsToEllipseMaskd("points", ref_key=None, spatial_size=(256, 256)),
        ]
    ).set_random_state(5)
    first, again = chain({}), chain.set_random_state(5)({})
    assert torch.equal(first["points"], again["points"]) and torch.equal(first["label"], again["label"])
    n = len(first["points"])
    assert 10 < n < 60 and first["label"].shape == (1, 256, 256) and int(first["label"].max()) >= n - 2
    by_ref = RandomPointsd(["a", "b"], toy_prior(), ref_key="image").set_random_state(0)(
        {"image": torch.zeros(3, 128, 96)}
    )
    assert all(points_inside(by_ref[k].numpy(), (128, 96)).all() for k in ("a", "b"))
    with pytest.raises(ValueError, match="spatial_size or ref_key"):
        RandomPointsd("points", toy_prior())


def test_mpp_rescales_distances_and_densities():
    prior = toy_prior(hard_core=0.3, soft_core=0.5, cluster_sigma=0.4, cluster_scale=90.0)
    full = sample_tiles(prior, [(1000, 1000)], 5, seed=2)
    half = sample_tiles(prior, [(500, 500)], 5, seed=2, mpp=0.5)  # the same tissue at half the pixels
    for (a, _), (b, _) in zip(full, half, strict=True):
        assert len(a) == len(b) and len(a) > 300
        np.testing.assert_allclose((a + 0.5) / 2 - 0.5, b, atol=1e-3)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"cluster_sigma": None}, "missing key 'cluster_sigma'"),
        ({"mpp": None}, "missing key 'mpp'"),
        ({"cluster_sigma": -0.1}, "'cluster_sigma' must be a finite number >= 0"),
        ({"cluster_scale": 0}, "'cluster_scale' must be a finite number > 0"),
        ({"hard_core": "0.2"}, "'hard_core' must be a number, got str"),
        ({"soft_core": True}, "'soft_core' must be a number, got bool"),
        ({"hard_core": 0.5, "soft_core": 0.4}, "'soft_core' must satisfy hard_core <= soft_core"),
        ({"soft_core": 0.95}, "'soft_core' must satisfy"),
        ({"mpp": float("nan")}, "'mpp' must be a finite number > 0"),
        ({"density": None}, "'density' missing"),
        ({"density": {"values": [], "bandwidth": 0}}, "'density.values' must be a non-empty list"),
        ({"density": {"values": [4.0, -1.0], "bandwidth": 0}}, r"'density.values\[1\]' must be a finite number > 0"),
        ({"density": {"values": [4.0]}}, "missing key 'density.bandwidth'"),
    ],
)
def test_bad_priors_name_the_key(tmp_path: Path, change: dict, message: str):
    prior = {k: v for k, v in (toy_prior() | change).items() if v is not None}
    with pytest.raises(ValueError, match=f"^point prior: {message}"):
        RandomPoints(prior)
    path = tmp_path / "prior.json"
    path.write_text(json.dumps(prior))
    with pytest.raises(ValueError, match=f"^{path}: {message}"):
        load_point_prior(path)


def test_unreadable_prior_file_is_named(tmp_path: Path):
    with pytest.raises(ValueError, match="missing.json: cannot read the point prior"):
        RandomPoints(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: cannot read the point prior"):
        load_point_prior(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json: expected a JSON object, got list"):
        load_point_prior(tmp_path / "list.json")


def test_fit_points_command_writes_the_prior(sample_fit):
    prior, items = sample_fit
    assert load_point_prior(prior) and prior["source"] == {
        "data": "sample_data",
        "section": None,
        "tiles": sorted(p.stem for p in (SAMPLE / "points").glob("*.csv")),
    }
    assert prior["statistics"] == json.loads(json.dumps(pooled_statistics(items)))
    assert 0 <= prior["hard_core"] <= prior["soft_core"] < 0.9 and prior["cluster_scale"] > 0
    from scripts.__main__ import _commands

    assert _commands()["fit_points"] is fit_points


def test_fit_points_command_errors(tmp_path: Path, capsys):
    def fails(data: Path, *more: str, **kwargs) -> str:
        with pytest.raises(SystemExit) as e:
            fit_points(data=str(data), output=str(tmp_path / "out.json"), **kwargs)
        err = capsys.readouterr().err
        assert e.value.code == 2 and not (tmp_path / "out.json").exists()
        assert all(m in err for m in more), err
        return err

    fails(tmp_path / "nowhere", f"{tmp_path / 'nowhere'}: data folder not found")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    fails(data, f"{data / 'points'}: folder not found")
    (data / "points").mkdir()
    fails(data, f"{data / 'points'}: no point files")
    shutil.copytree(SAMPLE / "images", data / "images", dirs_exist_ok=True)
    shutil.copytree(SAMPLE / "points", data / "points", dirs_exist_ok=True)
    bad = next(iter(sorted((data / "points").glob("*.csv"))))
    bad.write_text("y,x\n1.0,oops\n")
    fails(data, f"{bad}")
    bad.unlink()
    fails(data, f"{data / 'images' / bad.stem}.png: no point file named")
    shutil.copy(SAMPLE / "points" / bad.name, bad)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [], "val": [p.stem for p in (data / "images").glob("*.png")]}))
    fails(data, "no tiles in section 'train'", split=str(split))
    fails(data, "--section: 'test' is not one of train, val", split=str(split), section="test")
