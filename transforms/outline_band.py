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
"""Outlines of an instance map as training targets: an ignore band along them (where a shape prior's outline is a
guess, the loss need not follow it; used with :class:`~scripts.engines.losses.MaskedHoVerNetLoss`), and a gap between
touching nuclei in the nucleus-pixel target (so that the foreground itself separates them)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import convert_data_type, convert_to_dst_type
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

__all__ = ["OutlineBandd", "SeparateTouchingd", "outline_band", "touching_borders"]


def outline_band(label: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: pixels at most ``width`` px (chessboard) from an outline of the (H, W) instance map ``label``,
    on both sides of it (``width`` 0: nothing)."""
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}.")
    if width == 0:
        return np.zeros(label.shape, dtype=bool)
    boundary = find_boundaries(label, connectivity=2, mode="thick")  # one pixel on each side of every outline
    if width == 1:
        return boundary
    return ndi.binary_dilation(boundary, structure=np.ones((3, 3), bool), iterations=width - 1)


def touching_borders(label: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) bool: the pixels of each nucleus of the (H, W) instance map ``label`` that have a pixel of *another*
    nucleus within ``width`` px (chessboard), i.e. a band of ``width`` px on each side of every outline two nuclei share
    (outlines against the background are not touched; ``width`` 0: nothing)."""
    if width < 0:
        raise ValueError(f"width must be >= 0, got {width}.")
    label = np.asarray(label)
    if width == 0 or label.max(initial=0) == 0:
        return np.zeros(label.shape, dtype=bool)
    size = 2 * width + 1
    higher = ndi.maximum_filter(label, size=size, mode="nearest") != label  # a neighbour with a larger id
    above = np.where(label > 0, label, np.iinfo(label.dtype).max if label.dtype.kind in "iu" else np.inf)
    lower = ndi.minimum_filter(above, size=size, mode="nearest") != above  # a nucleus neighbour with a smaller id
    return (label > 0) & (higher | lower)


class SeparateTouchingd(MapTransform):
    """Set the :func:`touching_borders` of the ``(1, H, W)`` instance maps ``keys`` to 0 (background): applied to the
    copy of the label that becomes the nucleus-pixel (NP) target, it teaches a gap of ``2 * width`` px between touching
    nuclei, while the HoVer maps still come from the whole nuclei. ``width`` 0 leaves the data as it is."""

    def __init__(self, keys: KeysCollection, width: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(width) < 0:
            raise ValueError(f"width must be >= 0, got {width}.")
        self.width = int(width)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.width == 0:
            return d
        for key in self.key_iterator(d):
            label, *_ = convert_data_type(d[key], np.ndarray)
            gap = touching_borders(np.asarray(label)[0], self.width)[None]
            d[key] = convert_to_dst_type(np.where(gap, 0, label).astype(label.dtype), d[key])[0]
        return d


class OutlineBandd(MapTransform):
    """Write the :func:`outline_band` of a ``(1, H, W)`` instance map ``keys`` into ``ignore_key`` as ``(1, H, W)``
    uint8 (an existing mask there is kept: the union). ``width`` 0 leaves the data as it is."""

    def __init__(
        self, keys: KeysCollection, ignore_key: str = "ignore", width: int = 0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if int(width) < 0:
            raise ValueError(f"width must be >= 0, got {width}.")
        self.ignore_key, self.width = ignore_key, int(width)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.width == 0:
            return d
        for key in self.key_iterator(d):
            label = np.asarray(convert_data_type(d[key], np.ndarray)[0])
            band = outline_band(label[0], self.width)[None].astype(np.uint8)
            if self.ignore_key in d:
                band |= np.asarray(convert_data_type(d[self.ignore_key], np.ndarray)[0]).astype(np.uint8) > 0
            d[self.ignore_key] = band
        return d
