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
"""HoVerNet post-processing to an instance map, built from MONAI's watershed steps.

MONAI's ``HoVerNetInstanceMapPostProcessing`` also traces a contour per nucleus (most of its 1.6 s on a
1000x1000 tile); :class:`HoVerNetInstances` runs the same watershed steps (``GenerateWatershedMask``,
``GenerateInstanceBorder``, ``GenerateDistanceMap``, ``GenerateWatershedMarkers``, ``Watershed``) and stops at
the instance map. Its output equals MONAI's instance map (tested).

MONAI (like the HoVer-Net reference code) min-max normalises the HoVer maps and their Sobel gradients over the whole
input, so the border strength, and with it the markers, depend on the extremes of the whole tile. Tiled inference of
a slide then gives each region its own normalisation. With ``hv_range`` and ``sobel_range`` set, both are normalised
with those fixed ranges instead (clipped to [0, 1]): the result at a pixel depends only on its neighbourhood, so a
tile segmented in pieces equals the tile segmented whole. :data:`MONUSEG_RANGES` are the medians of the per-tile
extremes of perfect predictions of the shape-prior masks sampled from the 23 MoNuSeg training tiles' *points*
(:func:`sobel_range_of`; 40x, Sobel kernel 21): no dense label is involved (the real training labels give
(-0.146, 0.095)). Every post-processing of the project (evaluation, validation, inference, Deploy, MONAI Label) uses
them, so that a tile is segmented the same way everywhere.

Speed: MONAI computes the argmax of the softmax, the Sobel gradients (21 px kernels) and the Gaussian smoothing of
the distance map with single-channel ``torch`` convolutions, which take most of the post-processing time on a CPU,
and fills the markers' holes by dilating the background from the border until it stops. :class:`HoVerNetInstances`
computes the same quantities directly (``logit_1 > logit_0``; MONAI's Sobel and Gaussian kernels applied with
``scipy.ndimage.correlate1d``, same padding; holes as the 8-connected background components away from the border;
the markers' opening as a binary one on a reflect-padded copy), with instance maps and markers equal to MONAI's on
real MoNuSeg crops (tested).
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.apps.pathology.transforms.post.array import GenerateDistanceMap, GenerateInstanceBorder, Watershed
from monai.config import KeysCollection, NdarrayOrTensor
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import MapTransform, RemoveSmallObjects, SobelGradients
from monai.utils import HoVerNetBranch, convert_data_type
from scipy import ndimage
from skimage.morphology import disk

__all__ = [
    "MONUSEG_RANGES",
    "HoVerNetInstances",
    "TensorInstances",
    "TensorInstancesd",
    "sobel_range_of",
    "split_output",
]

_NP, _HV = HoVerNetBranch.NP.value, HoVerNetBranch.HV.value

# sobel_range_of(masks sampled by PointsToEllipseMask (seed 0) from the points of the 23 MoNuSeg training tiles)
SOBEL_MIN, SOBEL_MAX = -0.1517, 0.0892
MONUSEG_RANGES = {"hv_range": (-1.0, 1.0), "sobel_range": (SOBEL_MIN, SOBEL_MAX)}


def sobel_range_of(instance_maps: list[np.ndarray], sobel_kernel_size: int = 21) -> tuple[float, float]:
    """The medians, over ``instance_maps`` (each ``(H, W)``), of the lowest and highest Sobel gradient of their
    [0, 1]-normalised HoVer maps (horizontal gradient of h, vertical of v): the ``sobel_range`` of the fixed
    normalisation for images at that resolution."""
    from transforms.hv_map import HVMap

    border = GenerateInstanceBorder(kernel_size=sobel_kernel_size)
    lows, highs = [], []
    for label in instance_maps:
        hv = (np.asarray(HVMap()(np.asarray(label, dtype=np.int32)[None])) + 1.0) / 2.0
        sobel_h = np.asarray(border.sobel_gradient(hv[0:1]))[1]
        sobel_v = np.asarray(border.sobel_gradient(hv[1:2]))[0]
        lows.append(min(sobel_h.min(), sobel_v.min()))
        highs.append(max(sobel_h.max(), sobel_v.max()))
    return float(np.median(lows)), float(np.median(highs))


def separable_correlate(image: np.ndarray, kernels: tuple[np.ndarray, np.ndarray], mode: str) -> np.ndarray:
    """``image`` (H, W) filtered with ``kernels`` (along H, then W) as MONAI's ``separable_filtering`` (a
    cross-correlation; ``mode`` as ``scipy.ndimage``: ``mirror`` is torch's ``reflect``, ``constant`` its ``zeros``),
    in float32."""
    along_h = ndimage.correlate1d(image, kernels[0], axis=0, mode=mode, output=np.float32)
    return ndimage.correlate1d(along_h, kernels[1], axis=1, mode=mode, output=np.float32)


class GaussianSmooth2d:
    """MONAI's ``GaussianSmooth`` (``erf`` kernel truncated at 4 sigma, zero padding) of a ``(1, H, W)`` or
    ``(H, W)`` array, with ``scipy.ndimage`` (the distance map's smoothing of :class:`HoVerNetInstances`)."""

    def __init__(self, sigma: float = 1.0) -> None:
        kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=4.0, approx="erf").numpy().astype(np.float32)
        self.kernels = (kernel, kernel)

    def __call__(self, image: NdarrayOrTensor) -> np.ndarray:
        image = convert_data_type(image, np.ndarray, dtype=np.float32)[0]
        return separable_correlate(image.reshape(image.shape[-2:]), self.kernels, "constant").reshape(image.shape)


