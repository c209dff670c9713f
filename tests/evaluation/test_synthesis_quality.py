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
"""Tests of ``scripts.evaluation.synthesis_quality``: diversity, stain distance, KID, feature networks and
the report."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skimage.color import hed2rgb

from scripts.evaluation.synthesis_quality import (
    HookedFeatures,
    colour_spread,
    diversity,
    encoder_features,
    fidelity_report,
    kernel_inception_distance,
    load_feature_network,
    pooled_features,
    stain_distance,
)


def he_images(n: int, seed: int, eosin_shift: float = 0.0, size: int = 32) -> torch.Tensor:
    """Random H&E-like images ``(n, 3, size, size)`` in [-1, 1] made from HED concentrations with hed2rgb."""
    rng = np.random.default_rng(seed)
    hed = np.zeros((n, size, size, 3))
    hed[..., 0] = rng.gamma(2.0, 0.02, (n, size, size))  # haematoxylin
    hed[..., 1] = rng.gamma(4.0, 0.01, (n, size, size)) + eosin_shift  # eosin
    rgb = hed2rgb(hed, channel_axis=-1).clip(0, 1)
    return torch.from_numpy(rgb * 2 - 1).permute(0, 3, 1, 2).float()


def numpy_kid_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased polynomial-kernel MMD^2, written out with explicit loops over pairs."""
    m, d = x.shape

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
        self.down = torch.nn.Sequential(torch.nn.Conv2d(4, 6, 3, stride=2, padding=1), torch.nn.BatchNorm2d(6))
        self.head = torch.nn.Conv2d(6, 1, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.stem(x)
        return [a, self.down(a)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x)[-1])


# ---------------------------------------------------------------- diversity


def test_diversity_identical_draws_is_zero():
    draw = torch.rand(1, 2, 3, 8, 8) * 2 - 1
    assert diversity(draw.expand(5, -1, -1, -1, -1)) == pytest.approx(0.0, abs=1e-12)


def test_diversity_matches_numpy():
    x = np.random.default_rng(0).uniform(-1, 1, (4, 3, 3, 6, 5))
    expected = np.std((x + 1) / 2, axis=0).mean()
    assert diversity(torch.from_numpy(x)) == pytest.approx(expected, rel=1e-10)
    # two draws at -1 and 1 everywhere: std 0.5 in [0, 1] units
    assert diversity(torch.stack([-torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4)])) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.zeros(1, 2, 3, 4, 4), "at least 2 noise draws"),
        (torch.zeros(2, 3, 4, 4), r"\(D, N, 3, H, W\)"),
        (torch.zeros(2, 2, 1, 4, 4), r"got \(2, 2, 1, 4, 4\)"),
        (torch.zeros(2, 0, 3, 4, 4), "got"),
        (torch.full((2, 1, 3, 4, 4), 255.0), r"in \[-1, 1\]"),
    ],
)
def test_diversity_rejects_bad_input(images, match):
    with pytest.raises(ValueError, match=match):
        diversity(images)


# ---------------------------------------------------------------- stain distance


def test_stain_distance_separates_stain_shift():
    a, b = he_images(4, seed=1), he_images(4, seed=2)
    shifted = he_images(4, seed=2, eosin_shift=0.05)
    same = stain_distance(a, b)
    shift = stain_distance(a, shifted)
    assert stain_distance(a, a) == pytest.approx(0.0, abs=1e-12)
    assert same < 0.2 * shift
    assert shift > 0.01  # optical-density units
    assert stain_distance(shifted, a) == pytest.approx(shift, rel=1e-12)  # symmetric
    assert stain_distance(a, shifted, seed=0) == shift  # deterministic
    assert stain_distance(a, shifted, seed=3, max_pixels=500) == stain_distance(a, shifted, seed=3, max_pixels=500)


def test_stain_distance_different_sizes_and_subsampling():
    a, b = he_images(3, seed=1, size=24), he_images(2, seed=2, size=16)
    full = stain_distance(a, b)
    sub = stain_distance(a, b, max_pixels=200, n_projections=16, seed=5)
    assert 0 <= sub and abs(sub - full) < 0.02


def test_stain_distance_rejects_bad_input():
    good = he_images(1, seed=0, size=8)
    with pytest.raises(ValueError, match=r"fake of shape \(N, 3, H, W\) in \[-1, 1\], got \(3, 8, 8\)"):
        stain_distance(good[0], good)
    with pytest.raises(ValueError, match="real"):
        stain_distance(good, torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="n_projections"):
        stain_distance(good, good, n_projections=0)


# ---------------------------------------------------------------- KID


def test_kid_matches_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.5, 1.0, size=(9, 5))
    # subset_size >= both sizes: capped at 7; a single subset of x is all of x (permuted)
    mean, std = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), subsets=1, subset_size=50)
    sel = np.random.default_rng(0)
    ix, iy = sel.choice(7, 7, replace=False), sel.choice(9, 7, replace=False)
    assert mean == pytest.approx(numpy_kid_mmd2(x[ix], y[iy]), rel=1e-9)
    assert std == 0.0
    mean, std = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), subsets=4, subset_size=5, seed=2)
    sel = np.random.default_rng(2)
    values = []
    for _ in range(4):
        ix, iy = sel.choice(7, 5, replace=False), sel.choice(9, 5, replace=False)
        values.append(numpy_kid_mmd2(x[ix], y[iy]))
    assert (mean, std) == pytest.approx((np.mean(values), np.std(values)), rel=1e-9)


