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
"""An ignore band along the outlines of an instance map: where a shape prior's outline is a guess, the loss need not
follow it (used with :class:`~scripts.engines.losses.MaskedHoVerNetLoss`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import convert_data_type
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

__all__ = ["OutlineBandd", "outline_band"]


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
