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
"""Tests of the networks: shapes, gradients, noise handling, TorchScript export, parameter counts."""

import io

import pytest
import torch
from monai.apps.pathology.losses import HoVerNetLoss
from monai.apps.pathology.transforms import HoVerNetInstanceMapPostProcessing
from monai.losses import PatchAdversarialLoss
from monai.networks.utils import convert_to_torchscript
from monai.utils.enums import HoVerNetBranch
from torch.nn.utils import parametrize

from networks import HoVerUNet, ImageToMaskNet, MaskToImageGenerator, SpectralPatchDiscriminator, remove_spectral_norm

NP, HV = HoVerNetBranch.NP.value, HoVerNetBranch.HV.value
SMALL_G = {"ngf": 2, "z_dim": 3, "spade_hidden": 4}
SMALL_M = {"features": (4, 8, 16), "blocks_per_stage": 1}


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def small_generator(noise: str = "vector", **kwargs) -> MaskToImageGenerator:
    torch.manual_seed(0)
    return MaskToImageGenerator(channel_multipliers=(8, 8, 4, 2, 1), noise=noise, **{**SMALL_G, **kwargs})


def assert_all_grads(net: torch.nn.Module) -> None:
    missing = [name for name, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def script_roundtrip(net: torch.nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


# ---------------------------------------------------------------- generator


@pytest.mark.parametrize(
    "multipliers, sizes",
    [((8, 8, 4, 2, 1), (64, 128)), ((16, 16, 16, 8, 4, 2, 1), (128, 256))],
)
def test_generator_forward_backward(multipliers, sizes):
    g = MaskToImageGenerator(channel_multipliers=multipliers, **SMALL_G)
    assert g.num_blocks == len(multipliers) - 1
    for size in sizes:
        g.zero_grad()
        s = torch.rand(2, 3, size, size)
        y = g(s)
        assert y.shape == (2, 3, size, size)
        assert y.abs().max() <= 1
        y.mean().backward()
        assert_all_grads(g)


@pytest.mark.parametrize("noise", ["vector", "spatial", "mixed"])
def test_generator_noise(noise):
    g = small_generator(noise).eval()
    s = torch.rand(2, 3, 64, 64)
    z1, z2 = g.sample_noise(2, 64, 64), g.sample_noise(2, 64, 64)
    assert z1.shape == ((2, 3) if noise == "vector" else (2, 3, 64, 64))
    if noise == "mixed":  # channel 0 (3 // 2 = 1 channel): one value per image; channels 1-2: per pixel
        assert (z1[:, :1] == z1[:, :1, :1, :1]).all() and z1[0, 0, 0, 0] != z1[1, 0, 0, 0]
        assert z1[:, 1:].std(dim=(2, 3)).min() > 0.8
    with torch.no_grad():
        y1, y1b, y2 = g(s, z1), g(s, z1.clone()), g(s, z2)
        assert torch.equal(y1, y1b)
        assert (y1 - y2).abs().mean() > 1e-4
        assert (g(s) - g(s)).abs().mean() > 1e-4  # z drawn when missing
    bad = torch.randn(2, 4) if noise == "vector" else torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match=f"{noise} noise z must be"):
        g(s, bad)


def test_generator_without_noise():
    g = small_generator("none").eval()
    s = torch.rand(1, 3, 64, 64)
    assert g.sample_noise(1, 64, 64) is None
    assert torch.equal(g(s), g(s))
    assert g.head.in_channels == 3
    with pytest.raises(ValueError, match="z must be None"):
        g(s, torch.randn(1, 3))
    with pytest.raises(ValueError, match="noise must be one of"):
        MaskToImageGenerator(noise="3d")


def test_generator_input_validation():
    g = small_generator()
    with pytest.raises(ValueError, match="multiples of 8"):
        g(torch.rand(1, 3, 64, 60))
    with pytest.raises(ValueError, match="at least 16"):
        g(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        g(torch.rand(1, 2, 64, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        MaskToImageGenerator(**SMALL_G)(torch.rand(1, 3, 80, 80))


@pytest.mark.parametrize("noise", ["none", "vector", "spatial", "mixed"])
def test_generator_torchscript(noise, tmp_path):
    g = small_generator(noise)
    s = torch.rand(2, 3, 32, 32)
    g(s)  # a training step moves the spectral-norm vectors
    g.eval()
    z = g.sample_noise(2, 32, 32)
    with torch.no_grad():
        expected = g(s, z)
        remove_spectral_norm(g)
        assert not any(parametrize.is_parametrized(m) for m in g.modules())
        assert torch.allclose(g(s, z), expected, atol=1e-6)
        path = tmp_path / "g.ts"
        convert_to_torchscript(g, str(path), verify=True, inputs=[s, z], device=torch.device("cpu"), atol=1e-5)
        loaded = torch.jit.load(str(path))
        assert (loaded(s, z) - expected).abs().max() < 1e-5
        assert loaded(s).shape == s.shape
        z_scripted = loaded.sample_noise(2, 32, 32)
        assert z_scripted is None if z is None else z_scripted.shape == z.shape


def test_generator_parameter_counts():
    doc = MaskToImageGenerator.__doc__
    configs = [{}, {"ngf": 16, "channel_multipliers": (16, 16, 8, 4, 2, 1), "z_dim": 16}]
    configs.append({"ngf": 16, "channel_multipliers": (8, 8, 4, 2, 1), "z_dim": 16})
    for kwargs in configs:
        assert f"{n_params(MaskToImageGenerator(**kwargs)):,}" in doc, kwargs


# ---------------------------------------------------------------- image -> mask net


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_mask_net_forward_backward(norm):
    net = ImageToMaskNet(norm=norm, **SMALL_M)
    for size in (32, 64):
        net.zero_grad()
        out = net(torch.rand(2, 3, size, size))
        assert set(out) == {NP, HV}
        assert out[NP].shape == out[HV].shape == (2, 2, size, size)
        assert out[HV].abs().max() <= 1
        (out[NP].mean() + out[HV].mean()).backward()
        assert_all_grads(net)


@pytest.mark.filterwarnings("ignore:Parameter .min_size. is deprecated")  # skimage, inside MONAI
def test_mask_net_monai_loss_and_postprocessing():
    torch.manual_seed(0)
    net = ImageToMaskNet(**SMALL_M)
    out = net(torch.rand(2, 3, 32, 32))
    fg = (torch.rand(2, 1, 32, 32) > 0.5).float()
    target = {NP: torch.cat([1 - fg, fg], 1), HV: torch.rand(2, 2, 32, 32) * 2 - 1}
    loss = HoVerNetLoss()(out, target)
    assert torch.isfinite(loss)
    loss.backward()
    post = HoVerNetInstanceMapPostProcessing(min_num_points=1)
    _, instances = post(out[NP][0].detach(), out[HV][0].detach())
    assert instances.shape == (1, 32, 32)


def test_mask_net_linear_hv():
    tanh_net, linear_net = ImageToMaskNet(**SMALL_M).eval(), ImageToMaskNet(hv_activation=None, **SMALL_M).eval()
    linear_net.load_state_dict(tanh_net.state_dict())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.tanh(linear_net(x)[HV]), tanh_net(x)[HV], atol=1e-6)
    with pytest.raises(ValueError, match="hv_activation"):
        ImageToMaskNet(hv_activation="sigmoid")


def test_mask_net_encoder_decoder_split():
    net = ImageToMaskNet(**SMALL_M)
    enc, dec = {id(p) for p in net.encoder_parameters()}, {id(p) for p in net.decoder_parameters()}
    assert enc and dec and not enc & dec
    assert enc | dec == {id(p) for p in net.parameters()}
    for p in net.encoder_parameters():
        p.requires_grad_(False)
    out = net(torch.rand(1, 3, 32, 32))
    (out[NP].mean() + out[HV].mean()).backward()
    assert all(p.grad is None for p in net.encoder_parameters())
    assert all(p.grad is not None for p in net.decoder_parameters())


def test_mask_net_input_validation():
    net = ImageToMaskNet(**SMALL_M)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.rand(1, 3, 32, 30))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="norm must be"):
        ImageToMaskNet(norm="group")


def test_mask_net_torchscript():
    net = ImageToMaskNet(**SMALL_M)
    net(torch.rand(2, 3, 32, 32))  # update the batch-norm statistics
    net.eval()
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        expected, scripted = net(x), script_roundtrip(net)(x)
    for key in (NP, HV):
        assert (scripted[key] - expected[key]).abs().max() < 1e-5


def test_mask_net_parameter_counts():
    doc = ImageToMaskNet.__doc__
    assert f"{n_params(ImageToMaskNet()):,}" in doc
    assert f"{n_params(ImageToMaskNet(features=(16, 32, 64, 128), blocks_per_stage=1)):,}" in doc


# ---------------------------------------------------------------- discriminator


def test_discriminator_forward_backward():
    d = SpectralPatchDiscriminator(ndf=4)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(parametrize.is_parametrized(c, "weight") for c in convs)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._NormBase) for m in d.modules())
    loss_fn = PatchAdversarialLoss(criterion="least_squares")
    for size, out_size in ((64, 6), (128, 14)):
        d.zero_grad()
        y = d(torch.rand(2, 3, size, size))
        assert y.shape == (2, 1, out_size, out_size)
        loss = loss_fn(y, target_is_real=True, for_discriminator=True)
        assert torch.allclose(loss, loss_fn([y], target_is_real=True, for_discriminator=True))
        loss.backward()
        assert_all_grads(d)


