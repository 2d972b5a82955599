"""Time of `python -m analysis.table RESULTS --by loss.name,embedding.dim` over generated run.h5 files.

    python benchmarks/table_speed.py [--runs 10000] [--dir /tmp/status-bench]

The same fake runs as benchmarks/status_speed.py (tests/fake_runs.py: tiny arrays, every
20th failed; the same directory, so one set of files serves both), written once. The
command is timed in a fresh process, as a user types it: without RESULTS/index.sqlite
(every run.h5 opened once to build it), then with the catalog it left (no HDF5 opened).
Target: under 5 s for 10,000 runs. Reference: `python -c "import analysis.table"`
(the interpreter, pandas and scipy), timed in the same run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import fake_results, timed  # noqa: E402  (the checkout, not an installed copy)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10000)
    p.add_argument("--dir", default="/tmp/status-bench")
    args = p.parse_args(argv)
    out = fake_results(args.dir, args.runs)
    table = [sys.executable, "-m", "analysis.table", str(out), "--by", "loss.name,embedding.dim",
             "--metric", "map_at_r"]
    t_ref, _ = timed([sys.executable, "-c", "import analysis.table"])
    t_files, line = timed(table)
    print(f"analysis.table, {args.runs} runs, no catalog (builds it from every run.h5): {t_files:.2f} s  ({line})")
    t_cat, line = timed(table)
    print(f"analysis.table, {args.runs} runs, with index.sqlite: {t_cat:.2f} s  ({line})")
    print(f"reference: python -c 'import analysis.table': {t_ref:.2f} s  "
          f"(table / reference: {t_cat / t_ref:.1f}x with the catalog, {t_files / t_ref:.1f}x without)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
