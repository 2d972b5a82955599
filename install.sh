#!/usr/bin/env bash
# Create .venv with the project and everything its tests use. Idempotent: a second run
# only checks. Pick another torch build (CUDA version) on a cluster by setting TORCH_SPEC.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import runner, torch, pytorch_metric_learning, ray, umap, submitit" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  # shellcheck disable=SC2086  # TORCH_SPEC is a list of requirement specifiers
  .venv/bin/pip install -q $TORCH_SPEC
  .venv/bin/pip install -q -e ".[all]"
fi
echo "ready: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
