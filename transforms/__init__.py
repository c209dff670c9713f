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
"""MONAI transforms of the bundle: point loading and alignment, shape-prior masks, HoVer maps, random points,
stain jitter and colour transfer, HoVer-Net post-processing to instance maps.

Public API::

    from transforms import PointsToEllipseMask, PointsToEllipseMaskd, HVMap, HVMapd, LoadPointsd, RandomPointsd
"""

from transforms.ellipse_mask import EllipseSample, PointsToEllipseMask, PointsToEllipseMaskd
from transforms.hv_map import EncodeMask, EncodeMaskd, HVMap, HVMapd
from transforms.outline_band import OutlineBandd, SeparateTouchingd, outline_band, touching_borders
from transforms.points import AlignPointsd, LoadPoints, LoadPointsd, PointsToMap, PointsToMapd
from transforms.points_io import PointsFileError, find_point_problems, points_inside, read_points
from transforms.postprocess import (
    MONUSEG_RANGES,
    HoVerNetInstances,
    TensorInstances,
    TensorInstancesd,
    sobel_range_of,
    split_output,
)
from transforms.random_points import PointSample, RandomPoints, RandomPointsd, load_point_prior
from transforms.stain import RandHEDJitter, RandHEDJitterd, ReinhardColorMatch, lab_statistics

__all__ = [
    "MONUSEG_RANGES",
    "AlignPointsd",
    "EllipseSample",
    "EncodeMask",
    "EncodeMaskd",
    "HVMap",
    "HVMapd",
    "HoVerNetInstances",
    "LoadPoints",
    "LoadPointsd",
    "OutlineBandd",
    "PointSample",
    "PointsFileError",
    "PointsToEllipseMask",
    "PointsToEllipseMaskd",
    "PointsToMap",
    "PointsToMapd",
    "RandHEDJitter",
    "RandHEDJitterd",
    "RandomPoints",
    "RandomPointsd",
    "ReinhardColorMatch",
    "SeparateTouchingd",
    "TensorInstances",
    "TensorInstancesd",
    "find_point_problems",
    "lab_statistics",
    "load_point_prior",
    "outline_band",
    "points_inside",
    "read_points",
    "sobel_range_of",
    "split_output",
    "touching_borders",
]
