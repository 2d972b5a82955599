"""Time of `python -m analysis.table RESULTS --by loss.name,embedding.dim` over generated run.h5 files.

    python benchmarks/table_speed.py [--runs 10000] [--dir /tmp/status-bench]

The same fake runs as benchmarks/status_speed.py (tests/fake_runs.py: tiny arrays, every
20th failed; the same directory, so one set of files serves both), written once. The
command is timed in a fresh process, as a user types it: without RESULTS/index.sqlite
(every run.h5 opened once to build it), then with the catalog it left (no HDF5 opened).
Target (issue 17): under 5 s for 10,000 runs. Reference: `python -c "import analysis.table"`
(the interpreter, pandas and scipy), timed in the same run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fake_runs import write_fake_run  # noqa: E402  (the checkout, not an installed copy)


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return time.perf_counter() - t0, (p.stdout.strip().splitlines() or [""])[-1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10000)
    p.add_argument("--dir", default="/tmp/status-bench")
    args = p.parse_args(argv)
    out = Path(args.dir) / f"runs{args.runs}"
    have = len(list((out / "runs").glob("*/run.h5"))) if (out / "runs").is_dir() else 0
    if have != args.runs:
        t0 = time.perf_counter()
        for i in range(have, args.runs):
            write_fake_run(out, i, "failed" if i % 20 == 0 else "completed")
        print(f"wrote {args.runs - have} run.h5 in {time.perf_counter() - t0:.0f} s")
    for suffix in ("", "-wal", "-shm"):
        (out / f"index.sqlite{suffix}").unlink(missing_ok=True)
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
