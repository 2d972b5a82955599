"""Shared fixtures (tiny configs that train in seconds on CPU), and what CI must see run.

Tests marked `slurm`, `multinode` or `ray` need the local SLURM clusters or Ray, and skip
where those are missing. The hooks at the end count how each of them ended and print the
counts; with CI=true a skipped one fails the session: a green CI run has run them all.
"""

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def tiny_layer(**train) -> dict:
    """A digits run small enough for CI: 2 epochs, narrow CNN, small batches."""
    return {"model": {"width": 8}, "embedding": {"dim": 8},
            "train": {"epochs": 2, "batch_size": 32, "samples_per_class": 4, "save_every": 1,
                      "num_threads": 1, **train}}


@pytest.fixture
def tiny():
    return tiny_layer()


def make_subprocess_env() -> dict:
    """Environment for `python -m runner...` subprocesses: the checkout first on sys.path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        env.pop(key, None)
    return env


@pytest.fixture
def subprocess_env():
    return make_subprocess_env()


def start_train_until_checkpoint(out, cfg, sets: list, env: dict):
    """`python -m runner.train --out OUT --set ...` started, returned once cfg's first checkpoint exists.

    Returns (process, argv) so a test can signal it, then run the same command again.
    """
    from runner import store
    from runner.config import run_id
    args = [PYTHON, "-m", "runner.train", "--out", str(out)] + [x for s in sets for x in ("--set", s)]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = store.run_dir(out, run_id(cfg)) / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert ckpt.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint"
    return proc, args


# ---------------------------------------------------------------- cluster tests: counted, and required under CI

REQUIRED_UNDER_CI = ("slurm", "multinode", "ray")
"""Markers of tests that need a cluster or Ray: under CI=true every one of them must run, not skip."""
_markers: dict = {}
_outcomes: dict = {}
_skip_reasons: dict = {}


def pytest_collection_modifyitems(items):
    for item in items:
        names = {m.name for m in item.iter_markers()} & set(REQUIRED_UNDER_CI)
        if names:
            _markers[item.nodeid] = sorted(names)


def pytest_runtest_logreport(report):
    """A test's outcome: a failure in any phase, else a skip (setup or call), else passed."""
    if report.nodeid not in _markers:
        return
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped and _outcomes.get(report.nodeid) != "failed":
        _outcomes[report.nodeid] = "skipped"
        longrepr = report.longrepr
        _skip_reasons[report.nodeid] = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    elif report.when == "call" and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "passed"


def marker_counts() -> dict:
    """{marker: {passed: n, failed: n, skipped: n}} over the tests of this session."""
    counts = {m: collections.Counter() for m in REQUIRED_UNDER_CI}
    for nodeid, outcome in _outcomes.items():
        for m in _markers[nodeid]:
            counts[m][outcome] += 1
    return {m: {k: c.get(k, 0) for k in ("passed", "failed", "skipped")} for m, c in counts.items()}


def _skipped_required() -> list:
    return [n for n, o in _outcomes.items() if o == "skipped"]


def pytest_sessionfinish(session, exitstatus):
    report = os.environ.get("DMLR_MARKER_REPORT")  # tests/run.sh adds up its pytest runs from these
    if report:
        with open(report, "a") as fh:
            fh.write(json.dumps({"counts": marker_counts(), "skipped": _skip_reasons}) + "\n")
    if os.environ.get("CI") == "true" and _skipped_required() and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if not _outcomes:
        return
    terminalreporter.section("cluster and Ray tests")
    for m, c in marker_counts().items():
        terminalreporter.write_line(f"{m:10s} {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
    if os.environ.get("CI") == "true" and _skipped_required():
        skipped = len(_skipped_required())
        terminalreporter.write_line(f"CI=true: {skipped} of them skipped, so this run fails:", red=True)
        for nodeid in _skipped_required():
            terminalreporter.write_line(f"  {nodeid}: {_skip_reasons[nodeid]}", red=True)
