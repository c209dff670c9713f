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
"""Quality measures for the mask->image synthesis stage (the stage-2 monitor): diversity and fidelity.

Images are float tensors ``(N, 3, H, W)`` with RGB values in ``[-1, 1]`` (the generator's tanh range) unless a
function says otherwise.

- :func:`diversity`: the paper's diversity, the per-pixel standard deviation over several noise draws of the
  generator for the same mask, averaged over pixels, channels and masks, in ``[0, 1]`` intensity units.
- :func:`colour_spread`: how far images' mean colours (CIE LAB) lie from their centroid, e.g. across the noise draws
  of one mask against across real tiles.
- :func:`stain_distance`: a colour-distribution distance that needs no pretrained network, the sliced
  Wasserstein-1 distance between the pixel clouds of the two image sets in the haematoxylin-eosin-DAB optical
  density space of ``skimage.color.rgb2hed``.
- :func:`kernel_inception_distance`: KID (Binkowski et al., 2018) between two sets of feature vectors.
  No Inception weights ship with (or can be downloaded by) this project, so the features come from either

  * :func:`encoder_features`: the encoder of a network the project trains itself (e.g. the image->mask network
    F of stage 2). Such a "KID" measures distances in a feature space tuned to nuclei, **not** the Inception
    space of the literature: its values are only comparable between runs that use the same feature network; or
  * :func:`load_feature_network`: a TorchScript file the user exported (e.g. an Inception-v3 pool layer), which
    gives a genuine KID when it is an Inception network fed as it expects.

- :func:`fidelity_report`: the stain distance, plus KID when a feature network is given.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.color import rgb2hed

__all__ = [
    "HookedFeatures",
    "colour_spread",
    "diversity",
    "encoder_features",
    "fidelity_report",
    "kernel_inception_distance",
    "load_feature_network",
    "pooled_features",
    "stain_distance",
]

INPUT_RANGES = ("[-1,1]", "[0,1]")


def _check_images(images: torch.Tensor, name: str, ndim: int = 4) -> torch.Tensor:
    """Validate a ``(N, 3, H, W)`` (or ``(D, N, 3, H, W)`` for ``ndim=5``) image tensor in ``[-1, 1]``."""
    layout = "(N, 3, H, W)" if ndim == 4 else "(D, N, 3, H, W)"
    expected = f"expected {name} of shape {layout} in [-1, 1]"
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{expected}, got {type(images).__name__}.")
    shape = tuple(images.shape)
    if images.ndim != ndim or shape[-3] != 3 or images.numel() == 0:
        raise ValueError(f"{expected}, got {shape}.")
    if not images.is_floating_point():
        raise ValueError(f"{expected}, got dtype {images.dtype}.")
    lo, hi = images.min().item(), images.max().item()
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise ValueError(f"{expected}, got values in [{lo:g}, {hi:g}].")
    return images


def _check_features(features: torch.Tensor, name: str) -> np.ndarray:
    """Validate an ``(N, F)`` feature tensor with N >= 2 and return it as float64 numpy."""
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 1:
        got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"expected {name} of shape (N, F) with N >= 2 samples, got {got}.")
    return features.detach().cpu().double().numpy()


def diversity(images: torch.Tensor) -> float:
    """The paper's diversity: mean over masks, channels and pixels of the per-pixel std over noise draws.

    Args:
        images: ``(D, N, 3, H, W)`` in ``[-1, 1]``: ``D >= 2`` generator samples (noise draws) for each of ``N``
            masks.

    Returns:
        the mean population standard deviation (``ddof=0``, as ``numpy.std``) over the ``D`` draws, in ``[0, 1]``
        intensity units (images are mapped from ``[-1, 1]`` first); 0 when all draws are identical.
    """
    _check_images(images, "images", ndim=5)
    if images.shape[0] < 2:
        raise ValueError(f"diversity needs at least 2 noise draws per mask, got images of shape {tuple(images.shape)}.")
    x = (images.detach().double() + 1.0) / 2.0
    return float(x.std(dim=0, correction=0).mean())


def colour_spread(lab_means: np.ndarray) -> float:
    """Root-mean-square distance (CIE76 delta E) of images' mean LAB colours (``(N, 3)``, e.g. the first output of
    :func:`transforms.lab_statistics` per image) to their centroid: 0 when every image has the same mean colour; about
    1-2 is a just-noticeable difference, above ~5 the colours differ at a glance."""
    means = np.asarray(lab_means, dtype=np.float64)
    if means.ndim != 2 or means.shape[1] != 3 or len(means) < 2:
        raise ValueError(f"colour_spread needs (N >= 2, 3) mean LAB colours, got shape {means.shape}.")
    return float(np.sqrt(((means - means.mean(axis=0)) ** 2).sum(axis=1).mean()))


def _to_hed_pixels(images: torch.Tensor, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` pixels (drawn without replacement) of ``(N, 3, H, W)`` images in ``[-1, 1]``, as ``(n, 3)`` HED OD."""
    rgb = ((images.detach().cpu().double().clamp(-1.0, 1.0) + 1.0) / 2.0).permute(0, 2, 3, 1).reshape(-1, 3)
    idx = rng.choice(rgb.shape[0], size=n, replace=False) if n < rgb.shape[0] else np.arange(rgb.shape[0])
    return rgb2hed(rgb.numpy()[idx], channel_axis=-1)


