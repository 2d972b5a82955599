"""`python -m analysis.report` cold (empty caches) vs warm (second call, unchanged results), and over many runs.

    python benchmarks/report_speed.py                 # the exercise grid's 60 fake runs, cold vs warm
    python benchmarks/report_speed.py --runs 1000     # and a cold report over 1,000 fake runs

Runs are written by `python -m tests.fixtures.fake_runs` (run.h5 files with embeddings
that have the grid's structure, no training). The warm report reuses the per-run rows, the
fitted baselines, the t-SNE/UMAP projections and the hierarchy values cached under
RESULTS/report_cache, the TensorBoard sessions and the drawn slides. Each report is a fresh
process (imports included); wall and CPU seconds (of the child) are printed with the load
average, as the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the child) of `python -m cmd`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", *cmd], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - t0, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def report(results: Path, out: Path, extra: list[str]) -> dict:
    wall, cpu = timed(["analysis.report", str(results), "--out", str(out), *extra])
    inside = json.loads((out / "timings.json").read_text())
    return {"wall": wall, "cpu": cpu, "inside": inside}


def line(name: str, r: dict) -> str:
    t = r["inside"]
    steps = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in t.items() if k.endswith("_s") and k != "total_s" and v >= 0.5)
    return (f"{name}: {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU (report itself {t['total_s']:.1f} s: {steps}; "
            f"slides redrawn: {t.get('slides_redrawn')}) load {os.getloadavg()[0]:.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=0, help="also time a cold report over this many fake runs (e.g. 1000)")
    p.add_argument("--no-umap", action="store_true", help="t-SNE only (umap-learn is an optional extra)")
    args = p.parse_args(argv)
    extra = ["--no-umap"] if args.no_umap else []
    with tempfile.TemporaryDirectory() as tmp:
        results, out = Path(tmp, "results"), Path(tmp, "report")
        subprocess.run([sys.executable, "-m", "tests.fixtures.fake_runs", str(results)], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        cold = report(results, out, extra)
        print(line("60 runs, cold", cold))
        warm = report(results, out, extra)
        print(line("60 runs, warm", warm))
        print(f"warm/cold: {warm['wall'] / cold['wall']:.2f} wall, {warm['cpu'] / cold['cpu']:.2f} CPU")
        if args.runs:
            many = Path(tmp, "many")
            subprocess.run([sys.executable, "-m", "tests.fixtures.fake_runs", str(many), "--runs", str(args.runs)],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            big = report(many, Path(tmp, "report-many"), extra)
            print(line(f"{args.runs} runs, cold", big))
            print(f"{args.runs} runs vs 60 runs, both cold: {big['wall'] / cold['wall']:.2f} wall, "
                  f"{big['cpu'] / cold['cpu']:.2f} CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