class HoVerNetInstances:
    """Nucleus-prediction logits (2, H, W) + HoVer maps (2, H, W) -> int32 instance map (1, H, W).

    Args:
        sobel_kernel_size: Sobel kernel of the HV-gradient border (HoVerNet: 21 for 40x tiles).
        marker_threshold: border-strength threshold of the markers (HoVerNet: 0.4).
        min_object_size: smallest nucleus and marker kept, in pixels (HoVerNet: 10).
        mask_threshold: foreground probability threshold (of the softmax); ``None``: its argmax (HoVerNet), i.e.
            0.5 with ties to the background.
        marker_radius: opening radius applied to the markers.
        hv_range: fixed (min, max) of the HoVer maps; ``None``: each input's own (MONAI).
        sobel_range: fixed (min, max) of the Sobel gradients of the normalised HoVer maps; ``None``: each input's own.
    """

    def __init__(
        self,
        sobel_kernel_size: int = 21,
        marker_threshold: float = 0.4,
        min_object_size: int = 10,
        mask_threshold: float | None = None,
        marker_radius: int = 2,
        hv_range: tuple[float, float] | None = None,
        sobel_range: tuple[float, float] | None = None,
    ) -> None:
        if (hv_range is None) != (sobel_range is None):
            raise ValueError("give both hv_range and sobel_range (fixed normalisation) or neither (per input).")
        for name, r in (("hv_range", hv_range), ("sobel_range", sobel_range)):
            if r is not None and not float(r[0]) < float(r[1]):
                raise ValueError(f"{name} must be (min, max) with min < max, got {r}.")
        self.hv_range = None if hv_range is None else (float(hv_range[0]), float(hv_range[1]))
        self.sobel_range = None if sobel_range is None else (float(sobel_range[0]), float(sobel_range[1]))
        if mask_threshold is not None and not 0.0 < float(mask_threshold) < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1) or None, got {mask_threshold}.")
        # softmax(logits)[1] > t  <=>  logit_1 - logit_0 > log(t / (1 - t))
        self.logit_margin = 0.0 if mask_threshold is None else float(np.log(mask_threshold / (1.0 - mask_threshold)))
        self.remove_small_objects = RemoveSmallObjects(min_size=min_object_size) if min_object_size > 0 else None
        self.border = GenerateInstanceBorder(kernel_size=sobel_kernel_size)
        # the one gradient of each HoVer map the fixed-range border uses: MONAI's Sobel kernels (derivative along
        # the map's own axis, smoothing across it) as (kernel along H, kernel along W)
        sobel = SobelGradients(kernel_size=sobel_kernel_size)
        diff, smooth = (k.numpy().astype(np.float32) for k in (sobel.kernel_diff, sobel.kernel_smooth))
        self.sobel_x, self.sobel_y = (smooth, diff), (diff, smooth)
        self.distance = GenerateDistanceMap(smooth_fn=GaussianSmooth2d(sigma=1.0))
        self.marker_threshold, self.marker_radius = float(marker_threshold), int(marker_radius)
        self.marker_footprint = disk(self.marker_radius).astype(bool)
        self.watershed = Watershed(connectivity=1)

    def __call__(self, np_logits: NdarrayOrTensor, hv: NdarrayOrTensor) -> np.ndarray:
        np_logits = convert_data_type(np_logits, np.ndarray, dtype=np.float32)[0]
        hv = convert_data_type(hv, np.ndarray, dtype=np.float32)[0]
        if np_logits.ndim != 3 or np_logits.shape[0] != 2 or hv.shape != np_logits.shape:
            raise ValueError(
                f"expected nucleus logits (2, H, W) and HoVer maps (2, H, W), got {np_logits.shape} and {hv.shape}."
            )
        with warnings.catch_warnings():  # scikit-image's remove_small_objects(min_size=...) deprecation, in MONAI
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            mask = self.foreground(np_logits)
            border = self.border(mask, hv) if self.hv_range is None else self._fixed_border(mask, hv)
            instances = self.watershed(self.distance(mask, border), mask, self.markers(mask, border))
        return np.asarray(instances, dtype=np.int32)

    def foreground(self, np_logits: np.ndarray) -> np.ndarray:
        """``GenerateWatershedMask`` (softmax, argmax or ``mask_threshold``, small objects removed): uint8 (1, H, W)."""
        mask = ((np_logits[1] - np_logits[0]) > self.logit_margin).astype(np.uint8)[None]
        return mask if self.remove_small_objects is None else np.asarray(self.remove_small_objects(mask))

    def markers(self, mask: np.ndarray, border: np.ndarray) -> np.ndarray:
        """MONAI's ``GenerateWatershedMarkers``: the certain foreground (``mask`` where ``border`` is below
        ``marker_threshold``), holes filled, opened with a disk of ``marker_radius`` (reflect padding, as
        scikit-image's ``opening``), labelled (4-connected), small ones removed: (1, H, W)."""
        certain = (np.asarray(mask)[0] > 0) & (np.asarray(border)[0] < self.marker_threshold)
        background, count = ndimage.label(~certain, structure=np.ones((3, 3), dtype=bool))
        outside = np.zeros(count + 1, dtype=bool)
        outside[np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])] = True
        filled = certain | ~outside[background]  # background away from the border (a hole) becomes foreground
        pad = 2 * self.marker_radius
        if pad:
            padded = np.pad(filled, pad, mode="reflect")
            opened = ndimage.binary_dilation(
                ndimage.binary_erosion(padded, self.marker_footprint), self.marker_footprint
            )
            filled = opened[pad:-pad, pad:-pad]
        markers = ndimage.label(filled)[0][None]
        return markers if self.remove_small_objects is None else np.asarray(self.remove_small_objects(markers))

    def _fixed_border(self, mask: np.ndarray, hv: np.ndarray) -> np.ndarray:
        """``GenerateInstanceBorder`` with fixed normalisation ranges (clipped to [0, 1])."""
        (h0, h1), (s0, s1) = self.hv_range, self.sobel_range
        normalised = (hv - h0) / (h1 - h0)
        sobel_h = separable_correlate(normalised[0], self.sobel_x, "mirror")
        sobel_v = separable_correlate(normalised[1], self.sobel_y, "mirror")
        strength = np.maximum(1 - (sobel_h - s0) / (s1 - s0), 1 - (sobel_v - s0) / (s1 - s0))
        return np.clip(strength[None] - (1 - np.asarray(mask)), 0.0, 1.0).astype(np.float32)

    def from_output(self, output: dict[str, torch.Tensor]) -> np.ndarray:
        """Post-process one (unbatched) HoVerNet output dictionary."""
        return self(output[HoVerNetBranch.NP.value], output[HoVerNetBranch.HV.value])


def split_output(pred: torch.Tensor) -> dict[str, torch.Tensor]:
    """``(..., 4, H, W)`` single-tensor output -> MONAI HoVerNet's dictionary ``{NP: (..., 2, H, W), HV: ...}``."""
    if pred.ndim < 3 or pred.shape[-3] != 4:
        raise ValueError(f"expected a (..., 4, H, W) output (NP logits, HV maps), got shape {tuple(pred.shape)}.")
    return {_NP: pred[..., :2, :, :], _HV: pred[..., 2:, :, :]}


class TensorInstances:
    """Unbatched single-tensor output ``(4, H, W)`` -> int32 instance map ``(1, H, W)`` (:class:`HoVerNetInstances`,
    whose arguments it takes)."""

    def __init__(self, **kwargs: Any) -> None:
        self.postprocessing = HoVerNetInstances(**kwargs)

    def __call__(self, pred: torch.Tensor | np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.postprocessing.from_output(split_output(torch.as_tensor(pred))))


class TensorInstancesd(MapTransform):
    """Dictionary version of :class:`TensorInstances` (the Deploy ``postprocessing`` of ``pred``)."""

    def __init__(self, keys: KeysCollection = "pred", allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.instances = TensorInstances(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.instances(d[key])
        return d
