#!/usr/bin/env bash
# Here, before the one device call of a session lent a GPU (the device tool): downloads the
# Python packages its image lacks (for its Python 3.12) into .whl/, which .git/info/exclude
# ignores: PyAV, pyzmq, msgspec, pydicom, pyigtl, and pycuda as its source package with what
# it needs. The tree that travels is capped at 64 MiB and PyAV's wheel alone is 35 MB, so
# the committed bench results (18 MB) move aside to ../gpu_aside for the call. Then:
#     device run: command "bash tools/gpu_check.sh", carry [".whl"], timeout_s 590
#     tools/gpu_prepare.sh --restore        # puts bench/results back, whatever happened
set -euo pipefail
cd "$(dirname "$0")/.."
aside=../gpu_aside
if [ "${1:-}" = --restore ]; then
  if [ -d "$aside/bench/results" ]; then
    rm -rf bench/results && mv "$aside/bench/results" bench/results
  fi
  git status --short bench/results | head -3
  exit 0
fi
mkdir -p .git/info .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${plat[@]}" -d .whl av pyzmq msgspec pydicom pyigtl pytools \
  platformdirs mako siphash24 2>&1 | grep -v '^WARNING' || true
# pip download would build pycuda's metadata (it needs CUDA): take the source package as is
url=$(curl -fsS https://pypi.org/pypi/pycuda/json | python -c 'import json, sys
print(next(u["url"] for u in json.load(sys.stdin)["urls"] if u["packagetype"] == "sdist"))')
[ -f ".whl/${url##*/}" ] || curl -fsSL -o ".whl/${url##*/}" "$url"
if [ -d bench/results ]; then
  mkdir -p "$aside/bench" && rm -rf "$aside/bench/results" && mv bench/results "$aside/bench/"
fi
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1 || true)
whl=$(du -cb .whl/* | tail -1 | cut -f1)
echo "ready: .whl $((whl / 1048576)) MiB + tree $((tree / 1048576)) MiB (limit 64);" \
     "bench/results is in $aside until 'tools/gpu_prepare.sh --restore'"
ls .whl
