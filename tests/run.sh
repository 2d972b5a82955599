#!/usr/bin/env bash
# The test suite: starts the local SLURM cluster (root only) for the SLURM tests, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && [ -f slurm/cluster.sh ]; then
  bash slurm/cluster.sh start
fi
exec .venv/bin/python -m pytest -q tests "$@"
