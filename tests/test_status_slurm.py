"""Real SLURM: arrays split at MaxArraySize, status while held, after scancel and a requeue, a run
that timed out resubmitted with twice the time, and --runs-per-task 3 in one array task.

Runs on the local cluster (slurm/cluster.sh); tiny runs of a width-8 CNN, a few minutes in all.
"""

import getpass
import json
import re
import shutil
import subprocess
import time

import pytest

from runner import store
from runner.config import run_id
from runner.store import submissions
from tests.conftest import PYTHON, ROOT
from tests.test_slurm import make_spec, sacct_states, wait_job

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(shutil.which("sinfo") is None, reason="SLURM is not installed (no sinfo)")]

SPEC12 = """\
name: tiny12
model: {width: 8}
train: {epochs: 1, batch_size: 32, num_threads: 1}
grid:
  embedding.dim: [4, 8, 16]
  seed: [0, 1, 2, 3]
"""


@pytest.fixture
def env(subprocess_env):
    subprocess_env["PYTHON"] = PYTHON
    for key in [k for k in subprocess_env if k.startswith(("SLURM_", "SBATCH_", "GRID_"))]:
        subprocess_env.pop(key)
    return subprocess_env


def grid_sh(spec, out, env: dict, **knobs) -> str:
    """`bash slurm/grid.sh SPEC --out OUT` from the login node, with GRID_* knobs; its stdout."""
    p = subprocess.run(["bash", str(ROOT / "slurm/grid.sh"), str(spec), "--out", str(out)], cwd=ROOT,
                       env={**env, **{f"GRID_{k.upper()}": str(v) for k, v in knobs.items()}},
                       capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def status(out, env: dict, *args) -> dict:
    p = subprocess.run([PYTHON, "-m", "runner.status", str(out), "--json", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_held_grid_in_three_arrays_then_cancel_exactly_the_matching_runs(tmp_path, env):
    spec, runs = make_spec(tmp_path, SPEC12)
    out = tmp_path / "res"
    log = grid_sh(spec, out, env, max_array_size=5, sbatch_args="--hold")
    jobs = re.findall(r"submitted array job (\d+) --array=(\S+)", log)
    try:
        assert [a for _, a in jobs] == ["0-4%16", "0-4%16", "0-1%16"], log
        (record,) = submissions.read_submissions(out)
        assert [j["job_id"] for j in record["jobs"]] == [j for j, _ in jobs]
        assert record["array_ranges"] == ["0-4%16", "0-4%16", "0-1%16"] and record["git_rev"]
        assert sorted(rid for rid, _ in record["runs"]) == sorted(run_id(c) for c in runs)
        held = status(out, env)
        assert held["counts"]["pending"] == 12 and held["counts"]["failed"] == 0
        assert {r["job"] for r in held["runs"]} == {f"{j}_{t}" for j, n in zip([j for j, _ in jobs], (5, 5, 2))
                                                     for t in range(n)}
        dry = subprocess.run([PYTHON, "-m", "runner.status", str(out), "--cancel", "--dry-run", "--where",
                              "embedding.dim=4"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert "would cancel 4 task(s)" in dry.stdout, dry.stdout + dry.stderr
        assert status(out, env)["counts"]["pending"] == 12  # a dry run cancels nothing
        subprocess.run([PYTHON, "-m", "runner.status", str(out), "--cancel", "--where", "embedding.dim=4"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            after = status(out, env)
            if after["counts"]["cancelled"] == 4:
                break
            time.sleep(1)
        assert after["counts"]["cancelled"] == 4 and after["counts"]["pending"] == 8, after["counts"]
        assert {r["config"]["embedding.dim"] for r in after["runs"] if r["state"] == "cancelled"} == {4}
    finally:
        subprocess.run(["scancel", *[j for j, _ in jobs]], capture_output=True)


def test_runs_per_task_three_trains_three_runs_in_one_task(tmp_path, env):
    spec, runs = make_spec(tmp_path, SPEC12.replace("seed: [0, 1, 2, 3]", "seed: [0]"))
    out = tmp_path / "res"
    log = grid_sh(spec, out, env, runs_per_task=3)
    (job,) = re.findall(r"submitted array job (\d+) --array=0-0%16", log)
    assert wait_job(job, 240, n_tasks=1) == {f"{job}_0": "COMPLETED"}
    task_log = (out / "logs" / f"{job}_0.out").read_text()
    assert task_log.count("array task") == 1 and task_log.count(": completed") == 3, task_log
    rows = status(out, env)["runs"]
    assert [r["state"] for r in rows] == ["completed"] * 3 and {r["job"] for r in rows} == {f"{job}_0"}
    for cfg in runs:  # each run.h5 names the array task that trained it
        slurm = store.read_attrs(store.run_path(out, run_id(cfg)))["slurm"]
        assert slurm["slurm_array_job_id"] == job and slurm["slurm_array_task_id"] == "0"
        assert slurm["slurm_job_nodelist"] and slurm["slurm_job_id"]


def test_requeued_then_timed_out_run_is_resubmitted_with_twice_the_time_and_resumes(tmp_path, env):
    # 20,000 epochs of a tiny run: far more than a minute on any machine, so the limit is what ends it
    spec, (cfg,) = make_spec(tmp_path, SPEC12.replace("epochs: 1,", "epochs: 20000, save_every: 10000,")
                             .replace("grid:\n  embedding.dim: [4, 8, 16]\n  seed: [0, 1, 2, 3]\n", ""))
    out = tmp_path / "res"
    knobs = dict(sbatch_args="--time=00:01:00", max_requeue=0)
    (job,) = re.findall(r"submitted array job (\d+)", grid_sh(spec, out, env, **knobs))
    task = f"{job}_0"
    ckpt = store.run_dir(out, run_id(cfg)) / "checkpoint.pt"
    try:
        deadline = time.time() + 120
        while not ckpt.exists() and time.time() < deadline:
            time.sleep(0.5)
        assert ckpt.exists(), sacct_states(job)
        subprocess.run(["scontrol", "requeue", task], check=True, capture_output=True)
        seen = set()
        while time.time() < deadline + 120:
            (row,) = status(out, env)["runs"]
            seen.add(row["state"])
            if row["state"] == "timeout":
                break
            time.sleep(1)
        assert "requeued" in seen and row["state"] == "timeout" and "failed" not in seen, (seen, row)
        assert row["attempts"] == 2 and row["time_limit_s"] == 60 and row["last_epoch"] >= 1, row
        epoch = row["last_epoch"]
        log = grid_sh(spec, out, env, **knobs)
        found = re.findall(r"submitted array job (\d+) --array=0-0%16 --time=00:02:00", log)
        assert found, log
        retry = found[0]
        ckpt_log = out / "logs" / f"{retry}_0.out"
        while time.time() < deadline + 240 and "resuming after epoch" not in (
                ckpt_log.read_text() if ckpt_log.exists() else ""):
            time.sleep(1)
        resumed_at = int(re.search(r"resuming after epoch (\d+)", ckpt_log.read_text()).group(1))
        assert resumed_at >= epoch
        (row,) = status(out, env)["runs"]
        assert row["job"] == f"{retry}_0" and row["attempts"] == 3 and row["time_limit_s"] == 120, row
        assert len(submissions.read_submissions(out)) == 2
    finally:
        subprocess.run(["scancel", job] + ([retry] if "retry" in locals() else []), capture_output=True)


def test_a_grid_stays_under_max_submit_jobs_beside_the_jobs_already_queued(tmp_path, env):
    """GRID_MAX_SUBMIT_JOBS as a site's MaxSubmitJobs: room for 4 jobs beside those queued -> 12 runs in <= 4 tasks."""
    spec, runs = make_spec(tmp_path, SPEC12)
    out = tmp_path / "res"
    queued = len(subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"],
                                capture_output=True, text=True, check=True).stdout.split())
    log = grid_sh(spec, out, env, max_submit_jobs=queued + 4, sbatch_args="--hold")
    jobs = re.findall(r"submitted array job (\d+) --array=0-(\d+)", log)
    try:
        n_tasks = sum(int(last) + 1 for _, last in jobs)
        assert 1 <= n_tasks <= 4, log  # fewer if other jobs were queued meanwhile: the room only shrinks
        (record,) = submissions.read_submissions(out)
        assert sorted(rid for rid, _ in record["runs"]) == sorted(run_id(c) for c in runs)
        assert len({task for _, task in record["runs"]}) == n_tasks
        held = status(out, env)
        assert held["counts"]["pending"] == 12
    finally:
        subprocess.run(["scancel", *[j for j, _ in jobs]], capture_output=True)


def test_runner_submit_stays_under_max_submit_jobs_too(tmp_path, env):
    """runner.submit plans as grid.sh does: room for 2 jobs beside those queued -> 12 runs in <= 2 array tasks."""
    spec, runs = make_spec(tmp_path, SPEC12)
    out = tmp_path / "res"
    queued = len(subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i"],
                                capture_output=True, text=True, check=True).stdout.split())
    p = subprocess.run([PYTHON, "-m", "runner.submit", str(spec), "--out", str(out), "--executor", "slurm",
                        "--cpus-per-task", "1", "--timeout-min", "10", "--max-submit-jobs", str(queued + 2)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    (record,) = submissions.read_submissions(out)
    try:
        tasks = {task for _, task in record["runs"]}
        assert 1 <= len(tasks) <= 2 and sum(j["tasks"] for j in record["jobs"]) == len(tasks), record
        assert sorted(rid for rid, _ in record["runs"]) == sorted(run_id(c) for c in runs)
        assert f"--max-submit-jobs {queued + 2}: 12 runs as" in p.stderr, p.stderr
    finally:
        subprocess.run(["scancel", *[j["job_id"] for j in record["jobs"]]], capture_output=True)
