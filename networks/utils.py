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
"""Helpers shared by the networks: optional spectral normalisation and its removal for TorchScript export."""

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm  # private, but the only way to recognise it
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm as _SpectralNormHook

__all__ = ["maybe_spectral_norm", "remove_spectral_norm"]


def maybe_spectral_norm(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Return ``module`` with spectral normalisation (a ``torch.nn.utils.parametrizations`` parametrisation)
    on its ``weight`` when ``enabled``, else ``module`` unchanged.

    A parametrised module cannot be scripted: call :func:`remove_spectral_norm` before ``torch.jit.script``.
    """
    return _spectral_norm(module) if enabled else module


def remove_spectral_norm(module: nn.Module) -> nn.Module:
    """Bake spectral normalisation into plain weights, in place, for every submodule of ``module``.

    Each normalised weight ``W / sigma`` is computed with the stored power-iteration vectors and no further
    iteration (as in eval mode), so an eval-mode forward gives the same output before and after. Handles both
    ``torch.nn.utils.parametrizations.spectral_norm`` and the older hook-based ``torch.nn.utils.spectral_norm``;
    tensors without a spectral-norm parametrisation are left alone. Deep-copy the module first to keep a
    trainable original.

    Returns:
        ``module`` (modified in place), now scriptable with ``torch.jit.script``.
    """
    for sub in list(module.modules()):
        if parametrize.is_parametrized(sub):
            for name in list(sub.parametrizations.keys()):
                plist = sub.parametrizations[name]
                if not any(isinstance(p, _SpectralNorm) for p in plist):
                    continue
                plist.eval()  # no power iteration while baking: the weight an eval forward uses
                with torch.no_grad():
                    parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
        if any(isinstance(hook, _SpectralNormHook) for hook in sub._forward_pre_hooks.values()):
            torch.nn.utils.remove_spectral_norm(sub)  # computes the weight without power iteration
    return module
