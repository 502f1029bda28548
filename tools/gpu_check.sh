#!/usr/bin/env bash
# On a GPU machine lent through the device tool, from the repository root, after
# tools/gpu_prepare.sh here: installs what the image lacks (from .whl/) and hepascope (its
# native ring and CUDA kernels built there), then issue 18's GPU figures in one call, most
# wanted first, each under its own timeout so that the whole ends inside ~9.5 minutes:
#   1. the GPU tests of the newest GPU code (CUDA preprocessing, torch fed on the device)
#   2. python -m hepascope.bench.gpu_live: 60 fps capture->publish, CUDA preprocessing on/off
#   3. python -m hepascope.bench.gpu: bimodal@224 frames/s at batch 32, ResNet-18 batch 1
#   4. hepascope bench --device cuda --quick --streams 1,4,16: the pipeline, 16 streams
#   5. every other GPU test, in the time left
# $OUT gets gpu_check.log and results.tgz (a folder per step), also when a step fails.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT/r"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
END=$((SECONDS + ${BUDGET_S:-570}))
step() { echo "== $(date -u +%H:%M:%S) ($((END - SECONDS)) s left) $*"; }
left() { local n=$((END - SECONDS - 15)); [ "$n" -gt "$1" ] && echo "$1" || echo "$n"; }
trap 'tar czf "$OUT/results.tgz" -C "$OUT" r; step done' EXIT

if [ -z "${SKIP_INSTALL:-}" ]; then
  step "install: wheels, pycuda from its source, hepascope"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl || exit 1
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site \
    .whl/pycuda-*.tar.gz || echo "pycuda did not build: the CUDA preprocessing will say so"
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site . \
    || exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY - <<'PY' || true
import torch
from hepascope.core.errors import ModelError
from hepascope.engines.cuda import CudaContext
print("torch", torch.__version__, "cuda", torch.cuda.is_available() and torch.cuda.get_device_name(0))
try:
    ctx = CudaContext(0)
except ModelError as e:
    print("pycuda:", e)
else:
    print("pycuda context on", ctx.name)
    ctx.close()
PY
step "1/5 GPU tests of the CUDA preprocessing on the live path"
timeout "$(left 90)" $PY -m pytest -q -rs -p no:cacheprovider -m gpu --rootdir=. \
  tests/test_torch_device_fed.py tests/test_gpu_preprocess.py 2>&1 | tail -15
step "2/5 live path at 60 fps, CUDA preprocessing on vs off (ABAB)"
timeout "$(left 150)" $PY -m hepascope.bench.gpu_live --out "$OUT/r/gpu-live" \
  --seconds 10 --pairs 2
step "3/5 engines: bimodal@224 at batch 32, ResNet-18 at batch 1"
timeout "$(left 150)" $PY -m hepascope.bench.gpu --out "$OUT/r/gpu-engines" --runs 200 \
  --batch 32 | tail -25
step "4/5 hepascope bench --device cuda --quick --streams 1,4,16"
timeout "$(left 240)" $PY -m hepascope.cli bench --device cuda --quick --streams 1,4,16 \
  --out "$OUT/r/bench-quick" | tail -30
step "5/5 every other GPU test"
timeout "$(left 600)" $PY -m pytest -q -rs -p no:cacheprovider -m gpu tests/ \
  --deselect tests/test_torch_device_fed.py --deselect tests/test_gpu_preprocess.py \
  2>&1 | tail -15
