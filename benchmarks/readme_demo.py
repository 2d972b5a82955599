"""The README's first command, the old way (one run after another) vs `--jobs auto`, in one process.

    python benchmarks/readme_demo.py            # jobs/exercise.yaml: 60 runs each way, then the report
    python benchmarks/readme_demo.py --quick    # 8 runs of 2 epochs each way (CI smoke)

Both sides run `python -m runner.grid SPEC --run` into their own results directory, so
each pays the same start-up; the new side adds `--jobs auto`. It prints the wall time of
each side and their ratio, and checks that both produced the same runs: the same
run_ids, every run completed, and test metrics within --tolerance.

The parallel side runs each run on fewer threads (CPUs ÷ workers), which reorders float sums;
most runs land within a few thousandths, but a chaotic one (a 2-d embedding trained for 30
epochs) can end elsewhere. A run past the tolerance is therefore trained once more, one after
another, with the parallel side's thread count: it must then give that side's metrics to 1e-6,
which shows that running runs side by side changed nothing but the thread count. Those runs
are listed with both differences.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from runner import store  # noqa: E402
from runner.launch.run import run_one  # noqa: E402
from runner.config import run_id  # noqa: E402
from runner.spec import expand_grid, load_spec  # noqa: E402

QUICK_SPEC = """\
name: exercise-quick
data: {name: digits}
train: {epochs: 2}
variants:
  - {loss: {name: ContrastiveLoss, margin: 0.5}, miner: {name: null}}
  - {loss: {name: TripletMarginLoss, margin: 0.2}, miner: {name: TripletMarginMiner}}
grid:
  embedding.dim: [8, 32]
seeds: [0, 1]
"""


def timed_grid(spec: Path, out: Path, extra: list[str]) -> float:
    """Wall seconds of `python -m runner.grid SPEC --run` (+ extra) into `out`."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "runner.grid", str(spec), "--run", "--out", str(out), *extra],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def metric_gap(a: dict, b: dict) -> float:
    return max(abs(a["metrics"][k] - b["metrics"][k]) for k in store.METRIC_NAMES)


def compare(spec: Path, a: Path, b: Path, tolerance: float, check: Path) -> tuple[float, list[str]]:
    """(largest |metric difference| between the sides, notes on the runs past the tolerance).

    Raises if a run is missing or not completed, or if a run past the tolerance, trained again
    with side b's thread count, does not give side b's metrics.
    """
    worst, notes = 0.0, []
    for cfg in expand_grid(load_spec(spec)):
        rid = run_id(cfg)
        ma, mb = (store.read_attrs(store.run_path(out, rid)) for out in (a, b))
        assert ma["status"] == mb["status"] == "completed", rid
        gap = metric_gap(ma, mb)
        if gap > tolerance:
            threads = mb["config"]["train"]["num_threads"]
            torch.set_num_threads(threads)
            logging.getLogger("dmlrunner").setLevel(logging.WARNING)  # no per-epoch lines for the rerun
            again = run_one(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_threads=threads)),
                            check, progress=False)
            same = metric_gap(store.read_attrs(again["path"]), mb)
            assert same <= 1e-6, f"{rid} at {threads} thread(s) gives {same:.2e} off the --jobs side"
            notes.append(f"{rid} ({cfg.loss.name}, dim {cfg.embedding.dim}, seed {cfg.seed}): {gap:.4f} across "
                         f"thread counts, {same:.1e} at the same {threads} thread(s)")
            continue
        worst = max(worst, gap)
    return worst, notes


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=ROOT / "jobs" / "exercise.yaml")
    p.add_argument("--quick", action="store_true", help="8 runs of 2 epochs instead (a smoke run)")
    p.add_argument("--tolerance", type=float, default=0.05, help="largest metric difference allowed between sides")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.spec
        if args.quick:
            spec = Path(tmp, "quick.yaml")
            spec.write_text(QUICK_SPEC)
        n_runs = len(expand_grid(load_spec(spec)))
        seq = timed_grid(spec, Path(tmp, "sequential"), [])
        par = timed_grid(spec, Path(tmp, "jobs"), ["--jobs", "auto"])
        worst, notes = compare(spec, Path(tmp, "sequential"), Path(tmp, "jobs"), args.tolerance, Path(tmp, "check"))
    print(f"{n_runs} runs of {spec.name}: sequential {seq:.1f} s, --jobs auto {par:.1f} s: "
          f"{seq / par:.2f}x; largest metric difference {worst:.4f} over the other {n_runs - len(notes)} runs")
    for note in notes:
        print(f"  past --tolerance {args.tolerance}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
