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
"""Stage 3: a synthetic (image, instance label) dataset from a trained generator and point sets.

For every point set (the real point files of a data folder, or fully random sets drawn from a fitted point prior),
``masks_per_source`` instance masks are sampled by the shape prior and ``draws_per_mask`` images rendered by ``G``
under different noise, optionally each given the LAB colour statistics of a random real training tile (Reinhard
colour transfer, :class:`transforms.ReinhardColorMatch`). Every mask, image, noise draw and colour target has its own
seed derived from ``(seed, source, mask, draw)``, so a run is reproducible and an interrupted run, started again,
skips the finished files (each written atomically) and produces exactly the same dataset without duplicates.

Output folder::

    images/<name>_m<k>_z<d>.png   RGB uint8
    labels/<name>_m<k>.png        16-bit instance map (nucleus i+1 <- point i of points/<name>_m<k>.csv)
    points/<name>_m<k>.csv        the points of the mask's nuclei, "y,x"
    datalist.json                 MONAI datalist ({"training": [{"image", "label", "points", "name"}]})
    manifest.json                 the settings; a resumed run must match them
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from scripts.data.atomic import atomic_path, remove_stale_temporaries
from scripts.data.datalist import read_image_info
from scripts.data.images import read_image, read_label, signed_to_uint8
from scripts.engines.checkpoint import load_network_weights
from scripts.runtime import bf16_autocast
from transforms import EncodeMask, LoadPoints, PointsToEllipseMask, RandomPoints, ReinhardColorMatch, lab_statistics

__all__ = [
    "colour_targets",
    "load_generator",
    "random_point_sources",
    "real_point_sources",
    "render_windows",
    "synthesize",
]

COLOUR_MATCH = ("none", "reinhard")

logger = logging.getLogger(__name__)


def load_generator(generator: torch.nn.Module, checkpoint: str | Path) -> torch.nn.Module:
    """Load ``G``'s weights from a synthesis run's ``best.pt`` or ``checkpoint_*.pt`` (or a bare state dict);
    clear errors for a missing file or weights that do not fit
    (:func:`scripts.engines.checkpoint.load_network_weights`)."""
    return load_network_weights(generator, checkpoint, key="generator", what="generator")


def real_point_sources(datalist: dict, section: str = "training") -> list[dict]:
    """Point sets of the tiles of one ``section`` of a datalist (:func:`scripts.data.tiles.tile_datalist`, the split
    the GAN was trained with): ``{"name", "points", "spatial_size"}``. Only the ``training`` tiles' points may make
    training pairs; ``validation`` is for measuring mask-image coherence."""
    if section not in ("training", "validation"):
        raise ValueError(f"points_section must be 'training' or 'validation', got {section!r}.")
    sources = []
    for item in datalist[section]:
        size = read_image_info(item["image"]).size
        sources.append({"name": Path(item["image"]).stem, "points": item["points"], "spatial_size": tuple(size)})
    return sources


def colour_targets(colour_match: str, datalist: dict) -> list[str] | None:
    """The real tiles whose colours synthetic images take (``colour_match="reinhard"``): the images of the datalist's
    ``training`` section (the tiles the GAN trained on; never the validation tiles); ``None`` for ``"none"``."""
    if colour_match not in COLOUR_MATCH:
        raise ValueError(f"colour_match must be one of {list(COLOUR_MATCH)}, got {colour_match!r}.")
    if colour_match == "none":
        return None
    return [str(item["image"]) for item in datalist["training"]]


def random_point_sources(
    prior: str | Path | dict, count: int, spatial_size: Sequence[int], seed: int = 0
) -> list[dict]:
    """``count`` fully synthetic point sets of ``spatial_size`` drawn from a fitted point prior."""
    if count < 1:
        raise ValueError(f"the number of random point sets must be >= 1, got {count}.")
    size = tuple(int(s) for s in spatial_size)
    sampler = RandomPoints(prior=prior, spatial_size=size)
    sources = []
    for i in range(count):
        points = np.asarray(sampler.set_random_state(_seed(seed, 1, i))())
        sources.append({"name": f"random{i:04d}", "points": points, "spatial_size": size})
    return sources


def synthesize(
    generator: torch.nn.Module,
    sources: Sequence[dict],
    output_dir: str | Path,
    masks_per_source: int = 1,
    draws_per_mask: int = 1,
    seed: int = 0,
    sampler_kwargs: dict | None = None,
    device: str | torch.device = "cpu",
    amp: bool = False,
    settings: dict | None = None,
    progress: bool = True,
    colour_targets: Sequence[str | Path] | None = None,
    render_window: int = 0,
) -> Path:
    """Render the synthetic dataset of ``sources`` into ``output_dir``; returns its ``datalist.json``.

    Args:
        generator: the trained ``G`` (weights loaded, e.g. by :func:`load_generator`).
        sources: point sets ``{"name", "points" (file or (N, 2) array), "spatial_size" (H, W)}``.
        output_dir: dataset folder (created; a finished or interrupted run in it is continued).
        masks_per_source: instance masks sampled per point set.
        draws_per_mask: images rendered per mask, each with its own noise.
        seed: base seed.
        sampler_kwargs: arguments of :class:`transforms.PointsToEllipseMask` (prior, mpp, ...).
        device: device of ``G``.
        amp: render under bfloat16 autocast.
        settings: extra settings recorded in (and checked against) ``manifest.json``, e.g. the checkpoint path.
        progress: show a progress bar.
        colour_targets: real H&E images; when given, every rendered image takes the LAB colour statistics of one of
            them, drawn with the image's own seed (:class:`transforms.ReinhardColorMatch`).
        render_window: 0 renders each mask in one pass; ``n > 0`` renders it as ``G`` was trained, in ``n`` px
            windows (overlap 0.25, Gaussian blending: :func:`render_windows`) of one noise draw over the whole mask.
    """
    if render_window < 0:
        raise ValueError(f"render_window must be 0 (whole mask) or a window size in pixels, got {render_window}.")
    if masks_per_source < 1 or draws_per_mask < 1:
        raise ValueError(f"masks_per_source and draws_per_mask must be >= 1, got {masks_per_source}, {draws_per_mask}.")
    if not sources:
        raise ValueError("no point sets to synthesize from.")
    out = Path(output_dir)
    manifest = {
        "sources": [s["name"] for s in sources],
        "masks_per_source": masks_per_source,
        "draws_per_mask": draws_per_mask,
        "seed": seed,
        "sampler": {k: v for k, v in sorted((sampler_kwargs or {}).items())},
        **(settings or {}),
    }
    if render_window:  # only then: folders made before the option resume as they were
        manifest["render_window"] = render_window
    if colour_targets:
        manifest["colour_match"] = {"method": "reinhard", "targets": [Path(t).stem for t in colour_targets]}
    _check_manifest(out, manifest)
    for folder in (out, out / "images", out / "labels", out / "points"):
        remove_stale_temporaries(folder)  # left by a killed run
    device = torch.device(device)
    generator = generator.to(device).eval()
    sampler = PointsToEllipseMask(**(sampler_kwargs or {}))
    colours = [lab_statistics(read_image(t).transpose(2, 0, 1)) for t in colour_targets or ()]
    items: list[dict] = []
    bar = tqdm(
        total=len(sources) * masks_per_source * draws_per_mask, desc="synthesize", unit="image", disable=not progress
    )
    for i, source in enumerate(sources):
        size = tuple(int(s) for s in source["spatial_size"])
        points = _points(source, size)
        for k in range(masks_per_source):
            stem = f"{source['name']}_m{k}"
            label_path, points_path = out / "labels" / f"{stem}.png", out / "points" / f"{stem}.csv"
            label = None
            for d in range(draws_per_mask):
                image_path = out / "images" / f"{stem}_z{d}.png"
                items.append(
                    {
                        "image": f"images/{image_path.name}",
                        "label": f"labels/{label_path.name}",
                        "points": f"points/{points_path.name}",
                        "name": image_path.stem,
                    }
                )
                if image_path.is_file() and label_path.is_file() and points_path.is_file():
                    bar.update()
                    continue
                if label is None:
                    label = _mask(sampler, points, size, _seed(seed, 2, i, k), label_path, points_path)
                colour = colours[_seed(seed, 4, i, k, d) % len(colours)] if colours else None
                _render(generator, label, _seed(seed, 3, i, k, d), image_path, device, amp, colour, render_window)
                bar.update()
    bar.close()
    datalist = out / "datalist.json"
    with atomic_path(datalist) as tmp:
        tmp.write_text(json.dumps({"training": items}, indent=1) + "\n")
    logger.info(f"synthesized {len(items)} images in {out}")
    return datalist


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] % (2**31))


def _points(source: dict, size: tuple[int, int]) -> np.ndarray:
    points = source["points"]
    if isinstance(points, (str, Path)):
        return LoadPoints()(points, size).numpy()
    return np.asarray(points, dtype=np.float32).reshape(-1, 2)


def _check_manifest(out: Path, manifest: dict) -> None:
    path = out / "manifest.json"
    manifest = json.loads(json.dumps(manifest, default=str))
    if path.is_file():
        old = json.loads(path.read_text())
        if old != manifest:
            changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            raise ValueError(
                f"{out}: holds a synthetic dataset made with other settings (differing: {changed}); "
                "use a new output folder or delete this one."
            )
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")


def _mask(
    sampler: PointsToEllipseMask,
    points: np.ndarray,
    size: tuple[int, int],
    seed: int,
    label_path: Path,
    points_path: Path,
) -> np.ndarray:
    """The instance mask of one (source, mask) pair: read back if already written, else sampled and written."""
    if label_path.is_file() and points_path.is_file():
        return read_label(label_path)
    label = np.asarray(sampler.set_random_state(seed)(points, size))[0].astype(np.int32)
    if label.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"{label_path}: {label.max()} nuclei do not fit a 16-bit label image.")
    kept = np.unique(label[label > 0])
    relabelled = np.zeros(int(label.max()) + 1, dtype=np.int32)
    relabelled[kept] = np.arange(1, kept.size + 1)
    label = relabelled[label]
    with atomic_path(points_path) as tmp:
        rows = "".join(f"{y:.2f},{x:.2f}\n" for y, x in points[kept - 1])
        tmp.write_text("y,x\n" + rows)
    with atomic_path(label_path) as tmp:
        Image.fromarray(label.astype(np.uint16)).save(tmp, format="PNG")
    return label


@torch.no_grad()
def render_windows(
    generator: torch.nn.Module, mask: torch.Tensor, z: torch.Tensor | None, window: int, overlap: float = 0.25
) -> torch.Tensor:
    """``G`` applied as it was trained, on ``window`` px crops of ``mask`` (and of the spatial noise ``z`` drawn for the
    whole mask), blended with Gaussian weights (MONAI's :class:`~monai.inferers.SlidingWindowInferer`), so that its
    normalisation statistics are those of training crops rather than of a whole tile."""
    from monai.inferers import SlidingWindowInferer

    inferer = SlidingWindowInferer(roi_size=window, sw_batch_size=4, overlap=overlap, mode="gaussian", progress=False)
    channels = mask.shape[1]
    if z is None or z.ndim == 2:  # no noise, or one vector per image: the same for every window
        return inferer(mask, lambda m: generator(m, None if z is None else z.expand(m.shape[0], -1)))
    return inferer(torch.cat([mask, z.to(mask.dtype)], 1), lambda x: generator(x[:, :channels], x[:, channels:]))


@torch.no_grad()
def _render(
    generator: torch.nn.Module,
    label: np.ndarray,
    seed: int,
    path: Path,
    device: torch.device,
    amp: bool,
    colour: tuple[np.ndarray, np.ndarray] | None = None,
    window: int = 0,
) -> None:
    """``G`` on the whole mask (zero-padded to the generator's size factor; in ``window`` px windows if > 0), given
    the LAB ``colour`` statistics (mean, std) if any, written as an RGB PNG."""
    h, w = label.shape
    mask = EncodeMask()(label[None])[None]
    factor = int(getattr(generator, "factor", 1))
    ph, pw = max(-(-h // factor) * factor, 2 * factor), max(-(-w // factor) * factor, 2 * factor)
    mask = torch.nn.functional.pad(mask, (0, pw - w, 0, ph - h)).to(device)
    with torch.random.fork_rng(devices=[]):  # noise drawn on the CPU: the same images on every device
        torch.manual_seed(seed)
        z = generator.sample_noise(1, ph, pw, device=torch.device("cpu"))
    z = z.to(device) if z is not None else None
    with bf16_autocast(device, amp):
        image = (render_windows(generator, mask, z, window) if window else generator(mask, z)).float()[0, :, :h, :w]
    pixels = signed_to_uint8(image)
    if colour is not None:
        pixels = ReinhardColorMatch(*colour)(pixels.transpose(2, 0, 1)).transpose(1, 2, 0)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
