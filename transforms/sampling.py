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
"""What the random samplers of this package share: the ``(H, W)`` size check and the dictionary wrapper's seeding."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.transforms import MapTransform, Randomizable

__all__ = ["SamplerMapTransform", "check_spatial_size"]


def check_spatial_size(spatial_size: Sequence[int]) -> tuple[int, int]:
    """``spatial_size`` as a positive ``(H, W)`` of ints, or a ValueError naming it."""
    size = tuple(int(s) for s in spatial_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"spatial_size must be a positive (H, W), got {tuple(spatial_size)}.")
    return size  # type: ignore[return-value]


class SamplerMapTransform(Randomizable, MapTransform):
    """Dictionary wrapper of a randomizable ``sampler`` (with a ``spatial_size``): seeding the wrapper seeds the
    sampler, and the output size is the sampler's own or the spatial shape of the channel-first image at ``ref_key``."""

    sampler: Randomizable
    ref_key: str | None

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.sampler.set_random_state(seed, state if state is not None else self.R)
        return self

    def randomize(self, data=None) -> None:
        pass

    def reference_size(self, data: Mapping[Hashable, object]) -> tuple[int, ...] | None:
        """None when the sampler has its own ``spatial_size``, else the spatial shape of ``data[ref_key]``."""
        if self.sampler.spatial_size is not None:
            return None
        if self.ref_key not in data:
            raise KeyError(f"{type(self).__name__}: reference key '{self.ref_key}' not in the data.")
        return tuple(data[self.ref_key].shape[1:])