def test_kid_same_vs_shifted():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 16, generator=g), torch.randn(200, 16, generator=g)
    same, same_std = kernel_inception_distance(a, b)
    shifted, _ = kernel_inception_distance(a, b + 0.5)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 0.1 and shifted > 20 * abs(same)
    assert kernel_inception_distance(a, b + 0.5) == (shifted, _)


@pytest.mark.parametrize(
    "fake, real, match",
    [
        (torch.zeros(1, 4), torch.zeros(5, 4), r"feat_fake of shape \(N, F\) with N >= 2"),
        (torch.zeros(5, 4, 1), torch.zeros(5, 4), r"got \(5, 4, 1\)"),
        (torch.zeros(5, 4), torch.zeros(0, 4), "feat_real"),
        (torch.zeros(5, 4), torch.zeros(5, 3), "same feature size"),
    ],
)
def test_kid_rejects_bad_input(fake, real, match):
    with pytest.raises(ValueError, match=match):
        kernel_inception_distance(fake, real)


# ---------------------------------------------------------------- feature networks


def test_hooked_features_on_sequential():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3, stride=2, padding=1)
    )
    hooked = HookedFeatures(net, ["1", "2"])
    x = torch.randn(2, 3, 8, 8)
    outs = hooked(x)
    assert [tuple(o.shape) for o in outs] == [(2, 4, 8, 8), (2, 2, 4, 4)]
    torch.testing.assert_close(outs[1], net(x))
    feats = pooled_features(hooked, x.clamp(-1, 1), batch_size=1)
    assert feats.shape == (2, 6)
    torch.testing.assert_close(feats[:, 4:], net(x.clamp(-1, 1)).mean(dim=(2, 3)))
    hooked.remove()
    assert not net[1]._forward_hooks and not net[2]._forward_hooks
    with pytest.raises(ValueError, match=r"no submodule\(s\) \['9'\]"):
        HookedFeatures(net, ["9"])
    with pytest.raises(ValueError, match="non-empty"):
        HookedFeatures(net, [])


def test_encoder_features_and_pooling_modes():
    net = TinyNet().train()
    net.head.eval()  # a frozen part must stay frozen
    x = he_images(5, seed=0, size=16)
    via_encode = pooled_features(encoder_features(net), x, batch_size=2)
    via_hooks = pooled_features(encoder_features(net, ["stem", "down"]), x, batch_size=3)
    assert via_encode.shape == (5, 10) and via_encode.dtype == torch.float32
    torch.testing.assert_close(via_encode, via_hooks)
    assert net.training and net.down[1].training and not net.head.training  # modes restored
    assert net.down[1].num_batches_tracked.item() == 0  # ran in eval mode: BN statistics untouched
    # input range, dict and already-pooled outputs
    ref = [f.mean(dim=(2, 3)) for f in net.eval().encode((x + 1) / 2)]
    torch.testing.assert_close(pooled_features(encoder_features(net), x, input_range="[0,1]"), torch.cat(ref, 1))
    as_dict = pooled_features(lambda b: {"a": b, "b": b.flatten(2).amax(2)}, x)
    torch.testing.assert_close(as_dict, torch.cat([x.mean(dim=(2, 3)), x.flatten(2).amax(2)], 1))
    with pytest.raises(ValueError, match="no encode"):
        encoder_features(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="input_range"):
        pooled_features(net, x, input_range="0-255")
    with pytest.raises(ValueError, match="must return tensors"):
        pooled_features(lambda b: "oops", x)


def test_load_feature_network(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    path = tmp_path / "features.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(net).save(str(path))
    loaded = load_feature_network(path)
    assert not loaded.training
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(pooled_features(loaded, x), net(x).mean(dim=(2, 3)))

    with pytest.raises(FileNotFoundError, match="missing.pt' does not exist"):
        load_feature_network(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(ValueError, match="corrupt.pt' is not a valid TorchScript file") as err:
        load_feature_network(str(corrupt))
    assert err.value.__cause__ is None and err.value.__suppress_context__
    state = tmp_path / "state.pt"
    torch.save(net.state_dict(), state)  # a plain checkpoint is not TorchScript either
    with pytest.raises(ValueError, match="state.pt' is not a valid TorchScript"):
        load_feature_network(state)
    with pytest.raises(ValueError, match="is not a file"):
        load_feature_network(tmp_path)


# ---------------------------------------------------------------- report


def test_fidelity_report():
    real, fake = he_images(6, seed=1, size=16), he_images(6, seed=2, size=16, eosin_shift=0.05)
    report = fidelity_report(fake, real)
    assert set(report) == {"stain_distance"} and report["stain_distance"] == stain_distance(fake, real)
    report = fidelity_report(fake, real, feature_network=encoder_features(TinyNet()))
    assert set(report) == {"stain_distance", "kid", "kid_std"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in report.values())
    assert report["kid_std"] >= 0
    with pytest.raises(ValueError, match=r"expected fake of shape \(N, 3, H, W\)"):
        fidelity_report(fake[:, :1], real)


def test_colour_spread_is_the_rms_delta_e_to_the_centroid():
    assert colour_spread(np.array([[50.0, 20.0, -5.0]] * 4)) == 0.0
    # two colours 6 delta E apart: each lies 3 from their centroid
    assert colour_spread(np.array([[50.0, 20.0, -5.0], [50.0, 20.0, 1.0]])) == pytest.approx(3.0)
    points = np.random.default_rng(0).normal(size=(50, 3))
    expected = np.sqrt(np.mean(np.sum((points - points.mean(0)) ** 2, axis=1)))
    assert colour_spread(points) == pytest.approx(expected) and colour_spread(points + 30) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"needs \(N >= 2, 3\) mean LAB colours"):
        colour_spread(np.zeros((1, 3)))
