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
"""Process-level concerns of every entry point: threads, the allocator setting, mixed precision, multi-process runs."""

from scripts.runtime.process import (
    FAST_ALLOCATOR,
    NO_REEXEC,
    Bf16Autocast,
    bf16_autocast,
    configure,
    fast_bf16,
    native_bf16,
)

__all__ = ["FAST_ALLOCATOR", "NO_REEXEC", "Bf16Autocast", "bf16_autocast", "configure", "fast_bf16", "native_bf16"]
