"""The README's first command, the old way (one run after another) vs `--jobs auto`, in one process.

    python benchmarks/readme_demo.py            # jobs/exercise.yaml: 60 runs each way, then the report
    python benchmarks/readme_demo.py --quick    # 8 runs of 2 epochs each way (CI smoke)

Both sides run `python -m runner.grid SPEC --run` into their own results directory, so
each pays the same start-up; the new side adds `--jobs auto`. It prints the wall time of
each side and their ratio, and checks that both produced the same runs: the same
run_ids, every run completed, and test metrics within run-to-run tolerance (the
parallel side runs each run on fewer threads, which reorders float sums).
"""

from __future__ import annotations

import argparse
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


def compare(spec: Path, a: Path, b: Path, tolerance: float) -> float:
    """Largest |metric difference| between the two sides; raises if a run is missing or not completed."""
    worst = 0.0
    runs = expand_grid(load_spec(spec))
    for cfg in runs:
        ma, mb = (store.read_attrs(store.run_path(out, run_id(cfg))) for out in (a, b))
        assert ma["status"] == mb["status"] == "completed", run_id(cfg)
        for key in store.METRIC_NAMES:
            worst = max(worst, abs(ma["metrics"][key] - mb["metrics"][key]))
    assert worst <= tolerance, f"metrics differ by {worst:.4f} > {tolerance}"
    return worst


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
        worst = compare(spec, Path(tmp, "sequential"), Path(tmp, "jobs"), args.tolerance)
    print(f"{n_runs} runs of {spec.name}: sequential {seq:.1f} s, --jobs auto {par:.1f} s: "
          f"{seq / par:.2f}x; largest metric difference {worst:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
