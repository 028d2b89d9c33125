#!/usr/bin/env bash
# Create .venv (or reuse it) and install covidnet with its test and documentation tools. Safe to run again.
#   bash scripts/setup.sh            # CPU machine or GPU machine
# torch/torchvision: kept when an accepted version (torch 2.11-2.14) is already importable in the venv
# or, with COVIDNET_SYSTEM_TORCH=1, from the system Python (the GPU machine's preinstalled build);
# otherwise installed by the pins that are known to work on this architecture.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ "${COVIDNET_SYSTEM_TORCH:-0}" = 1 ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv --system-site-packages .venv
else
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! "$VPY" - <<'PYEOF' 2>/dev/null
import torch, torchvision, sys
major, minor = (int(v) for v in torch.__version__.split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 11) and (major, minor) < (2, 15) else 1)
PYEOF
then
  case "$(uname -m)" in
    x86_64)  "$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1 ;;
    *) "$VPY" -m pip install -q 'torch>=2.11,<2.15' 'torchvision>=0.26,<0.30' ;;
  esac
fi
"$VPY" -m pip install -q -e '.[all,dev,docs]'
"$VPY" -c "import covidnet, torch; print(f'covidnet {covidnet.__version__} ready (torch {torch.__version__}) in .venv')"