def stain_distance(
    fake: torch.Tensor, real: torch.Tensor, n_projections: int = 64, max_pixels: int = 200_000, seed: int = 0
) -> float:
    """Sliced Wasserstein-1 distance between the HED optical-density pixel distributions of two image sets.

    Both sets are converted with ``skimage.color.rgb2hed`` (colour deconvolution into haematoxylin, eosin and
    DAB optical densities); the same number of pixels, ``min(max_pixels, pixels in fake, pixels in real)``, is
    drawn from each without replacement, and the 1-D Wasserstein-1 distances of the two clouds projected on
    ``n_projections`` random unit directions in HED space are averaged. Needs no pretrained network, and is
    blind to morphology: it only tells whether the synthetic stain/colour statistics match the real ones.

    Args:
        fake: ``(N, 3, H, W)`` in ``[-1, 1]``.
        real: ``(M, 3, H', W')`` in ``[-1, 1]``; sizes may differ from ``fake``.
        n_projections: number of random projection directions.
        max_pixels: cap on the pixels drawn from each set.
        seed: seeds the pixel subsampling and the directions (the result is deterministic given it).

    Returns:
        the distance in optical-density units (0 for identical pixel sets); symmetric in ``fake`` and ``real``.
    """
    _check_images(fake, "fake")
    _check_images(real, "real")
    if n_projections < 1 or max_pixels < 1:
        raise ValueError(f"n_projections and max_pixels must be >= 1, got {n_projections} and {max_pixels}.")
    n = min(max_pixels, fake[:, 0].numel(), real[:, 0].numel())
    # each set is subsampled by a fresh generator with the same seed, so swapping fake and real swaps the samples
    # (the distance is exactly symmetric); the directions come from a separate stream
    a = _to_hed_pixels(fake, n, np.random.default_rng([seed, 0]))
    b = _to_hed_pixels(real, n, np.random.default_rng([seed, 0]))
    directions = np.random.default_rng([seed, 1]).standard_normal((3, n_projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    # equal sample sizes: W1 of two empirical 1-D distributions is the mean gap between their sorted values
    proj_a, proj_b = np.sort(a @ directions, axis=0), np.sort(b @ directions, axis=0)
    return float(np.abs(proj_a - proj_b).mean())


def _polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of equal-size samples with the cubic polynomial kernel ``(x.y / d + 1) ** 3``."""
    m, d = x.shape
    k_xx, k_yy, k_xy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    off_diag = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(off_diag - 2.0 * k_xy.mean())


def kernel_inception_distance(
    feat_fake: torch.Tensor, feat_real: torch.Tensor, subsets: int = 10, subset_size: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al., 2018, "Demystifying MMD GANs") between two feature sets.

    For each of ``subsets`` rounds, ``subset_size`` vectors (capped at ``min(n_fake, n_real)``) are drawn
    without replacement from each set and the unbiased MMD^2 estimate with the cubic polynomial kernel
    ``k(x, y) = (x.y / d + 1) ** 3`` is computed; the estimator is unbiased, so it can be slightly negative.

    ``monai.metrics.MMDMetric`` is not reused: it computes the unbiased MMD with a *linear* kernel on
    (element-wise mapped) inputs of equal shape, and the cubic kernel has no element-wise feature map.

    Args:
        feat_fake: ``(N, F)`` features of the synthetic images, ``N >= 2``.
        feat_real: ``(M, F)`` features of the real images, ``M >= 2``.
        subsets: number of random subsets.
        subset_size: vectors per subset (and per set).
        seed: seeds the subset draws.

    Returns:
        ``(mean, std)`` of the MMD^2 estimates over the subsets (std with ``ddof=0``, as torch-fidelity).
    """
    x, y = _check_features(feat_fake, "feat_fake"), _check_features(feat_real, "feat_real")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feat_fake and feat_real must have the same feature size, got {x.shape} and {y.shape}.")
    if subsets < 1 or subset_size < 2:
        raise ValueError(f"subsets must be >= 1 and subset_size >= 2, got {subsets} and {subset_size}.")
    m = min(subset_size, x.shape[0], y.shape[0])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        sx = x[rng.choice(x.shape[0], m, replace=False)]
        sy = y[rng.choice(y.shape[0], m, replace=False)]
        values.append(_polynomial_mmd2(sx, sy))
    return float(np.mean(values)), float(np.std(values))


class HookedFeatures(torch.nn.Module):
    """Wrap a network so that calling it returns the outputs of some of its submodules (via forward hooks).

    ``HookedFeatures(net, ["encoder.0", "encoder.1"])(x)`` runs ``net(x)`` and returns the list of the outputs of
    ``net.get_submodule("encoder.0")`` and ``...("encoder.1")`` in that order (the network's own output is
    discarded). Call :meth:`remove` to detach the hooks from the wrapped network.

    Args:
        module: any ``torch.nn.Module``.
        layer_names: dotted names of submodules, as in ``module.named_modules()``.
    """

    def __init__(self, module: torch.nn.Module, layer_names: Sequence[str]) -> None:
        super().__init__()
        if isinstance(layer_names, str) or len(layer_names) == 0:
            raise ValueError(f"layer_names must be a non-empty sequence of submodule names, got {layer_names!r}.")
        available = dict(module.named_modules())
        missing = [name for name in layer_names if name not in available or name == ""]
        if missing:
            names = [n for n in available if n]
            raise ValueError(f"{type(module).__name__} has no submodule(s) {missing}; available: {names}.")
        self.module = module
        self.layer_names = list(layer_names)
        self._outputs: dict[str, Any] = {}
        self._handles = [available[name].register_forward_hook(self._hook(name)) for name in self.layer_names]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            self._outputs[name] = output

        return hook

    def forward(self, x: torch.Tensor) -> list[Any]:
        self._outputs = {}
        try:
            self.module(x)
            return [self._outputs[name] for name in self.layer_names]
        finally:
            self._outputs = {}

    def remove(self) -> None:
        """Remove the forward hooks from the wrapped network."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


class _EncodeFeatures(torch.nn.Module):
    """Calls ``module.encode(x)`` (kept as a module so that eval/train modes reach the wrapped network)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> Any:
        return self.module.encode(x)


def encoder_features(mask_net: torch.nn.Module, layer_names: Sequence[str] | None = None) -> torch.nn.Module:
    """A feature network made of the encoder of the project's own image->mask network (or any network).

    Features learnt by the project on nuclei, not Inception features: a KID computed with them is only
    comparable between runs that use the same (frozen) network.

    Args:
        mask_net: e.g. the stage-2 network F (image -> HV + NP maps).
        layer_names: submodules whose outputs are the features (see :class:`HookedFeatures`); if None,
            ``mask_net.encode(x)`` is used, which must return a feature map or a list of them.

    Returns:
        a module mapping images to the feature map(s), to pass to :func:`pooled_features`.
    """
    if layer_names is not None:
        return HookedFeatures(mask_net, layer_names)
    if not callable(getattr(mask_net, "encode", None)):
        raise ValueError(
            f"{type(mask_net).__name__} has no encode(x) method: give the names of the encoder layers to hook "
            "with layer_names."
        )
    return _EncodeFeatures(mask_net)


def load_feature_network(path: str | Path) -> torch.nn.Module:
    """Load a user-supplied TorchScript feature network (e.g. an exported Inception-v3) on CPU, in eval mode.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when ``path`` is not a readable TorchScript file (e.g. a corrupt file or a plain checkpoint).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"feature network file {str(path)!r} does not exist.")
    if not path.is_file():
        raise ValueError(f"feature network path {str(path)!r} is not a file.")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch >= 2.13 but still the format asked for
            warnings.filterwarnings("ignore", message=".torch.jit.* is deprecated", category=DeprecationWarning)
            network = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"feature network file {str(path)!r} is not a valid TorchScript file (save one with "
            f"torch.jit.script(model).save(path)); torch.jit.load failed with: {reason}"
        ) from None
    return network.eval()


def _pool(output: Any) -> list[torch.Tensor]:
    """Global-average-pool every feature map in a network output (tensor, dict, list or tuple) to ``(B, C)``."""
    if isinstance(output, torch.Tensor):
        if output.ndim < 2:
            raise ValueError(f"feature maps must be (B, C, ...), got a tensor of shape {tuple(output.shape)}.")
        return [output.flatten(2).mean(dim=2) if output.ndim > 2 else output]
    if isinstance(output, Mapping):
        return [p for value in output.values() for p in _pool(value)]
    if isinstance(output, (list, tuple)):
        return [p for value in output for p in _pool(value)]
    raise ValueError(f"a feature network must return tensors (or a dict/list/tuple of them), got {type(output)}.")


def pooled_features(
    network: Callable[[torch.Tensor], Any], images: torch.Tensor, batch_size: int = 16, input_range: str = "[-1,1]"
) -> torch.Tensor:
    """Run a feature network over images in batches and global-average-pool its feature maps.

    Args:
        network: maps a ``(B, 3, H, W)`` batch to a feature map ``(B, C, ...)``, an already pooled ``(B, C)``, or
            a dict/list/tuple of such tensors, whose pooled vectors are concatenated (e.g. from
            :func:`encoder_features` or :func:`load_feature_network`). An ``nn.Module`` is run in eval mode under
            ``torch.no_grad`` on the device of its parameters, and its train/eval modes are restored afterwards.
        images: ``(N, 3, H, W)`` in ``[-1, 1]``.
        batch_size: images per forward pass.
        input_range: ``"[-1,1]"`` feeds the images as they are, ``"[0,1]"`` maps them to ``[0, 1]`` first.

    Returns:
        ``(N, F)`` float32 features on CPU.
    """
    _check_images(images, "images")
    if input_range not in INPUT_RANGES:
        raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    device = images.device
    modes: dict[torch.nn.Module, bool] = {}
    if isinstance(network, torch.nn.Module):
        modes = {m: m.training for m in network.modules()}
        device = next(iter(network.parameters()), images).device
        network.eval()
    features = []
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(device=device, dtype=torch.float32)
                if input_range == "[0,1]":
                    batch = (batch + 1.0) / 2.0
                features.append(torch.cat(_pool(network(batch)), dim=1).float().cpu())
    finally:
        for m, training in modes.items():
            m.training = training
    return torch.cat(features, dim=0)


def fidelity_report(
    fake: torch.Tensor,
    real: torch.Tensor,
    feature_network: Callable[[torch.Tensor], Any] | None = None,
    input_range: str = "[-1,1]",
    batch_size: int = 16,
) -> dict[str, float]:
    """Fidelity of synthetic images against real ones.

    Args:
        fake: ``(N, 3, H, W)`` synthetic images in ``[-1, 1]``.
        real: ``(M, 3, H', W')`` real images in ``[-1, 1]``.
        feature_network: optional feature network for KID (see :func:`pooled_features`); KID needs ``N, M >= 2``.
        input_range: how images are fed to ``feature_network`` (see :func:`pooled_features`).
        batch_size: images per forward pass of ``feature_network``.

    Returns:
        ``{"stain_distance": ...}``, plus ``"kid"`` and ``"kid_std"`` when ``feature_network`` is given.
    """
    report = {"stain_distance": stain_distance(fake, real)}
    if feature_network is not None:
        feat_fake = pooled_features(feature_network, fake, batch_size=batch_size, input_range=input_range)
        feat_real = pooled_features(feature_network, real, batch_size=batch_size, input_range=input_range)
        report["kid"], report["kid_std"] = kernel_inception_distance(feat_fake, feat_real)
    return report
