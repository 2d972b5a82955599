"""What the command-timing benchmarks share: a command timed in a fresh process, and the fake results.

Imported as `benchmarks.timing` by scripts that put the checkout first on sys.path.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> tuple[float, str]:
    """Wall seconds of `cmd` run from the checkout, and the last line it printed; a failure raises."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr[-1500:]}")
    return time.perf_counter() - t0, (p.stdout.strip().splitlines() or [""])[-1]


def fake_results(root: str | Path, runs: int) -> Path:
    """ROOT/runs<N>: N fake run.h5 files (every 20th failed), written once, without a catalog."""
    from tests.fake_runs import write_fake_run
    out = Path(root) / f"runs{runs}"
    have = len(list((out / "runs").glob("*/run.h5"))) if (out / "runs").is_dir() else 0
    if have != runs:
        t0 = time.perf_counter()
        for i in range(have, runs):
            write_fake_run(out, i, "failed" if i % 20 == 0 else "completed")
        print(f"wrote {runs - have} run.h5 in {time.perf_counter() - t0:.0f} s")
    for suffix in ("", "-wal", "-shm"):
        (out / f"index.sqlite{suffix}").unlink(missing_ok=True)
    return out


if __name__ == "__main__":
    sys.exit("benchmarks/timing.py is a module of the other benchmarks")
