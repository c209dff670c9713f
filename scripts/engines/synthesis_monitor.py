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
"""Validation of the synthesis GAN without dense labels, run every few epochs as an ignite handler.

Each round measures, on fixed validation crops and tiles:

- ``point_f1``: point-detection F1 of ``F`` (the image -> mask network) on the validation tiles: sliding-window
  inference, HoVerNet post-processing, then :func:`scripts.evaluation.metrics.point_f1` against the annotated points;
- ``diversity``: the paper's per-pixel std of ``G`` over ``noise_draws`` noise draws per mask ([0, 1] units);
- ``stain_distance``: sliced Wasserstein distance of the HED colour distributions of ``G(mask)`` and the real
  crops (:func:`scripts.evaluation.synthesis_quality.stain_distance`); lower is better;
- ``kid`` when a feature network is given (e.g. a user-supplied TorchScript Inception: then it is the standard KID);
- ``score = point_f1 - fidelity_weight * stain_distance``: the model-selection score, kept in
  ``engine.state.metrics``; the best round's ``G`` and ``F`` are saved atomically to ``best_path``.

It also writes a sample grid PNG per round (mask | ``G(mask)`` under ``grid_draws`` noise draws | real crop) and
logs everything to TensorBoard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine
from torch.utils.tensorboard import SummaryWriter

from scripts.data.atomic import atomic_path
from scripts.data.images import load_tile, signed_to_uint8
from scripts.data.tiles import validation_crops
from scripts.engines.validation import PeriodicValidation
from scripts.evaluation.metrics import point_f1
from scripts.evaluation.synthesis_quality import diversity, kernel_inception_distance, pooled_features, stain_distance
from scripts.evaluation.visualize import grid, hv_rgb
from scripts.inference.predict import TilePredictor
from scripts.runtime import bf16_autocast

__all__ = ["SynthesisMonitor"]


def mask_rgb(masks: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) masks ``[h, v, np]`` -> (N, H, W, 3) uint8: HoVer colours inside nuclei, black outside."""
    out = []
    for mask in masks.float().cpu().numpy():
        out.append(hv_rgb(mask[:2]) * (mask[2:3].transpose(1, 2, 0) > 0.5))
    return np.stack(out).astype(np.uint8)


