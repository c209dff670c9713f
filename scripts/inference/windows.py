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
"""Sliding-window network outputs of the boxes of a large image, each window of the image's grid run once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers.utils import _get_scan_interval

__all__ = ["WindowGrid"]

Box = tuple[int, int, int, int]  # y0, x0, y1, x1


class WindowGrid:
    """Network outputs of any box of an ``(H, W)`` image, blended from the windows of the whole image's sliding-window
    grid as MONAI's ``SlidingWindowInferer`` places and blends them (``mode="gaussian"``, zero padding of an image
    smaller than a window): a box's outputs equal whole-image sliding-window inference (to the precision ``dtype``
    keeps windows in for later boxes), and each window runs once however many boxes it touches.

    The boxes are announced in processing order (:meth:`plan`); a computed window is kept only while a later box
    needs it, and only the part of it later boxes overlap (a row of window strips across the image for boxes taken
    row by row).

    Args:
        read: ``(y, x, h, w) -> (h, w, 3)`` uint8 pixels of the image (inside it).
        shape: the image's ``(H, W)``.
        window: window side in px, or ``(height, width)`` (multiples of the network's size factor).
        overlap: window overlap, as ``SlidingWindowInferer``.
        forward: ``(B, 3, h, w)`` float32 network input -> ``(B, C, h, w)`` float32 outputs, e.g.
            :meth:`scripts.inference.predict.TilePredictor.forward`.
        to_input: ``(..., 3, h, w)`` float32 pixels in [0, 255] -> network input (applied before the zero padding, as
            :meth:`~scripts.inference.predict.TilePredictor.network_input`).
        batch_size: windows per forward pass.
        dtype: how computed windows are kept for later boxes (weighted by the Gaussian): ``float16`` halves the
            strip of windows waiting for the next row of boxes (~1,400 values per px of image width at the
            defaults), at ~5e-4 relative error; the box that runs a window uses it in float32 (an image in one box:
            exactly MONAI's whole-image result).
    """

    def __init__(
        self,
        read: Callable[[int, int, int, int], np.ndarray],
        shape: Sequence[int],
        window: int | Sequence[int],
        overlap: float,
        forward: Callable[[torch.Tensor], torch.Tensor],
        to_input: Callable[[torch.Tensor], torch.Tensor],
        batch_size: int = 1,
        dtype: torch.dtype = torch.float16,
    ) -> None:
        self.read, self.forward, self.to_input = read, forward, to_input
        self.dtype = dtype
        self.shape = (int(shape[0]), int(shape[1]))
        self.batch_size = max(1, int(batch_size))
        window = (int(window), int(window)) if isinstance(window, int) else tuple(int(w) for w in window)
        padded = tuple(max(n, w) for n, w in zip(self.shape, window, strict=True))
        # MONAI pads an image smaller than a window symmetrically (the smaller half before)
        self.pad = tuple((p - n) // 2 for p, n in zip(padded, self.shape, strict=True))
        self.size = window
        interval = _get_scan_interval(padded, self.size, 2, (overlap, overlap))
        slices = dense_patch_slices(padded, self.size, interval, return_slice=False)
        self.starts = [(int(sy), int(sx)) for (sy, _), (sx, _) in slices]  # MONAI's order (row-major)
        self.ys = sorted({s[0] for s in self.starts})
        self.xs = sorted({s[1] for s in self.starts})
        self.importance = compute_importance_map(self.size, mode="gaussian", sigma_scale=0.125, device="cpu")
        self._boxes: list[Box] = []
        self._order: dict[Box, int] = {}
        self._users: dict[tuple[int, int], list[int]] = {}
        self._cache: dict[tuple[int, int], tuple[int, int, torch.Tensor]] = {}  # start -> (y0, x0, weighted part)
        self.windows_run = 0

    def plan(self, boxes: Sequence[Box]) -> None:
        """The boxes to be asked for, in order (image pixels, inside the image); resets the cache."""
        self._boxes = [tuple(int(v) for v in b) for b in boxes]
        self._order = {b: i for i, b in enumerate(self._boxes)}
        self._users, self._cache = {}, {}
        for i, box in enumerate(self._boxes):
            for start in self._windows(box):
                self._users.setdefault(start, []).append(i)

    def _windows(self, box: Box) -> list[tuple[int, int]]:
        """The window starts (padded coordinates) whose window overlaps ``box``, in MONAI's order."""
        y0, x0, y1, x1 = box[0] + self.pad[0], box[1] + self.pad[1], box[2] + self.pad[0], box[3] + self.pad[1]
        h, w = self.size
        rows = [s for s in self.ys if s < y1 and s + h > y0]
        cols = [s for s in self.xs if s < x1 and s + w > x0]
        return [(r, c) for r in rows for c in cols]

    def _pixels(self, start: tuple[int, int]) -> torch.Tensor:
        """(3, h, w) network input of a window, zero outside the image."""
        (sy, sx), (h, w) = start, self.size
        y0, x0 = max(sy - self.pad[0], 0), max(sx - self.pad[1], 0)
        y1, x1 = min(sy + h - self.pad[0], self.shape[0]), min(sx + w - self.pad[1], self.shape[1])
        pixels = torch.from_numpy(np.ascontiguousarray(self.read(y0, x0, y1 - y0, x1 - x0)).transpose(2, 0, 1))
        x = torch.zeros((3, h, w), dtype=torch.float32)
        oy, ox = y0 + self.pad[0] - sy, x0 + self.pad[1] - sx
        x[:, oy : oy + y1 - y0, ox : ox + x1 - x0] = self.to_input(pixels.float()).cpu()
        return x

    def _run(self, starts: list[tuple[int, int]]) -> None:
        for i in range(0, len(starts), self.batch_size):
            batch = starts[i : i + self.batch_size]
            output = self.forward(torch.stack([self._pixels(s) for s in batch])).float().cpu()
            self.windows_run += len(batch)
            for start, out in zip(batch, output, strict=True):
                self._cache[start] = (start[0], start[1], out * self.importance)

    def outputs(self, box: Box) -> torch.Tensor:
        """(C, h, w) float32 blended outputs of a planned ``box``."""
        box = tuple(int(v) for v in box)
        if box not in self._order:
            raise KeyError(f"box {box} was not planned.")
        index = self._order[box]
        starts = self._windows(box)
        self._run([s for s in starts if s not in self._cache])
        y0, x0, y1, x1 = box[0] + self.pad[0], box[1] + self.pad[1], box[2] + self.pad[0], box[3] + self.pad[1]
        total, weight = None, torch.zeros((y1 - y0, x1 - x0))
        for start in starts:  # MONAI's order: for a box that runs all its windows, the same sums to the last bit
            cy, cx, part = self._cache[start]
            ty0, tx0 = max(y0, cy), max(x0, cx)
            ty1, tx1 = min(y1, cy + part.shape[1]), min(x1, cx + part.shape[2])
            if total is None:
                total = torch.zeros((part.shape[0], y1 - y0, x1 - x0))
            target = (slice(ty0 - y0, ty1 - y0), slice(tx0 - x0, tx1 - x0))
            total[(slice(None), *target)] += part[:, ty0 - cy : ty1 - cy, tx0 - cx : tx1 - cx]
            sy, sx = start
            weight[target] += self.importance[ty0 - sy : ty1 - sy, tx0 - sx : tx1 - sx]
        self._forget(starts, index)
        return total / weight

    def _forget(self, starts: list[tuple[int, int]], index: int) -> None:
        """Keep of each window only what the boxes after ``index`` overlap."""
        for start in starts:
            later = [j for j in self._users[start] if j > index]
            if not later:
                del self._cache[start]
                continue
            cy, cx, part = self._cache[start]
            h, w = part.shape[1:]
            boxes = [self._boxes[j] for j in later]
            ky0 = max(cy, min(b[0] for b in boxes) + self.pad[0])
            kx0 = max(cx, min(b[1] for b in boxes) + self.pad[1])
            ky1 = min(cy + h, max(b[2] for b in boxes) + self.pad[0])
            kx1 = min(cx + w, max(b[3] for b in boxes) + self.pad[1])
            part = part[:, ky0 - cy : ky1 - cy, kx0 - cx : kx1 - cx]
            self._cache[start] = (ky0, kx0, part.to(self.dtype) if part.dtype != self.dtype else part.clone())
