"""Fixed cost per run outside training: 20 tiny digits runs, one process per run vs 10 runs per process.

    python benchmarks/fixed_cost.py [--runs 20 --per-process 10]

Both sides run the same frozen manifest with `python -m runner.grid --manifest M --run-index i ...`
into their own results directory, one process after another: side 1 starts a process per
run (`--runs-per-task 1`), side 10 one process per 10 runs (`--runs-per-task 10`). The cost
outside training of a side is its wall time less the sum of its runs' train_time_s (run.h5),
so it holds start-up (imports), data, evaluation and every file written. The marginal cost
of a run beyond the first in a process is (cost of side 10 - processes x the median cost of
a 1-run process) / (runs - processes): the goal is <= 1 s. The sides run one after the other:
on a machine whose load changes meanwhile, that difference is noisy (it can even come out
negative); the per-run figures of each side are the robust part.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner import store  # noqa: E402
from runner.config import run_id  # noqa: E402
from runner.spec import expand_grid, load_spec  # noqa: E402

SPEC = """\
name: fixed-cost
model: {width: 8}
train: {epochs: 1, batch_size: 32, num_threads: 1}
grid:
  embedding.dim: [4, 8, 16, 32]
seeds: [0, 1, 2, 3, 4]
"""


def side(manifest: Path, out: Path, n: int, per_process: int) -> tuple[float, float, list[float]]:
    """(wall seconds, summed train_time_s, outside-training seconds of each process) of the n runs,
    per_process runs per python process."""
    runs = expand_grid(load_spec(manifest.with_name("spec.yaml")))[:n]
    wall, train, per_proc = 0.0, 0.0, []
    for first in range(0, n, per_process):
        chosen = range(first, min(n, first + per_process))
        indices = [x for i in chosen for x in ("--run-index", str(i))]
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "runner.grid", "--manifest", str(manifest), "--out", str(out),
                        *indices], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        secs = time.perf_counter() - t0
        trained = 0.0
        for i in chosen:
            attrs = store.read_attrs(store.run_path(out, run_id(runs[i])))
            assert attrs["status"] == "completed", run_id(runs[i])
            trained += float(attrs["train_time_s"])
        wall, train = wall + secs, train + trained
        per_proc.append(secs - trained)
    return wall, train, per_proc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--per-process", type=int, default=10)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp, "spec.yaml")
        spec.write_text(SPEC)
        manifest = Path(tmp, "manifest.json")
        subprocess.run([sys.executable, "-m", "runner.grid", str(spec), "--out", str(Path(tmp, "unused")),
                        "--write-manifest", str(manifest)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        rows = {k: side(manifest, Path(tmp, f"out{k}"), args.runs, k) for k in (1, args.per_process)}
    n, k = args.runs, args.per_process
    procs = -(-n // k)
    outside = {key: wall - train for key, (wall, train, _) in rows.items()}
    per_fresh = outside[1] / n
    marginal = (outside[k] - procs * statistics.median(rows[1][2])) / max(1, n - procs)
    for key, (wall, train, _) in rows.items():
        print(f"runs-per-task {key:>2}: wall {wall:6.1f} s, training {train:5.1f} s, "
              f"outside training {outside[key] / n:5.2f} s per run")
    print(f"outside training per run: {per_fresh:.2f} s (fresh process) vs {outside[k] / n:.2f} s "
          f"(runs-per-task {k}): {per_fresh / (outside[k] / n):.2f}x; a run beyond the first in a process: "
          f"{marginal:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