def test_discriminator_receptive_field():
    d = SpectralPatchDiscriminator(ndf=4).double()
    x = torch.randn(1, 3, 128, 128, dtype=torch.float64, requires_grad=True)
    y = d(x)
    y[0, 0, 7, 7].backward()
    nonzero = (x.grad[0].abs().sum(0) > 0).nonzero()
    extent = nonzero.max(0).values - nonzero.min(0).values + 1
    assert extent.tolist() == [70, 70]


def test_discriminator_width_cap_and_validation():
    d = SpectralPatchDiscriminator(ndf=2, num_layers=5, spectral_norm=False)
    assert max(m.out_channels for m in d.modules() if isinstance(m, torch.nn.Conv2d)) == 16
    assert d(torch.rand(1, 3, 96, 96)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="at least 96"):
        d(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        d(torch.rand(1, 2, 96, 96))


def test_discriminator_torchscript():
    d = SpectralPatchDiscriminator(in_channels=2, ndf=4)
    x = torch.rand(2, 2, 64, 64)
    d(x)
    d.eval()
    with torch.no_grad():
        expected = d(x)
        remove_spectral_norm(d)
        assert torch.allclose(d(x), expected, atol=1e-6)
        assert (script_roundtrip(d)(x) - expected).abs().max() < 1e-5


def test_discriminator_parameter_counts():
    for ndf in (32, 64):
        assert f"{n_params(SpectralPatchDiscriminator(ndf=ndf)):,}" in SpectralPatchDiscriminator.__doc__


def test_remove_spectral_norm_hook_variant():
    conv = torch.nn.utils.spectral_norm(torch.nn.Conv2d(3, 4, 3))
    x = torch.rand(1, 3, 8, 8)
    conv(x)
    conv.eval()
    expected = conv(x)
    remove_spectral_norm(conv)
    assert not conv._forward_pre_hooks and isinstance(conv.weight, torch.nn.Parameter)
    assert torch.allclose(conv(x), expected, atol=1e-6)


def test_hover_unet_is_basic_unet_with_hover_outputs():
    torch.manual_seed(0)
    net = HoVerUNet()
    assert sum(p.numel() for p in net.parameters()) == 1_948_468
    x = torch.rand(2, 3, 64, 48)
    out = net(x)
    assert out[HoVerNetBranch.NP.value].shape == out[HoVerNetBranch.HV.value].shape == (2, 2, 64, 48)
    raw = net.unet(x)  # the 4 channels of MONAI's BasicUNet: NP logits, then linear HV (no tanh)
    assert torch.equal(out[HoVerNetBranch.NP.value], raw[:, :2]) and torch.equal(
        out[HoVerNetBranch.HV.value], raw[:, 2:]
    )
    loss = HoVerNetLoss()(out, {k: torch.rand_like(v) for k, v in out.items()})
    loss.backward()
    encoder = set(map(id, net.encoder_parameters()))
    assert 0 < len(encoder) < len(list(net.parameters()))
    scripted = convert_to_torchscript(net.eval())
    with torch.no_grad():
        assert torch.allclose(scripted(x)[HoVerNetBranch.HV.value], net(x)[HoVerNetBranch.HV.value], atol=1e-5)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.rand(1, 3, 40, 48))