class SynthesisMonitor(PeriodicValidation):
    """Validate ``G`` and ``F`` every ``interval`` epochs; keep the best pair by ``score``.

    Args:
        generator: ``G``.
        mask_net: ``F``.
        validation_items: datalist items (``image``, ``points``) of the validation tiles.
        output_dir: folder for ``samples/`` and ``metrics.jsonl``.
        crop_size: size of the validation crops given to ``G`` (the training crop).
        best_path: file of the best ``{"generator", "mask_net", "metrics"}`` state.
        interval: run every this many epochs.
        max_crops: number of validation crops (masks) for diversity, fidelity and the grid.
        noise_draws: noise draws per mask for the diversity.
        grid_draws: noise draws shown per mask in the sample grid.
        grid_rows: masks shown in the grid.
        roi_size: sliding-window size of ``F`` on whole tiles (a multiple of the network's size factor).
        sw_batch_size: windows per forward pass.
        fidelity_weight: weight of ``stain_distance`` in ``score``.
        feature_network: optional callable for KID features
            (:func:`scripts.evaluation.synthesis_quality.load_feature_network`).
        postprocessing: instance post-processing (default :class:`HoVerNetInstances`).
        log_dir: TensorBoard folder (None: no TensorBoard).
        amp: run the networks under bfloat16 autocast.
        seed: seed of the validation masks and noise.
        sampler_kwargs: arguments of the validation masks' ``PointsToEllipseMask``.
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        mask_net: torch.nn.Module,
        validation_items: Sequence[dict],
        output_dir: str | Path,
        crop_size: int,
        best_path: str | Path,
        interval: int = 1,
        max_crops: int = 8,
        noise_draws: int = 10,
        grid_draws: int = 4,
        grid_rows: int = 4,
        roi_size: int | None = None,
        sw_batch_size: int = 4,
        fidelity_weight: float = 1.0,
        feature_network: Callable | None = None,
        postprocessing: Callable | None = None,
        log_dir: str | Path | None = None,
        amp: bool = False,
        seed: int = 0,
        sampler_kwargs: dict | None = None,
    ) -> None:
        super().__init__(output_dir, "score", interval, log_dir=log_dir)
        if not validation_items:
            raise ValueError("SynthesisMonitor needs at least one validation tile (datalist 'validation').")
        if noise_draws < 2:
            raise ValueError(f"noise_draws must be >= 2 to measure diversity, got {noise_draws}.")
        self.generator, self.mask_net = generator, mask_net
        self.items = list(validation_items)
        self.best_path = Path(best_path)
        self.noise_draws, self.grid_draws, self.grid_rows = noise_draws, grid_draws, grid_rows
        self.fidelity_weight, self.feature_network = fidelity_weight, feature_network
        self.predictor = TilePredictor(
            mask_net, roi_size or crop_size, sw_batch_size, intensity_range=(-1.0, 1.0), postprocessing=postprocessing
        )
        self.crops = validation_crops(self.items, crop_size, max_crops, seed, **(sampler_kwargs or {}))
        self.amp, self.seed = amp, seed
        self._draws_of_round: torch.Tensor | None = None

    def validate(self, engine: Engine) -> dict[str, float]:
        """Point F1 of ``F`` on the validation tiles, diversity and stain distance (and KID) of ``G``'s draws."""
        device = next(self.generator.parameters()).device
        modes = (self.generator.training, self.mask_net.training)
        self.generator.eval()
        self.mask_net.eval()
        try:
            with torch.no_grad():  # autocast only around G: MONAI's post-processing must not run under it
                draws = self._draws(device)
                metrics = {"point_f1": self._point_f1(), "diversity": diversity(draws)}
                metrics["stain_distance"] = stain_distance(draws[0], self.crops.images)
                if self.feature_network is not None:
                    real = pooled_features(self.feature_network, self.crops.images)
                    fake = pooled_features(self.feature_network, draws[0])
                    metrics["kid"], metrics["kid_std"] = kernel_inception_distance(fake, real)
        finally:
            self.generator.train(modes[0])
            self.mask_net.train(modes[1])
        metrics["score"] = metrics["point_f1"] - self.fidelity_weight * metrics["stain_distance"]
        self._draws_of_round = draws
        return metrics

    def _draws(self, device: torch.device) -> torch.Tensor:
        """(noise_draws, N, 3, H, W) images of ``G`` for the validation masks, with seeded noise."""
        masks = self.crops.masks.to(device)
        n, _, h, w = masks.shape
        out = []
        with torch.random.fork_rng(devices=[]), bf16_autocast(device, self.amp):
            torch.manual_seed(self.seed)
            for _ in range(self.noise_draws):
                z = self.generator.sample_noise(n, h, w, device=device)
                out.append(self.generator(masks, z).float().cpu())
        return torch.stack(out)

    def _point_f1(self) -> float:
        scores = []
        for item in self.items:
            image, points = load_tile(item)
            scores.append(point_f1(self.predictor(image), points))
        return float(np.mean(scores))

    def log_extra(self, iteration: int, writer: SummaryWriter | None) -> None:
        """The sample grid of the round: ``samples/samples_<iteration>.png`` and TensorBoard."""
        draws = self._draws_of_round
        rows = min(self.grid_rows, draws.shape[1])
        masks = mask_rgb(self.crops.masks[:rows])
        fakes = [signed_to_uint8(draws[d, :rows]) for d in range(min(self.grid_draws, draws.shape[0]))]
        real = signed_to_uint8(self.crops.images[:rows])
        picture = grid(
            [[masks[i], *(f[i] for f in fakes), real[i]] for i in range(rows)],
            titles=["mask", *(f"G(mask), z{d + 1}" for d in range(len(fakes))), "real crop"],
        )
        path = self.output_dir / "samples" / f"samples_{iteration:08d}.png"
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        if writer is not None:
            writer.add_image("validation/samples", np.asarray(picture), iteration, dataformats="HWC")

    def save_best(self, iteration: int, metrics: dict[str, float]) -> Path:
        state = {
            "generator": self.generator.state_dict(),
            "mask_net": self.mask_net.state_dict(),
            "metrics": {"iteration": iteration, **metrics},
        }
        with atomic_path(self.best_path) as tmp:
            torch.save(state, tmp)
        return self.best_path
