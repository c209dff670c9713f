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
"""MONAI Label app serving the bundle's nucleus instance segmentation (``bundle/docs/monailabel.md``).

``monailabel start_server --app scripts/apps/label_app --studies <tiles or slides> --conf models nuclei``: ``main.py``
holds the app (it needs ``monailabel``), :mod:`scripts.apps.label_app.nuclei` the bundle loading and the conversion of
instances to MONAI Label's annotation polygons (it does not).
"""