def test_hover_unet_skips_monai_zero_width_padding_with_the_same_outputs():
    """Sides are multiples of 16, so MONAI's UpCat padding (a full copy of each upsampled tensor) is off: the outputs
    are exactly those of the padded network, and no pad runs."""
    torch.manual_seed(0)
    net = HoVerUNet().eval()
    upcats = [net.unet.upcat_4, net.unet.upcat_3, net.unet.upcat_2, net.unet.upcat_1]
    assert not any(u.is_pad for u in upcats)
    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad(), torch.profiler.profile() as prof:
        fast = net.unet(x)
    assert not [e for e in prof.key_averages() if "pad" in e.key]
    for u in upcats:
        u.is_pad = True
    with torch.no_grad():
        assert torch.equal(net.unet(x), fast)


def test_weights_of_another_width_name_the_features_to_configure(tmp_path):
    """A wide HoVerUNet's weights (MONAI's widths) loaded into the default network: the error says which features
    they need."""
    from networks import HoVerNetSingleOutput
    from networks.hover_unet import hover_unet_features
    from scripts.engines.checkpoint import load_network_weights

    wide = HoVerUNet(features=(32, 32, 64, 128, 256, 32))
    assert hover_unet_features(wide.state_dict()) == (32, 32, 64, 128, 256, 32)
    assert hover_unet_features(HoVerNetSingleOutput(HoVerUNet()).state_dict()) == (16, 32, 64, 128, 256, 16)
    assert hover_unet_features(ImageToMaskNet(features=(8, 16, 32), blocks_per_stage=1).state_dict()) is None
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    hint = r"--network_def#network#features '\[32,32,64,128,256,32\]' \(inference.json\)"
    with pytest.raises(ValueError, match=hint):
        load_network_weights(HoVerNetSingleOutput(HoVerUNet()), tmp_path / "wide.pt", what="segmentation model")
