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
"""Networks of the bundle (mask->image generator, image->mask net, discriminators, the single-tensor wrapper)."""

from networks.discriminator import SpectralPatchDiscriminator
from networks.generator import MaskToImageGenerator, SPADEResBlock
from networks.hover_unet import HoVerUNet
from networks.mask_net import ImageToMaskNet, PreActBlock
from networks.single_output import HoVerNetSingleOutput
from networks.utils import maybe_spectral_norm, remove_spectral_norm

__all__ = [
    "HoVerNetSingleOutput",
    "HoVerUNet",
    "ImageToMaskNet",
    "MaskToImageGenerator",
    "PreActBlock",
    "SPADEResBlock",
    "SpectralPatchDiscriminator",
    "maybe_spectral_norm",
    "remove_spectral_norm",
]
