# Sourced by the GPU-machine scripts (gpu_run.sh, gpu_audit.sh), from the repo root: install what the
# GPU image lacks from the carried wheels (.whl/: pydicom, imagehash, pywavelets) and this package,
# without an index (that machine reaches no network). Sets OUT and a `stamp` function for timings.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
python3 -m pip install -q --no-index --no-build-isolation --no-deps -e . || exit 1
S=.devdata  # a copy of ../shared/data/sources, carried (../shared does not travel)
