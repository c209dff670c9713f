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
"""Project code that the bundle configs call beyond MONAI, by role: ``cli/`` (the ``python -m scripts`` commands),
``engines/`` (what the training and synthesis configs reference), ``data/`` (datalists, readers, slides, writers),
``inference/``, ``evaluation/``, ``apps/`` (MONAI Deploy, MONAI Label), ``bench/`` and ``runtime/``.

MONAI Label imports a bundle's custom code as the package ``scripts``; keep the name.
"""

from pathlib import Path

__all__ = ["CODE_ROOT", "SAMPLE_DATA", "source_root"]

#: the folder holding ``scripts/``, ``networks/`` and ``transforms/``: the repository, or an exported bundle's root
CODE_ROOT = Path(__file__).resolve().parents[1]
#: the embedded sample (four MoNuSeg training crops with points and labels) in a checkout
SAMPLE_DATA = CODE_ROOT / "bundle" / "sample_data"


def source_root() -> Path:
    """The bundle folder this code belongs to: ``bundle/`` of the checkout, or the root of an exported bundle."""
    return CODE_ROOT / "bundle" if (CODE_ROOT / "bundle" / "configs").is_dir() else CODE_ROOT
