"""`python -m analysis.report` cold (empty cache) vs warm (second call, unchanged results), and over many runs.

    python benchmarks/report_speed.py                 # the exercise grid's 60 fake runs, cold vs warm
    python benchmarks/report_speed.py --runs 1000     # and a report over 1,000 fake runs

Runs are written by `python -m tests.fixtures.fake_runs` (run.h5 files with embeddings
that have the grid's structure, no training). The warm report reuses the fitted
baselines and the t-SNE/UMAP projections cached under REPORT/cache.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", *cmd], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=0, help="also time a report over this many fake runs (e.g. 1000)")
    p.add_argument("--no-umap", action="store_true", help="t-SNE only (umap-learn is an optional extra)")
    args = p.parse_args(argv)
    extra = ["--no-umap"] if args.no_umap else []
    with tempfile.TemporaryDirectory() as tmp:
        results, report = Path(tmp, "results"), Path(tmp, "report")
        subprocess.run([sys.executable, "-m", "tests.fixtures.fake_runs", str(results)], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        cold = timed(["analysis.report", str(results), "--out", str(report), *extra])
        warm = timed(["analysis.report", str(results), "--out", str(report), *extra])
        print(f"report over 60 runs: cold {cold:.1f} s, warm {warm:.1f} s: {cold / warm:.2f}x")
        if args.runs:
            many = Path(tmp, "many")
            subprocess.run([sys.executable, "-m", "tests.fixtures.fake_runs", str(many), "--runs", str(args.runs)],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            big = timed(["analysis.report", str(many), "--out", str(Path(tmp, "report-many")), *extra])
            print(f"report over {args.runs} runs (cold): {big:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
