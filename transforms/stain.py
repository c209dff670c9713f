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
"""Stain of H&E images: random variation in haematoxylin-eosin-DAB (HED) optical-density space, and colour transfer
to a reference image in LAB (Reinhard et al., 2001)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type
from skimage.color import hed_from_rgb, lab2rgb, rgb2lab, rgb_from_hed

__all__ = ["RandHEDJitter", "RandHEDJitterd", "ReinhardColorMatch", "lab_statistics"]

_MIN_INTENSITY = 1e-6  # as scikit-image's rgb2hed
_LOG_ADJUST = float(np.log(_MIN_INTENSITY))  # densities in rgb2hed's units: -log(I) / -log(1e-6)


def _pair(value: float | Sequence[float], name: str) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (3,)).copy()
    if (arr < 0).any():
        raise ValueError(f"{name} must be >= 0 (one value, or one per H, E, D channel), got {value}.")
    return arr


class RandHEDJitter(RandomizableTransform):
    """Random stain variation (Tellez et al., 2018): the RGB image is unmixed into H, E and D optical densities with
    scikit-image's colour-deconvolution matrices (``hed_from_rgb``; densities in ``rgb2hed``'s units), each density
    is scaled by ``1 + U(-scale, scale)`` and shifted by ``U(-shift, shift)``, then mixed back (``rgb_from_hed``).

    Unlike ``rgb2hed`` / ``hed2rgb``, the densities are not clipped at 0 between the two, so without jitter the image
    comes back unchanged (``rgb2hed`` clips the pixels outside the stains' cone, e.g. pink stroma and background, and
    ``hed2rgb`` of that darkens a tenth of an H&E tile by up to 45 grey levels).

    Input: a ``(3, H, W)`` RGB image with intensities in ``[0, 1]`` (after ``ScaleIntensityRange``); the output has
    the same type, range and shape.

    Args:
        scale: half-width of the multiplicative jitter per channel (one value, or three for H, E, D).
        shift: half-width of the additive jitter per channel, in scikit-image's HED units (a pure-white pixel is 0,
            haematoxylin of a nucleus about 0.05-0.15).
        prob: probability of jittering an image.
    """

    backend = ["numpy"]

    def __init__(
        self, scale: float | Sequence[float] = 0.05, shift: float | Sequence[float] = 0.01, prob: float = 1.0
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        self.scale, self.shift = _pair(scale, "scale"), _pair(shift, "shift")
        self._alpha = np.ones(3)
        self._beta = np.zeros(3)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._alpha = 1.0 + self.R.uniform(-self.scale, self.scale)
            self._beta = self.R.uniform(-self.shift, self.shift)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        if array.ndim != 3 or array.shape[0] != 3:
            raise ValueError(f"RandHEDJitter expects a (3, H, W) RGB image, got shape {tuple(array.shape)}.")
        optical_density = np.log(np.clip(array, _MIN_INTENSITY, 1.0)) / _LOG_ADJUST  # (3, H, W), >= 0
        hed = np.tensordot(hed_from_rgb.T, optical_density, axes=1)
        hed = hed * self._alpha[:, None, None] + self._beta[:, None, None]
        rgb = np.exp(np.tensordot(rgb_from_hed.T, hed, axes=1) * _LOG_ADJUST)
        return convert_to_dst_type(np.clip(rgb, 0.0, 1.0).astype(np.float32), img, dtype=img.dtype)[0]


class RandHEDJitterd(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandHEDJitter` (the same jitter for every key of one sample)."""

    backend = RandHEDJitter.backend

    def __init__(
        self,
        keys: KeysCollection,
        scale: float | Sequence[float] = 0.05,
        shift: float | Sequence[float] = 0.01,
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.jitter = RandHEDJitter(scale, shift, prob=1.0)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandHEDJitterd:
        super().set_random_state(seed, state)
        self.jitter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.jitter.randomize()
        for key in self.key_iterator(d):
            d[key] = self.jitter(d[key], randomize=False)
        return d


def _rgb_float(img: NdarrayOrTensor, name: str) -> np.ndarray:
    """A ``(3, H, W)`` RGB image as float64 ``(H, W, 3)`` in [0, 1] (uint8 input is divided by 255)."""
    array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if array.ndim != 3 or array.shape[0] != 3:
        raise ValueError(f"{name} expects a (3, H, W) RGB image, got shape {tuple(array.shape)}.")
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    return np.moveaxis(array, 0, -1).astype(np.float64) / scale


def lab_statistics(img: NdarrayOrTensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of a ``(3, H, W)`` RGB image (uint8, or float in [0, 1]) in CIE LAB:
    the colour statistics :class:`ReinhardColorMatch` transfers."""
    lab = rgb2lab(_rgb_float(img, "lab_statistics")).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


class ReinhardColorMatch(Transform):
    """Colour transfer (Reinhard et al., 2001): each LAB channel of the image is standardised and given the target's
    mean and standard deviation (:func:`lab_statistics` of a reference image), then converted back to RGB and
    clipped. Used to give synthetic H&E tiles the colour of real training tiles; label-free.

    Input: a ``(3, H, W)`` RGB image, uint8 or float in [0, 1]; the output has the same type, dtype and range.

    Args:
        mean: the target's LAB channel means.
        std: the target's LAB channel standard deviations (> 0).
    """

    backend = ["numpy"]

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if self.mean.shape != (3,) or self.std.shape != (3,) or not (self.std > 0).all():
            raise ValueError(f"ReinhardColorMatch needs 3 means and 3 positive stds, got {mean} and {std}.")

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        rgb = _rgb_float(img, "ReinhardColorMatch")
        lab = rgb2lab(rgb)
        mean, std = lab.reshape(-1, 3).mean(axis=0), lab.reshape(-1, 3).std(axis=0)
        lab = (lab - mean) / np.maximum(std, 1e-6) * self.std + self.mean
        out = np.moveaxis(np.clip(lab2rgb(lab), 0.0, 1.0), -1, 0)
        dtype = img.dtype
        if dtype in (np.uint8, torch.uint8):
            out = np.round(out * 255.0).astype(np.uint8)
            return convert_to_dst_type(out, img, dtype=dtype)[0]
        return convert_to_dst_type(out.astype(np.float32), img, dtype=dtype)[0]
