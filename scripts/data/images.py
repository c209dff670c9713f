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
"""The one reader of tile images and instance labels, used by ``prepare``, training, synthesis, evaluation and
inference alike (directly, or through MONAI's ``LoadImage`` with :class:`TileReader` / :class:`LabelReader`).

Images become ``(H, W, 3)`` uint8 RGB, by one rule per kind of file:

- **RGB**, 8 bit: as stored. CMYK / YCbCr are converted to RGB by PIL; palette images through their palette.
- **grayscale** (1 channel): accepted; the gray level is copied to the three channels (the H&E colour is lost, so
  ``prepare`` warns).
- **alpha** (RGBA, gray + alpha): composited onto a white background (transparent = no tissue).
- **16 bit**: scaled to 8 bits over the full 16-bit range, ``round(value / 257)``.
- anything else (float or signed samples, more than 4 channels, several frames) is refused with one line naming the
  file.

Labels become ``(H, W)`` int32 instance maps (0 = background, ``1..N`` = nuclei): single-channel integer PNG/TIFF
(8, 16 or 32 bit) or ``.npy``; colour, float or negative labels are refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import ImageReader
from monai.utils import MetaKeys, ensure_tuple

from transforms import LoadPoints

__all__ = [
    "IMAGE_SUFFIXES",
    "LabelReader",
    "TileReader",
    "as_rgb8",
    "decode_image",
    "load_tile",
    "read_image",
    "read_label",
    "signed_to_uint8",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
_TIFF = (".tif", ".tiff")


def decode_image(path: str | Path) -> np.ndarray:
    """The pixels of an image file as stored: ``(H, W)`` or ``(H, W, C)`` (PIL for PNG/JPEG/BMP, tifffile for TIFF,
    numpy for ``.npy``), with errors that name the file. Palette images are expanded (to RGB or RGBA), CMYK and YCbCr
    converted to RGB, 16-bit grayscale returned as uint16."""
    from PIL import Image

    path = Path(path)
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            return np.asarray(tifffile.imread(path, key=0))
        if path.suffix.lower() == ".npy":
            return np.load(path, allow_pickle=False)
        with Image.open(path) as image:
            image.load()
            if getattr(image, "n_frames", 1) != 1:
                raise ValueError(f"{image.n_frames} frames; expected one 2-D image")
            if image.mode in ("P", "PA"):
                image = image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
            elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGB")
            elif image.mode == "1":
                image = image.convert("L")
            array = np.array(image)  # a writable copy
            return array.astype(np.uint16) if image.mode.startswith("I;16") else array
    except FileNotFoundError:
        raise ValueError(f"{path}: image not found.") from None
    except Exception as e:  # PIL, tifffile and zlib raise many kinds of errors on damaged files
        raise ValueError(
            f"{path}: cannot read the image; the file is damaged, truncated or not an image ({type(e).__name__}: {e})."
        ) from e


def as_rgb8(array: np.ndarray, name: str, warn: bool = True) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` pixels -> ``(H, W, 3)`` uint8 RGB by the rules of this module.

    Args:
        array: the pixels (uint8 or uint16; 1 to 4 channels, channels last).
        name: what to call the image in messages (its file).
        warn: warn (``UserWarning``) when 16-bit samples are scaled, an alpha channel is composited or a grayscale
            image is copied to RGB.

    Raises:
        ValueError: unsupported sample types or channel counts, naming ``name``.
    """
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{name}: expected a 2-D image with 1 to 4 channels (H, W[, C]), got shape {array.shape}.")
    if array.dtype == np.uint16:
        if warn:
            warnings.warn(f"{name}: 16-bit image, scaled to 8 bits (value / 257).", stacklevel=2)
        array = np.floor(array.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise ValueError(f"{name}: unsupported pixel type {array.dtype} (expected 8- or 16-bit unsigned integers).")
    colour, alpha = (array[..., :-1], array[..., -1:]) if array.shape[-1] in (2, 4) else (array, None)
    if alpha is not None:
        if warn:
            warnings.warn(f"{name}: image with an alpha channel, composited onto a white background.", stacklevel=2)
        a = alpha.astype(np.float32) / 255.0
        colour = np.floor(colour * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
    if colour.shape[-1] == 1:
        if warn:
            warnings.warn(f"{name}: grayscale image, copied to the 3 RGB channels (no H&E colour).", stacklevel=2)
        colour = np.repeat(colour, 3, axis=-1)
    return np.ascontiguousarray(colour)


def signed_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (the GAN's range), ``(..., 3, H, W)`` -> ``(..., H, W, 3)`` uint8 (rounded, clipped)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    return pixels.movedim(-3, -1).numpy()


def read_image(path: str | Path, warn: bool = False) -> np.ndarray:
    """A tile image file as ``(H, W, 3)`` uint8 RGB (the module's rules). Raises ``ValueError`` naming the file."""
    return as_rgb8(decode_image(path), str(path), warn=warn)


def read_label(path: str | Path) -> np.ndarray:
    """An instance label file as an ``(H, W)`` int32 map. Raises ``ValueError`` naming the file and the problem."""
    label = decode_image(path)
    if label.ndim == 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim != 2:
        raise ValueError(
            f"{path}: label has shape {label.shape}; expected a single-channel integer instance map "
            "(0 = background, 1..N = nuclei)"
        )
    if label.dtype == np.bool_:
        return label.astype(np.int32)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{path}: label has {label.dtype} values; expected integers (0 = background, 1..N = nuclei)")
    if label.size and (label.min() < 0 or label.max() > np.iinfo(np.int32).max):
        raise ValueError(f"{path}: label values must be in [0, 2**31), got [{label.min()}, {label.max()}]")
    return label.astype(np.int32)


class _FileReader(ImageReader):
    """MONAI ``ImageReader`` around one of this module's readers: ``LoadImage(reader=...)`` gives the same pixels as
    the function, channels last (``EnsureChannelFirst(channel_dim=-1)`` for images, ``"no_channel"`` for labels)."""

    suffixes: Sequence[str] = (*IMAGE_SUFFIXES, ".npy")

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        return all(str(f).lower().endswith(tuple(self.suffixes)) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str] | str, **kwargs) -> list[tuple[str, np.ndarray]]:
        return [(str(f), self._read(f)) for f in ensure_tuple(data)]

    def get_data(self, img: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, dict]:
        if len(img) != 1:
            raise ValueError(f"{type(self).__name__} reads one file at a time, got {len(img)}.")
        name, array = img[0]
        meta = {
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:2]),
            MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if array.ndim == 3 else float("nan"),
            "filename_or_obj": name,
        }
        return array, meta

    @staticmethod
    def _read(path: str | Path) -> np.ndarray:
        raise NotImplementedError


class TileReader(_FileReader):
    """:func:`read_image` as a MONAI ``ImageReader``: ``(H, W, 3)`` uint8."""

    suffixes = IMAGE_SUFFIXES

    @staticmethod
    def _read(path: str | Path) -> np.ndarray:
        return read_image(path)


class LabelReader(_FileReader):
    """:func:`read_label` as a MONAI ``ImageReader``: ``(H, W)`` int32."""

    @staticmethod
    def _read(path: str | Path) -> np.ndarray:
        return read_label(path)


def load_tile(item: dict) -> tuple[torch.Tensor, np.ndarray]:
    """A datalist item's image as float (3, H, W) in [0, 255] and its (N, 2) points."""
    image = torch.from_numpy(read_image(item["image"])).permute(2, 0, 1).float()
    points = LoadPoints()(item["points"], tuple(image.shape[1:])).numpy()
    return image, points
