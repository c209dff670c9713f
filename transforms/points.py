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
"""MONAI transforms for nucleus centroid points: loading, following an image through spatial transforms,
and rendering point maps.

Points are ``(N, 2)`` float32 ``(y, x)`` pixel coordinates of a channel-first ``(C, H, W)`` image (pixel
centres at integer coordinates). Load images with ``LoadImaged(..., reader="PILReader",
reverse_indexing=False)`` (or any reader giving ``H`` before ``W``) so that ``y`` indexes rows.

MONAI records every spatial transform (crop, flip, rotate, zoom, affine) in the image's affine; a
:class:`LoadPointsd` point set remembers the affine of its image at load time, and :class:`AlignPointsd`
maps it into the image's current pixel grid with :class:`monai.transforms.ApplyTransformToPoints`, dropping
points that left the image. Point sets have different lengths, so render them with :class:`PointsToMapd`
(or delete them) before batching.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import ApplyTransformToPoints, MapTransform, Transform
from monai.utils import convert_data_type

from transforms.points_io import PointsFileError, find_point_problems, points_inside, read_points

__all__ = ["LoadPoints", "LoadPointsd", "AlignPointsd", "PointsToMap", "PointsToMapd", "points_inside"]


class LoadPoints(Transform):
    """Read a point file (any format of :func:`transforms.points_io.read_points`) into a ``(N, 2)`` MetaTensor.

    Args:
        spatial_size: if given, points outside an image of this ``(H, W)`` raise a :class:`PointsFileError`.
        allow_duplicates: if False, points closer than 0.5 px to another raise a :class:`PointsFileError`.
    """

    def __init__(self, spatial_size: Sequence[int] | None = None, allow_duplicates: bool = True) -> None:
        self.spatial_size = spatial_size
        self.allow_duplicates = allow_duplicates

    def __call__(self, path: str | Path, spatial_size: Sequence[int] | None = None) -> MetaTensor:
        points = read_points(path)
        size = spatial_size if spatial_size is not None else self.spatial_size
        problems = find_point_problems(points, size, duplicate_distance=None if self.allow_duplicates else 0.5)
        if problems:
            raise PointsFileError(f"{path}: " + "; ".join(problems))
        out = MetaTensor(torch.from_numpy(points))
        out.meta["filename_or_obj"] = str(path)
        return out


class LoadPointsd(MapTransform):
    """Dictionary version of :class:`LoadPoints`.

    With ``ref_key`` (a loaded channel-first image), points are checked against the image size and remember
    the image's affine, so that :class:`AlignPointsd` can follow later spatial transforms of the image.
    """

    def __init__(
        self,
        keys: KeysCollection,
        ref_key: str | None = "image",
        allow_duplicates: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadPoints(allow_duplicates=allow_duplicates)
        self.ref_key = ref_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        ref = d.get(self.ref_key) if self.ref_key is not None else None
        if ref is not None and ref.ndim != 3:
            raise ValueError(
                f"LoadPointsd: '{self.ref_key}' must be a channel-first (C, H, W) image, got {tuple(ref.shape)}."
            )
        for key in self.key_iterator(d):
            points = self.loader(d[key], None if ref is None else tuple(ref.shape[1:]))
            if isinstance(ref, MetaTensor):
                points.affine = ref.affine.clone()
            d[key] = points
        return d


class AlignPointsd(MapTransform):
    """Map points into the current pixel grid of ``ref_key`` after spatial transforms of that image.

    The points' affine (set by :class:`LoadPointsd`) and the image's current affine give the mapping
    ``inv(A_image) @ A_points``, applied by MONAI's :class:`ApplyTransformToPoints`. Points that fall outside
    the image (e.g. after a crop) are dropped unless ``drop_outside`` is False.
    """

    def __init__(
        self, keys: KeysCollection, ref_key: str = "image", drop_outside: bool = True, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.drop_outside = drop_outside

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        ref = d[self.ref_key]
        if not isinstance(ref, MetaTensor):
            raise TypeError(f"AlignPointsd: '{self.ref_key}' must be a MetaTensor carrying its affine.")
        for key in self.key_iterator(d):
            points = d[key]
            if not isinstance(points, MetaTensor):
                raise TypeError(f"AlignPointsd: '{key}' must be loaded by LoadPointsd (a MetaTensor with an affine).")
            mapping = torch.linalg.solve(ref.affine.double(), points.affine.double())
            moved = ApplyTransformToPoints(dtype=torch.float32, affine=mapping, invert_affine=False)(
                points.as_tensor().reshape(1, -1, 2)
            )
            moved = MetaTensor(moved.reshape(-1, 2).as_tensor(), meta=dict(points.meta))
            if self.drop_outside:
                moved = moved[torch.from_numpy(points_inside(moved.numpy(), ref.shape[1:]))]
            moved.affine = ref.affine.clone()
            d[key] = moved
        return d


class PointsToMap(Transform):
    """Render ``(N, 2)`` ``(y, x)`` points as a ``(1, H, W)`` float32 binary map, each point a disc of ``radius``
    pixels (0: the single pixel holding the point). Points outside the image are ignored."""

    def __init__(self, spatial_size: Sequence[int] | None = None, radius: float = 0.0) -> None:
        if radius < 0:
            raise ValueError(f"radius must be >= 0, got {radius}.")
        self.spatial_size = spatial_size
        self.radius = float(radius)

    def __call__(self, points: NdarrayOrTensor, spatial_size: Sequence[int] | None = None) -> torch.Tensor:
        size = spatial_size if spatial_size is not None else self.spatial_size
        if size is None:
            raise ValueError("PointsToMap needs spatial_size (H, W).")
        h, w = (int(s) for s in size)
        array = np.asarray(convert_data_type(points, np.ndarray)[0], dtype=np.float64).reshape(-1, 2)
        pixel = np.floor(array[points_inside(array, (h, w))] + 0.5).astype(np.int64)
        point_map = np.zeros((h, w), dtype=np.float32)
        r = int(np.floor(self.radius))
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dy * dy + dx * dx <= self.radius**2:
                    yy, xx = pixel[:, 0] + dy, pixel[:, 1] + dx
                    ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                    point_map[yy[ok], xx[ok]] = 1.0
        return torch.from_numpy(point_map[None])


class PointsToMapd(MapTransform):
    """Dictionary version of :class:`PointsToMap`: the map of ``keys`` goes to ``map_key``, sized like ``ref_key``."""

    def __init__(
        self,
        keys: KeysCollection,
        map_key: str = "point_map",
        ref_key: str = "image",
        radius: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"PointsToMapd takes one points key, got {self.keys}.")
        self.renderer = PointsToMap(radius=radius)
        self.map_key, self.ref_key = map_key, ref_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.map_key] = self.renderer(d[key], tuple(d[self.ref_key].shape[1:]))
        return d
