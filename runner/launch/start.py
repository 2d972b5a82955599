"""Whether a run starts: skipped when done, refused when another process holds it, else locked here.

Rank 0 decides (runner.launch.run broadcasts the decision), so every rank of a DDP run
takes the same one and none waits for a rank that skipped.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from runner import store
from runner.config import ConfigError


def is_done(path: Path, retry_failed: bool) -> bool:
    """The run.h5 says completed, or failed and failed runs are not retried."""
    status = store.run_status(path)
    return status == "completed" or (status == "failed" and not retry_failed)


def start_decision(run_dir: Path, out: str | Path, retry_failed: bool, held: ExitStack) -> tuple[str, object]:
    """Rank 0's decision, shared with every rank: (skip, status), (locked, message),
    (config_error, (key, value, expected)), (error, message) or (train, None) with the lock in `held`."""
    path = run_dir / "run.h5"
    try:
        if is_done(path, retry_failed):
            return "skip", store.run_status(path)
        store.check_writable(out)  # a clear error before training, not a traceback at the first write
        held.enter_context(store.run_lock(run_dir))
        if is_done(path, retry_failed):  # another launch may have finished it between the check and the lock
            return "skip", store.run_status(path)
        store.remove_stale_temporaries(run_dir)
        return "train", None
    except store.RunLocked as exc:
        return "locked", str(exc)
    except ConfigError as exc:
        return "config_error", (exc.key, exc.value, exc.expected)
    except Exception as exc:  # anything else too: the other ranks must not wait for a rank 0 that gave up
        return "error", f"{type(exc).__name__}: {exc}"
