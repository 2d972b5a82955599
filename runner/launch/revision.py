"""The git revision and uncommitted diff of the checkout this package runs from (no torch here:
runner.status and the submission records need it in a fraction of a second)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from runner.store.submissions import store_diff


@functools.lru_cache(maxsize=1)
def git_rev() -> str:
    """HEAD of the checkout this package runs from, with '+dirty' for local changes."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("+dirty" if dirty else "")) if rev else "unknown"


def git_diff() -> str:
    """The uncommitted changes to tracked files of this package's checkout ('' when clean or not a checkout)."""
    here = Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "-C", str(here), "diff", "HEAD"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def submission_provenance(out: str | Path) -> dict:
    """git rev of a submission, and its diff stored once under OUT/provenance/<sha>.diff (by hash)."""
    return {"git_rev": git_rev(), "diff_sha256": store_diff(out, git_diff())}
