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
"""The point-regularised CycleGAN of DESIGN.md stage 2 as a MONAI trainer.

One iteration updates the generator ``G`` (mask -> image) and the mask network ``F`` (image -> mask) together,
then both discriminators, with image pools of past fakes. The objective (weights from the config)::

    L_GAN(G, D_X) + w_mask_gan L_GAN(F, D_S) + w_cycle L1(G(F(x)), x)
    + w_instance HoVerNetLoss(F(G(s)), s) + w_point [point(F(x)) + point(F(G(s)))]

The ablations of the paper are weight and option changes: (a) plain CycleGAN: ``G`` without noise, ``w_point``
0; (b) noise added; (c) noise and point loss (the method).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.apps.pathology.losses import HoVerNetLoss
from monai.engines import Trainer
from monai.losses import PatchAdversarialLoss
from monai.utils import HoVerNetBranch, convert_to_tensor
from torch.utils.data import DataLoader

from scripts.engines.handlers import TrainingDivergedError
from scripts.runtime import bf16_autocast
from scripts.runtime.distributed import unwrap

__all__ = ["CycleGANTrainer", "ImagePool", "LinearDecay", "mask_from_prediction", "point_loss"]

NP, HV = HoVerNetBranch.NP.value, HoVerNetBranch.HV.value


class ImagePool:
    """The CycleGAN history of generated samples (Shrivastava 2017): with probability 1/2 a query returns a
    stored past sample (and stores the new one in its place), otherwise the new sample.

    Its state (stored samples and random generator) goes into checkpoints, so a resumed run continues with
    the same history.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}.")
        self.size = size
        self.images: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)

    def query(self, batch: torch.Tensor) -> torch.Tensor:
        """Return a batch of the same shape: a mix of ``batch`` and stored samples (``batch`` is detached)."""
        if self.size == 0:
            return batch.detach()
        out = []
        for sample in batch.detach():
            if len(self.images) < self.size:
                self.images.append(sample.cpu().clone())
                out.append(sample)
            elif torch.rand((), generator=self.generator) < 0.5:
                i = int(torch.randint(len(self.images), (), generator=self.generator))
                out.append(self.images[i].to(sample.device, sample.dtype))
                self.images[i] = sample.cpu().clone()
            else:
                out.append(sample)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        stored = torch.stack(self.images) if self.images else torch.zeros(0)
        return {"images": stored, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.images = [image.clone() for image in state["images"]] if state["images"].numel() else []
        self.generator.set_state(state["generator"])


class LinearDecay:
    """Learning-rate factor for ``torch.optim.lr_scheduler.LambdaLR`` stepped every iteration: 1 until
    ``start_fraction`` of ``total_iterations``, then linearly down to 0 at the end (CycleGAN's schedule).

    Its parameters live in slots, not in ``__dict__``, which is what ``LambdaLR.state_dict`` saves of a callable
    object: a run resumed with a longer schedule (more iterations) follows the configured one, not the checkpoint's.
    """

    __slots__ = ("total", "start", "__dict__")  # an empty __dict__ for LambdaLR

    def __init__(self, total_iterations: int, start_fraction: float = 0.75) -> None:
        if total_iterations < 1 or not 0.0 <= start_fraction <= 1.0:
            raise ValueError(
                f"need total_iterations >= 1 and 0 <= start_fraction <= 1, got {total_iterations}, {start_fraction}."
            )
        self.total = int(total_iterations)
        self.start = int(round(start_fraction * total_iterations))

    def __call__(self, iteration: int) -> float:
        if iteration < self.start:
            return 1.0
        return max(0.0, (self.total - iteration) / max(1, self.total - self.start))


def mask_from_prediction(prediction: dict[str, torch.Tensor]) -> torch.Tensor:
    """The 3-channel mask ``[h, v, np]`` of a HoVerNet-style output: HV maps and the nucleus probability."""
    probability = torch.softmax(prediction[NP].float(), dim=1)[:, 1:2]
    return torch.cat([prediction[HV].float(), probability], dim=1)


def point_loss(np_logits: torch.Tensor, point_map: torch.Tensor) -> torch.Tensor:
    """``-mean(log p_nucleus)`` over the pixels of ``point_map`` (B, 1, H, W); exactly 0 when there are none."""
    log_p = torch.log_softmax(np_logits.float(), dim=1)[:, 1:2]
    weight = (point_map > 0).to(log_p.dtype)
    return -(log_p * weight).sum() / weight.sum().clamp_min(1.0)


def _instance_targets(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    foreground = (mask[:, 2:3] > 0.5).float()
    return {NP: torch.cat([1.0 - foreground, foreground], dim=1), HV: mask[:, :2]}


def _set_requires_grad(networks: Sequence[torch.nn.Module | None], flag: bool) -> None:
    for network in networks:
        if network is not None:
            for p in network.parameters():
                p.requires_grad_(flag)


def _compiled(network: torch.nn.Module | None, enabled: bool) -> Callable | None:
    """``torch.compile(network)`` (a view sharing the module's parameters) if ``enabled``, else ``network``.

    Inductor's layout optimisation (convolutions switched to channels-last) is off: with it, the compiled backward of
    the strided 1x1 convolutions crashes in oneDNN on CPU (segmentation fault, torch 2.13).
    """
    if not enabled or network is None:
        return network
    return torch.compile(network, options={"layout_optimization": False})


class CycleGANTrainer(Trainer):
    """Point-regularised CycleGAN training loop on ignite (see the module docstring for the objective).

    Batches are dictionaries with ``image`` (B, 3, H, W) in [-1, 1], ``mask`` (B, 3, H, W) ``[h, v, np]`` sampled
    from the same crop's points, and ``point_map`` (B, 1, H, W). ``engine.state.output`` holds every loss term
    as a float.

    Args:
        device: device to train on.
        max_epochs: number of epochs of ``epoch_length`` iterations.
        train_data_loader: the loader of aligned (image, mask, point map) crops.
        generator: ``G``, called as ``generator(mask)`` (it draws its own noise).
        mask_net: ``F``, returning a HoVerNet output dictionary.
        image_discriminator: ``D_X``.
        mask_discriminator: ``D_S``; ``None`` (or ``w_mask_gan`` 0) drops the mask-side adversarial term.
        g_optimizer: optimiser of ``G`` and ``F`` together.
            (The four networks may come wrapped in ``DistributedDataParallel`` by
            :func:`scripts.runtime.distributed.prepare`: each rank keeps its own image pools.)
        d_optimizer: optimiser of the discriminators together.
        epoch_length: iterations per epoch (default: the loader's length).
        w_cycle, w_instance, w_point, w_mask_gan: loss weights.
        instance_loss: loss of ``F(G(s))`` against ``s`` (default MONAI ``HoVerNetLoss`` with unit weights).
        pool_size: size of each image pool.
        amp: train under ``torch.autocast`` with bfloat16 (faster on recent GPUs and CPUs with AMX, see
            :func:`scripts.runtime.fast_bf16`).
        channels_last: use the channels-last memory format (faster convolutions with ``amp`` on CPU).
        compile: run the training iteration's forward passes through ``torch.compile`` (the networks themselves,
            their checkpoints and the validation stay eager); the first iterations pay the compilation.
        train_handlers: ignite handlers with an ``attach`` method.
        seed: seed of the image pools.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        generator: torch.nn.Module,
        mask_net: torch.nn.Module,
        image_discriminator: torch.nn.Module,
        mask_discriminator: torch.nn.Module | None,
        g_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        epoch_length: int | None = None,
        w_cycle: float = 5.0,
        w_instance: float = 5.0,
        w_point: float = 1.0,
        w_mask_gan: float = 1.0,
        instance_loss: Callable | None = None,
        pool_size: int = 50,
        amp: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        train_handlers: Sequence | None = None,
        seed: int = 0,
    ) -> None:
        for name, value in (("w_cycle", w_cycle), ("w_instance", w_instance), ("w_point", w_point)):
            if not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value}.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            handlers=train_handlers,
            decollate=False,
        )
        self.generator, self.mask_net = generator, mask_net
        self.image_discriminator = image_discriminator
        self.mask_discriminator = mask_discriminator if w_mask_gan > 0 else None
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.w_cycle, self.w_instance, self.w_point, self.w_mask_gan = w_cycle, w_instance, w_point, w_mask_gan
        self.instance_loss = instance_loss if instance_loss is not None else HoVerNetLoss(lambda_hv_mse=1.0)
        self.adversarial = PatchAdversarialLoss(criterion="least_squares")
        self.image_pool, self.mask_pool = ImagePool(pool_size, seed), ImagePool(pool_size, seed + 1)
        self.bf16 = bool(amp)  # not `amp`: MONAI Trainer.run would make a CUDA GradScaler of it
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for network in (generator, mask_net, image_discriminator, self.mask_discriminator):
            if network is not None:
                unwrap(network).to(self.state.device, memory_format=self.memory_format)
        self.compile = bool(compile)
        # the callables of the iteration: compiled views of the same modules (shared parameters), or the modules;
        # the generator step calls the discriminators unwrapped from DistributedDataParallel (see _iteration)
        self._run = {
            name: _compiled(network, self.compile)
            for name, network in (
                ("G", generator),
                ("F", mask_net),
                ("D_X", image_discriminator),
                ("D_S", self.mask_discriminator),
                ("D_X frozen", unwrap(image_discriminator)),
                ("D_S frozen", unwrap(self.mask_discriminator) if self.mask_discriminator is not None else None),
            )
        }

    def state_dict(self) -> dict[str, Any]:
        """The engine state plus both image pools, so that a resumed run keeps its history of fakes."""
        return {
            **super().state_dict(),
            "image_pool": self.image_pool.state_dict(),
            "mask_pool": self.mask_pool.state_dict(),
        }

    def load_state_dict(self, state_dict: Any) -> None:
        state = dict(state_dict)
        for name in ("image_pool", "mask_pool"):
            if name in state:
                getattr(self, name).load_state_dict(state.pop(name))
        super().load_state_dict(state)

    def _autocast(self) -> torch.autocast:
        return bf16_autocast(self.state.device, self.bf16)

    def _to_device(self, batch: dict[str, torch.Tensor], key: str) -> torch.Tensor:
        if key not in batch:
            raise KeyError(f"CycleGANTrainer: the batch has no '{key}' (keys: {sorted(batch)}); check the transforms.")
        # plain tensors (no MetaTensor): torch.compile and the losses need no metadata
        tensor = convert_to_tensor(batch[key], dtype=torch.float32, device=self.state.device, track_meta=False)
        return tensor.contiguous(memory_format=self.memory_format)

    def _adversarial(self, discriminator: torch.nn.Module, x: torch.Tensor, real: bool, for_d: bool) -> torch.Tensor:
        return self.adversarial(discriminator(x).float(), target_is_real=real, for_discriminator=for_d)

    def _iteration(self, engine: Any, batchdata: dict[str, torch.Tensor]) -> dict[str, float]:
        x, s = self._to_device(batchdata, "image"), self._to_device(batchdata, "mask")
        points = self._to_device(batchdata, "point_map")
        d_x, d_s = self.image_discriminator, self.mask_discriminator
        g, f, run_dx, run_ds = (self._run[k] for k in ("G", "F", "D_X", "D_S"))

        # G and F; the frozen discriminators run unwrapped (outside DistributedDataParallel), since they get no
        # gradient to synchronise in this step
        _set_requires_grad((d_x, d_s), False)
        with self._autocast():
            fake_x = g(s)
            rec_s = f(fake_x)
            pred_s = f(x)
            s_from_x = mask_from_prediction(pred_s).contiguous(memory_format=self.memory_format)
            rec_x = g(s_from_x)
            terms = {"adv_G": self._adversarial(self._run["D_X frozen"], fake_x, True, False)}
            if d_s is not None:
                terms["adv_F"] = self._adversarial(self._run["D_S frozen"], s_from_x, True, False)
        terms["cycle"] = F.l1_loss(rec_x.float(), x)
        terms["instance"] = self.instance_loss({k: v.float() for k, v in rec_s.items()}, _instance_targets(s))
        terms["point"] = point_loss(pred_s[NP], points) + point_loss(rec_s[NP], points)
        loss_g = (
            terms["adv_G"]
            + self.w_mask_gan * terms.get("adv_F", 0.0)
            + self.w_cycle * terms["cycle"]
            + self.w_instance * terms["instance"]
            + self.w_point * terms["point"]
        )
        self._check_finite(engine, "loss_G", loss_g, terms)
        self.g_optimizer.zero_grad(set_to_none=True)
        loss_g.backward()
        self.g_optimizer.step()

        # D_X and D_S
        _set_requires_grad((d_x, d_s), True)
        fake_x_old = self.image_pool.query(fake_x.detach())
        with self._autocast():
            d_terms = {
                "D_image": 0.5
                * (self._adversarial(run_dx, x, True, True) + self._adversarial(run_dx, fake_x_old, False, True))
            }
            if d_s is not None:
                fake_s_old = self.mask_pool.query(s_from_x.detach())
                d_terms["D_mask"] = 0.5 * (
                    self._adversarial(run_ds, s, True, True) + self._adversarial(run_ds, fake_s_old, False, True)
                )
        loss_d = sum(d_terms.values())
        self._check_finite(engine, "loss_D", loss_d, d_terms)
        self.d_optimizer.zero_grad(set_to_none=True)
        loss_d.backward()
        self.d_optimizer.step()

        output = {"loss_G": loss_g, **terms, "loss_D": loss_d, **d_terms}
        return {k: float(v.detach()) for k, v in output.items()}

    @staticmethod
    def _check_finite(engine: Any, name: str, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        if math.isfinite(float(loss.detach())):
            return
        values = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
        raise TrainingDivergedError(
            f"{name} is not finite at iteration {engine.state.iteration} ({values}). Training stopped before the "
            "update, so the last saved checkpoint is intact; resume from it with a lower learning rate or amp off."
        )
