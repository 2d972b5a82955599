"""Launch overhead per run, and the time to relaunch a finished 100-run grid.

    python benchmarks/launch.py                    # both parts; the SLURM rows where sbatch answers
    python benchmarks/launch.py --part relaunch --runs 100
    python benchmarks/launch.py --part overhead --epochs 1 --no-slurm

relaunch: a spec of --runs runs (seeds 0..runs-1 of a tiny digits config, 1 epoch), all
trained first by `python -m runner.grid SPEC --run` (one process), then each launcher as a
user types it, in a fresh process. Every one must queue nothing. Reference:
`python -c "import runner.losses"`: the interpreter, torch and PML, which validating a spec
needs (loss and miner names are checked against PML's classes), timed in the same run.

overhead: one tiny run (width 8, --epochs epochs) through each launcher, from the command to
its end (SLURM: until sacct reports the job COMPLETED). Overhead = that wall time minus the
run's own fit time (`wall_time_s` in its run.h5: training and evaluation). Reference: the
same run as `python -m runner.grid SPEC --run-index 0` in a fresh process.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PY = sys.executable


def write_spec(path: Path, runs: int, epochs: int) -> Path:
    spec = {"name": "launch", "model": {"width": 8}, "embedding": {"dim": 8},
            "train": {"epochs": epochs, "batch_size": 32, "num_threads": 1}, "seeds": list(range(runs))}
    path.write_text(yaml.safe_dump(spec))
    return path


def timed(cmd: list, **kw) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=kw.pop("cwd", ROOT), **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stderr[-1500:]}")
    return time.perf_counter() - t0, p.stdout


USE_SLURM = True


def slurm_up() -> bool:
    return USE_SLURM and shutil.which("sbatch") is not None and subprocess.run(["sinfo"], capture_output=True).returncode == 0


def wait_sacct(job: str, n: int, timeout_s: float = 600) -> None:
    """Until sacct shows n allocations of job, all COMPLETED (sacct lags squeue by seconds)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"], capture_output=True,
                             text=True).stdout.split()
        states = [line.split("|")[1] for line in out if "[" not in line]
        if len(states) >= n and all(s == "COMPLETED" for s in states):
            return
        if any(s in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL") for s in states):
            raise RuntimeError(f"job {job}: {out}")
        time.sleep(0.2)
    raise TimeoutError(f"job {job} not done after {timeout_s} s")


def sbatch_and_wait(args: list, cwd: Path) -> str:
    job = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True, cwd=cwd,
                         env={**_env(), "PYTHON": PY}).stdout.strip().split(";")[0]
    wait_sacct(job, 1)
    return job


def relaunch(tmp: Path, runs: int) -> list[tuple[str, float]]:
    spec, out = write_spec(tmp / "relaunch.yaml", runs, 1), tmp / "relaunch"
    trained, stdout = timed([PY, "-m", "runner.grid", spec, "--out", out, "--run"], env=_env())
    if stdout.count(": completed") != runs:
        raise RuntimeError(f"first launch: expected {runs} completed runs, got {stdout[-800:]!r}")
    print(f"first launch: python -m runner.grid --run trained {runs} runs in {trained:.0f} s")
    rows = [("reference: python -c 'import runner.losses'", timed([PY, "-c", "import runner.losses"])[0])]
    for name, cmd, expect in [
        ("python -m runner.grid --run", [PY, "-m", "runner.grid", spec, "--out", out, "--run"], "nothing to do"),
        ("bash slurm/grid.sh (login node)", ["bash", "slurm/grid.sh", spec, "--out", out], "nothing to do"),
        ("python -m runner.submit", [PY, "-m", "runner.submit", spec, "--out", out, "--executor", "local"],
         "nothing to do"),
    ]:
        dt, stdout = timed(cmd, env={**_env(), "PYTHON": PY})
        if expect not in stdout:
            raise RuntimeError(f"{name}: expected {expect!r} in its output, got {stdout[-500:]!r}")
        rows.append((name, dt))
    if slurm_up():
        t0 = time.perf_counter()
        job = sbatch_and_wait([f"--output={tmp}/driver-%j.out", str(ROOT / "slurm/grid.sh"), str(spec),
                               "--out", str(out)], tmp)
        rows.append(("sbatch slurm/grid.sh (driver job, until COMPLETED)", time.perf_counter() - t0))
        if "nothing to do" not in (tmp / f"driver-{job}.out").read_text():
            raise RuntimeError(f"driver job {job} queued work for a finished grid")
    return rows


