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
"""The bundle's model card (``bundle/docs/README.md``) follows the MONAI model-zoo layout, and its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import REPO

CARD = REPO / "bundle" / "docs" / "README.md"
#: the sections of a model-zoo bundle's docs/README.md, in order
ZOO_SECTIONS = (
    "Model Overview",
    "Data",
    "Training configuration",
    "Input",
    "Output",
    "Performance",
    "MONAI Bundle Commands",
    "References",
    "License",
)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _headings(text: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+)$", text, flags=re.MULTILINE)]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_model_card_has_the_model_zoo_sections():
    assert CARD.is_file()
    headings = _headings(CARD.read_text(encoding="utf-8"))
    positions = [headings.index(section) for section in ZOO_SECTIONS]  # ValueError names a missing one
    assert positions == sorted(positions)
    assert len(CARD.read_text(encoding="utf-8").splitlines()) < 150


def test_model_card_links_resolve():
    links = _LINK.findall(CARD.read_text(encoding="utf-8"))
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(local) >= 5
    for link in local:
        target, _, anchor = link.partition("#")
        path = (CARD.parent / target).resolve() if target else CARD
        assert path.is_file(), link
        if anchor:
            assert anchor in {_anchor(h) for h in _headings(Path(path).read_text(encoding="utf-8"))}, link
