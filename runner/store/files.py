"""The results directory: OUT/runs/<run_id>/, its lock, and files that are never half-written.

A run's folder holds run.h5 (runner.store.run_file), the `.lock` a training process
holds, checkpoint.pt and model.pt. Every file goes through `atomic_path`: a temporary
name, fsync, rename, so a file is either absent or complete.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from runner.config import ConfigError


def run_dir(out: str | Path, run_id: str) -> Path:
    return Path(out) / "runs" / run_id


def run_path(out: str | Path, run_id: str) -> Path:
    return run_dir(out, run_id) / "run.h5"


# ---------------------------------------------------------------- the run lock

class RunLocked(RuntimeError):
    """Another process is running the same run_id in the same results directory."""


def file_stamp(path: str | Path) -> Optional[str]:
    """Size and mtime (ns) of a file, or None when it is gone: what every cache and the catalog
    compare to tell whether a file changed since they read it. A run.h5 is only ever replaced
    as a whole (atomic_path), so a rerun run changes its stamp."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return f"{st.st_size}-{st.st_mtime_ns}"


@contextmanager
def run_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on runs/<run_id>/.lock: two launches never train the same run at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        for _ in range(20):  # a status probe (is_locked) holds it for microseconds
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            raise RunLocked(f"run {directory.name} is being trained by another process")
        yield


def is_locked(directory: Path) -> bool:
    """True while a process holds runs/<run_id>/.lock (run_lock): the run is training."""
    try:
        with open(directory / ".lock", "r") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def remove_stale_temporaries(directory: Path) -> None:
    """Delete .*.tmp files a killed writer left; call under the run lock (nobody else writes then)."""
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- atomic files

@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """A temporary path next to `final` to write; on success it is fsynced and renamed over final.

    On an exception the temporary file is removed and `final` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fsync_replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text or bytes to `path` atomically (atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def fsync_replace(tmp: Path, final: Path) -> None:
    """Flush `tmp` to disk and rename it over `final` (atomic on POSIX file systems)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    try:  # make the rename itself durable
        fd = os.open(final.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


MIN_FREE_BYTES = 64 * 2**20
"""Free space a results directory needs before a run starts (a tiny run.h5 + checkpoint is ~1 MB)."""


def check_writable(out: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> None:
    """Create `out` and probe it: unwritable or nearly full is a one-line ConfigError on --out."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe.{os.getpid()}.tmp"
        probe.write_bytes(b"ok")
        probe.unlink()
        free = shutil.disk_usage(out).free
    except OSError as exc:
        raise ConfigError("--out", str(out), f"a writable directory ({type(exc).__name__}: {exc.strerror or exc})") from None
    if free < min_free_bytes:
        raise ConfigError("--out", str(out), f"a directory with at least {min_free_bytes >> 20} MiB free "
                                             f"(has {free >> 20} MiB)")


