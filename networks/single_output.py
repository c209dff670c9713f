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
"""Single-tensor form of the segmenter, for TorchScript, ``verify_net_in_out`` and MONAI Deploy.

The segmenters return MONAI HoVerNet's dictionary; the bundle's ``network_def`` wraps them in
:class:`HoVerNetSingleOutput`, which returns one ``(B, 4, H, W)`` tensor: channels 0-1 the nucleus-prediction (NP)
logits (background, nucleus), channels 2-3 the horizontal / vertical (HV) maps. :func:`transforms.split_output` undoes
it.

Contract of MONAI Deploy's ``MonaiBundleInferenceOperator`` (monai-deploy-app-sdk 4.0), which this bundle meets:

- the model is a TorchScript file (``models/model.ts``, a zip archive) holding ``<stem>/extra/metadata.json`` and the
  config files it was exported with (``<stem>/extra/inference.json``, ``deploy.json``), or a bundle folder with
  ``configs/`` and ``models/model.ts``; the config imports must resolve (the bundle root on ``sys.path``);
- ``metadata.json`` ``network_data_format``: the ``inputs`` keys (``image``) name the operator's inputs, the
  ``outputs`` keys (``pred``) its outputs; an output of ``type`` ``image`` is sent as a uint8 ``Image``;
- config ids, all optional: ``device``, ``inferer`` (else ``SimpleInferer``), ``preprocessing`` and
  ``postprocessing`` (``Compose``; ``LoadImage*`` / ``SaveImage*`` transforms are dropped);
- the operator keeps ``ensure_tuple(inferer(...))[0]``: the network must return one tensor (a dictionary would yield
  its first key), here ``(4, H, W)`` after the batch dimension is dropped, post-processed under the key ``pred``.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.utils import HoVerNetBranch
from torch import nn

__all__ = ["HoVerNetSingleOutput"]

_INNER = "network."


class HoVerNetSingleOutput(nn.Module):
    """Return ``cat(NP logits, HV)``, one ``(B, 4, H, W)`` tensor, from a network returning MONAI HoVerNet's
    dictionary (``ImageToMaskNet``, or ``HoVerNet`` with ``out_classes=0``). TorchScript-able.

    The state dict has the wrapped network's own keys (no ``network.`` prefix), so a ``model.pt`` written by
    ``train.json`` loads into either form, and weights saved from this wrapper load into the bare network.

    Args:
        network: the segmenter.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.register_state_dict_post_hook(_drop_prefix)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(x)
        return torch.cat([out[HoVerNetBranch.NP.value], out[HoVerNetBranch.HV.value]], dim=1)


def _drop_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    inner = prefix + _INNER
    for key in [k for k in state_dict if k.startswith(inner)]:  # the wrapper's keys are the last ones: order kept
        state_dict[prefix + key[len(inner) :]] = state_dict.pop(key)


def _add_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    inner = prefix + _INNER
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix) :]] = state_dict.pop(key)
