#!/usr/bin/env bash
# The prepared GPU check: `python -m scripts bench gpu` on a CUDA machine, within 8 minutes, report in $OUT/gpu.json.
#
# From the repository root of a machine whose Python has torch (CUDA), numpy, scikit-image, scipy, tifffile, pillow
# and tqdm but possibly not MONAI's own stack: wheels in .whl/ (made with bundle/docs/inference.md's `pip download`
# line) are installed into /tmp/site first. bundle/models/model.pt is the slide run's model; the slide is mosaicked
# from bundle/sample_data unless ../shared/data/monuseg is there.
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
OUT=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 timeout 480 python3 -m scripts bench gpu --output "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
