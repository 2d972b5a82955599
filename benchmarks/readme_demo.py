"""The README's first command end to end (the grid, then the report), one way against another, in one process.

    python benchmarks/readme_demo.py                      # this checkout: one run after another vs --jobs auto
    python benchmarks/readme_demo.py --baseline-rev REV   # REV's README command vs this checkout's
    python benchmarks/readme_demo.py --quick              # 8 runs of 2 epochs each way (CI smoke)

Each side runs `python -m runner.grid SPEC --run` into its own results directory, then
`python -m analysis.report` on it, each a fresh process, so both pay the same start-up; the
new side adds `--jobs auto`. With --baseline-rev the old side is REV's code (a git worktree of
it, run with this environment's packages), one run after another: the README command as it
was at REV. It prints each side's wall time (grid and report), their ratio, and checks that
both produced the same runs: the same run_ids, every run completed, and the test metrics both
sides report within --tolerance.

The parallel side runs each run on fewer threads (CPUs ÷ workers), which reorders float sums,
and a baseline from before channels_last ran the contiguous layout, which rounds differently;
most runs land within a few thousandths, but a chaotic one (a 2-d embedding trained for 30
epochs) can end elsewhere. A run past the tolerance is therefore trained once more in this
checkout, one run at a time, with the parallel side's thread count: it must then give that
side's metrics to 1e-6 (running runs side by side changed nothing but the thread count). With
a baseline it is also trained with the old side's threads and layout and must give the old
side's metrics to 1e-6 (this checkout computes what REV computed). Those runs are listed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
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


def timed(cmd: list[str], cwd: Path) -> float:
    """Wall seconds of `python -m CMD` run in cwd."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", *cmd], check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def readme_command(code: Path, spec: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """(grid, report) wall seconds of the README's first command, run with the code in `code`."""
    grid = timed(["runner.grid", str(spec), "--run", "--out", str(out / "results"), *extra], code)
    return grid, timed(["analysis.report", str(out / "results"), "--out", str(out / "report")], code)


def metric_gap(a: dict, b: dict) -> float:
    return max(abs(a["metrics"][k] - b["metrics"][k]) for k in store.METRIC_NAMES
               if k in a["metrics"] and k in b["metrics"])


def trained_again(cfg, like: dict, check: Path, contiguous: bool) -> dict:
    """cfg trained here once more, alone, with the thread count of the run `like` (and the contiguous layout)."""
    threads = like["config"]["train"]["num_threads"] or os.cpu_count()
    torch.set_num_threads(threads)
    train = dataclasses.replace(cfg.train, num_threads=threads, **({"channels_last": False} if contiguous else {}))
    logging.getLogger("dmlrunner").setLevel(logging.WARNING)  # no per-epoch lines for the rerun
    return store.read_attrs(run_one(dataclasses.replace(cfg, train=train), check, progress=False)["path"])


def compare(spec: Path, a: Path, b: Path, tolerance: float, check: Path, baseline: bool) -> tuple[float, list[str]]:
    """(largest |metric difference| between the sides, notes on the runs past the tolerance).

    Raises if a run is missing or not completed, or if a run past the tolerance, trained again
    like side b (and, for a baseline, like side a), does not give that side's metrics.
    """
    worst, notes = 0.0, []
    for cfg in expand_grid(load_spec(spec)):
        rid = run_id(cfg)
        ma, mb = (store.read_attrs(store.run_path(out, rid)) for out in (a, b))
        assert ma["status"] == mb["status"] == "completed", rid
        gap = metric_gap(ma, mb)
        if gap <= tolerance:
            worst = max(worst, gap)
            continue
        same = metric_gap(trained_again(cfg, mb, check / "like-b", contiguous=False), mb)
        assert same <= 1e-6, f"{rid} trained alone with the --jobs side's threads gives {same:.2e} off that side"
        note = f"{gap:.4f} between the sides, {same:.1e} trained alone like the --jobs side"
        if baseline:
            same_a = metric_gap(trained_again(cfg, ma, check / "like-a", contiguous="channels_last" not in ma["config"]["train"]), ma)
            assert same_a <= 1e-6, f"{rid} trained here like the baseline gives {same_a:.2e} off the baseline"
            note += f", {same_a:.1e} trained here like the baseline"
        notes.append(f"{rid} ({cfg.loss.name}, dim {cfg.embedding.dim}, seed {cfg.seed}): {note}")
    return worst, notes


@contextmanager
def checkout(rev: str | None, where: Path):
    """This checkout (rev None), else a detached git worktree of rev under `where`, removed afterwards."""
    if rev is None:
        yield ROOT
        return
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(where), rev], check=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], check=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", type=Path, default=ROOT / "jobs" / "exercise.yaml")
    p.add_argument("--quick", action="store_true", help="8 runs of 2 epochs instead (a smoke run)")
    p.add_argument("--baseline-rev", help="a git revision whose README command (one run after another) is the old side")
    p.add_argument("--tolerance", type=float, default=0.05, help="largest metric difference allowed between sides")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.spec.resolve()
        if args.quick:
            spec = Path(tmp, "quick.yaml")
            spec.write_text(QUICK_SPEC)
        n_runs = len(expand_grid(load_spec(spec)))
        old, new = Path(tmp, "old"), Path(tmp, "new")
        with checkout(args.baseline_rev, Path(tmp, "baseline")) as code:
            seq = readme_command(code, spec, old, [])
        par = readme_command(ROOT, spec, new, ["--jobs", "auto"])
        worst, notes = compare(spec, old / "results", new / "results", args.tolerance, Path(tmp, "check"),
                               baseline=args.baseline_rev is not None)
    label = f"{args.baseline_rev} one run after another" if args.baseline_rev else "one run after another"
    print(f"{n_runs} runs of {spec.name}, grid then report: {label} {sum(seq):.1f} s (grid {seq[0]:.1f} + report "
          f"{seq[1]:.1f}), --jobs auto {sum(par):.1f} s (grid {par[0]:.1f} + report {par[1]:.1f}): "
          f"{sum(seq) / sum(par):.2f}x end to end, {seq[0] / par[0]:.2f}x the grid alone; "
          f"largest metric difference {worst:.4f} over the other {n_runs - len(notes)} runs")
    for note in notes:
        print(f"  past --tolerance {args.tolerance}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
