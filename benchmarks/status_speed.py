"""Time of `python -m runner.status RESULTS` over a results directory of generated run.h5 files.

    python benchmarks/status_speed.py [--runs 10000] [--dir /tmp/status-bench]

Writes --runs fake run.h5 files (tests/fake_runs.py: tiny arrays, every 20th failed) once,
then times the command in a fresh process, as a user types it, twice: without
RESULTS/index.sqlite (every run.h5 opened; status writes the catalog as it goes), and
again with the catalog it left. Target: under 3 s for 10,000 runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import fake_results, timed  # noqa: E402  (the checkout, not an installed copy)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10000)
    p.add_argument("--dir", default="/tmp/status-bench")
    args = p.parse_args()
    out = fake_results(args.dir, args.runs)
    status = [sys.executable, "-m", "runner.status", str(out)]
    t_files, line = timed(status)
    print(f"runner.status, {args.runs} runs, no catalog (opens every run.h5): {t_files:.2f} s  ({line})")
    t_cat, line = timed(status)
    print(f"runner.status, {args.runs} runs, with the index.sqlite it wrote: {t_cat:.2f} s  ({line})")
    t_import, _ = timed([sys.executable, "-c", "import runner.status"])
    print(f"reference: python -c 'import runner.status': {t_import:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