def _env() -> dict:
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def fit_time(out: Path, spec: Path) -> float:
    from runner import store
    from runner.config import run_id
    from runner.spec import expand_grid, load_spec
    return float(store.read_attrs(store.run_path(out, run_id(expand_grid(load_spec(spec))[0])))["wall_time_s"])


def overhead(tmp: Path, epochs: int) -> list[tuple[str, float, float]]:
    spec = write_spec(tmp / "one.yaml", 1, epochs)
    env = {**_env(), "PYTHON": PY}
    launchers = [("python -m runner.grid --run-index 0 (reference)",
                  lambda out: timed([PY, "-m", "runner.grid", spec, "--out", out, "--run-index", "0"], env=env)),
                 ("runner.submit --executor local --wait",
                  lambda out: timed([PY, "-m", "runner.submit", spec, "--out", out, "--executor", "local", "--wait",
                                     "--cpus-per-task", "1"], env=env))]
    if slurm_up():
        launchers += [("runner.submit --executor slurm --wait",
                       lambda out: timed([PY, "-m", "runner.submit", spec, "--out", out, "--executor", "slurm",
                                          "--wait", "--cpus-per-task", "1", "--timeout-min", "10"], env=env)),
                      ("sbatch slurm/grid.sh (driver + array task)", lambda out: _grid_sh(spec, out, tmp))]
    rows = []
    for i, (name, launch) in enumerate(launchers):
        out = tmp / f"overhead{i}"
        wall = launch(out)[0]
        fit = fit_time(out, spec)
        rows.append((name, wall, wall - fit))
    return rows


def _grid_sh(spec: Path, out: Path, tmp: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    driver = sbatch_and_wait([f"--output={tmp}/d-%j.out", str(ROOT / "slurm/grid.sh"), str(spec), "--out", str(out)],
                             tmp)
    array = (tmp / f"d-{driver}.out").read_text().split("submitted array job ")[1].split()[0]
    wait_sacct(array, 1)
    return time.perf_counter() - t0, ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("all", "relaunch", "overhead"), default="all")
    p.add_argument("--runs", type=int, default=100, help="runs in the finished grid (relaunch)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the one run (overhead)")
    p.add_argument("--no-slurm", action="store_true", help="only the launchers that need no SLURM")
    args = p.parse_args(argv)
    global USE_SLURM
    USE_SLURM = not args.no_slurm
    # under the checkout, not /tmp: SLURM jobs on other nodes must see it
    with tempfile.TemporaryDirectory(dir=ROOT, prefix=".launch-bench-") as d:
        tmp = Path(d)
        if args.part in ("all", "relaunch"):
            rows = relaunch(tmp, args.runs)
            ref = rows[0][1]
            print(f"relaunch of a finished {args.runs}-run grid (nothing queued)")
            print(f"{'command':56s} {'time_s':>7s} {'x import floor':>15s}")
            for name, dt in rows:
                print(f"{name:56s} {dt:7.2f} {dt / ref:14.2f}x")
        if args.part in ("all", "overhead"):
            rows = overhead(tmp, args.epochs)
            ref = rows[0][2]
            print(f"\nlaunch overhead of one run ({args.epochs} epoch(s), width 8): wall - fit time in run.h5")
            print(f"{'launcher':56s} {'wall_s':>7s} {'overhead_s':>10s} {'x reference':>12s}")
            for name, wall, extra in rows:
                print(f"{name:56s} {wall:7.2f} {extra:10.2f} {extra / ref:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
