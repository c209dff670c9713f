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
"""Horizontal/vertical (HoVer) distance maps of an instance map, vectorised, and the GAN's mask encoding
``S = [h, v, np]`` built from them."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Transform
from monai.utils import convert_data_type, convert_to_tensor

__all__ = ["EncodeMask", "EncodeMaskd", "HVMap", "HVMapd"]


class HVMap(Transform):
    """Compute HoVer-Net horizontal and vertical maps from a ``(1, H, W)`` instance map.

    For every instance, the horizontal (vertical) map is the column (row) offset of each pixel from the
    instance centroid, divided by the largest offset on that side, so that it spans ``[-1, 0]`` left of
    (above) the centroid and ``[0, 1]`` right of (below) it; background is 0. The output equals MONAI's
    :class:`monai.transforms.ComputeHoVerMaps` (the reference), but one pass over the foreground pixels
    replaces its per-instance full-image loop.

    Args:
        dtype: output data type.

    Returns:
        ``(2, H, W)`` tensor ``[horizontal, vertical]``.
    """

    backend = [convert_to_tensor.__module__]

    def __init__(self, dtype: DtypeLike = np.float32) -> None:
        self.dtype = dtype

    def __call__(self, label: NdarrayOrTensor) -> torch.Tensor:
        instance_map = convert_data_type(label, np.ndarray)[0]
        if instance_map.ndim != 3 or instance_map.shape[0] != 1:
            raise ValueError(f"HVMap expects a (1, H, W) instance map, got shape {tuple(instance_map.shape)}.")
        if not (np.issubdtype(instance_map.dtype, np.integer) or np.issubdtype(instance_map.dtype, np.bool_)):
            if not np.array_equal(instance_map, np.round(instance_map)):
                raise ValueError(
                    f"HVMap expects integer instance labels, got non-integral {instance_map.dtype} values."
                )
        instance_map = instance_map[0]
        height, width = instance_map.shape
        flat = instance_map.reshape(-1)
        fg = np.flatnonzero(flat)
        hv = np.zeros((2, height * width), dtype=np.float64)
        if fg.size:
            labels = flat[fg].astype(np.int64, copy=False)
            # small label values index the per-instance tables directly; otherwise compact them first
            inverse = labels if labels.max() <= 4 * fg.size else np.unique(labels, return_inverse=True)[1]
            rows, cols = np.divmod(fg, width)
            for axis, coords in ((0, cols), (1, rows)):  # horizontal (column offsets), then vertical (row offsets)
                hv[axis, fg] = _normalised_offsets(coords, inverse)
        hv_maps = hv.reshape(2, height, width).astype(self.dtype, copy=False)
        return convert_to_tensor(hv_maps, track_meta=get_track_meta())


def _normalised_offsets(coords: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Offsets of ``coords`` from their instance mean, scaled by the largest offset on each side."""
    n = int(inverse.max()) + 1
    counts = np.maximum(np.bincount(inverse, minlength=n), 1)  # labels without pixels are never looked up
    centroid = np.bincount(inverse, weights=coords, minlength=n) / counts
    offsets = coords - centroid[inverse]
    lowest = np.zeros(n)
    highest = np.zeros(n)
    np.minimum.at(lowest, inverse, offsets)
    np.maximum.at(highest, inverse, offsets)
    negative, positive = offsets < 0, offsets > 0
    offsets[negative] /= -lowest[inverse[negative]]
    offsets[positive] /= highest[inverse[positive]]
    return offsets


class HVMapd(MapTransform):
    """Dictionary version of :class:`HVMap`: writes the maps of ``keys`` under ``new_key_prefix + key``.

    Args:
        keys: keys of ``(1, H, W)`` instance maps.
        new_key_prefix: prefix of the output keys (``"hv_"`` writes ``hv_label`` for ``label``); ``""``
            replaces the instance map.
        dtype: output data type.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = HVMap.backend

    def __init__(
        self,
        keys: KeysCollection,
        new_key_prefix: str = "hv_",
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = HVMap(dtype=dtype)
        self.new_key_prefix = new_key_prefix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{self.new_key_prefix}{key}"] = self.converter(d[key])
        return d


class EncodeMask(Transform):
    """The mask representation ``S`` of the synthesis GAN (DESIGN.md): ``(1, H, W)`` instance map -> ``(3, H, W)``
    float32 ``[h, v, np]``, the HoVer maps of :class:`HVMap` in [-1, 1] and the binary foreground in {0, 1}.

    The one encoding of the project: the GAN's training transforms, its validation crops and synthesis use it.
    """

    backend = HVMap.backend

    def __init__(self) -> None:
        self.hv = HVMap(dtype=np.float32)

    def __call__(self, label: NdarrayOrTensor) -> torch.Tensor:
        hv = convert_to_tensor(self.hv(label), track_meta=False)
        foreground = convert_to_tensor(label, track_meta=False).reshape(1, *hv.shape[1:]) > 0
        return torch.cat([hv, foreground.to(hv.dtype)])


class EncodeMaskd(MapTransform):
    """Dictionary version of :class:`EncodeMask`: the encoding of the instance map ``keys`` goes to ``mask_key``.

    Args:
        keys: key of the ``(1, H, W)`` instance map (one).
        mask_key: output key.
        allow_missing_keys: don't raise if the key is missing.
    """

    backend = EncodeMask.backend

    def __init__(self, keys: KeysCollection, mask_key: str = "mask", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.encode, self.mask_key = EncodeMask(), mask_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = self.encode(d[key])
        return d
