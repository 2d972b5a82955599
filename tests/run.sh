#!/usr/bin/env bash
# The test suite. As root it runs on real SLURM, in two parts:
#   1. everything but the multi-node tests, on the single-node cluster (slurm/cluster.sh);
#   2. the multi-node tests (-m multinode), on the 2-node cluster (slurm/cluster2.sh);
# then leaves the single-node cluster running, as part 1 found or started it.
# Not root: one pytest run; SLURM tests skip where no cluster answers.
# Extra arguments go to both pytest runs, e.g. `bash tests/run.sh -x -k grid`.
#
# Each pytest run prints how many tests marked slurm / multinode / ray passed, failed and
# skipped (tests/conftest.py); this script prints the totals of both runs at the end. With
# CI=true a skipped one of those fails the run: CI is green only when the cluster tests ran.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTEST=(.venv/bin/python -m pytest -q)
if [ "$(id -u)" != 0 ] || [ ! -f slurm/cluster2.sh ]; then
  exec "${PYTEST[@]}" tests "$@"
fi
DMLR_MARKER_REPORT=$(mktemp)
export DMLR_MARKER_REPORT
trap 'rm -f "$DMLR_MARKER_REPORT"' EXIT

bash slurm/cluster2.sh stop 2>/dev/null   # a 2-node cluster left from an interrupted run
bash slurm/cluster.sh start
rc=0
"${PYTEST[@]}" -m "not multinode" tests "$@" || rc=$?

bash slurm/cluster.sh stop
bash slurm/cluster2.sh start
rc2=0
"${PYTEST[@]}" -m multinode tests "$@" || rc2=$?
# pytest exits 5 when -k/-x etc. left no multi-node test to run: not a failure
[ "$rc2" = 5 ] && rc2=0
bash slurm/cluster2.sh stop
bash slurm/cluster.sh start
# the totals of both runs, per marker (each run's conftest appended a line of JSON)
.venv/bin/python - "$DMLR_MARKER_REPORT" <<'PY'
import json, sys
total = {}
for line in open(sys.argv[1]):
    for marker, counts in json.loads(line)["counts"].items():
        for outcome, n in counts.items():
            total.setdefault(marker, {}).setdefault(outcome, 0)
            total[marker][outcome] += n
for marker, c in total.items():
    print(f"tests/run.sh: {marker:10s} {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
PY
[ "$rc" = 0 ] && exit "$rc2"
exit "$rc"
