"""Real SLURM: grid.sh in array and packed mode, its checks before queueing and its USR2 requeue,
runner.submit, a 2-task DDP srun, a preempted run.

Needs the local cluster (tests/run.sh starts it with slurm/cluster.sh); skipped only
where SLURM's commands are not installed. Runs are tiny (1–6 epochs of a width-8 CNN).
"""

import re
import shutil
import subprocess
import textwrap
import time
import uuid

import numpy as np
import pytest

from runner import grid, store
from runner.spec import expand_grid, load_spec
from runner.launch import status
from runner.store import submissions
from runner.config import run_id
from tests.conftest import PYTHON, ROOT

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(shutil.which("sinfo") is None, reason="SLURM is not installed (no sinfo)")]

SPEC = """\
name: tiny
model: {width: 8}
train: {epochs: 1, batch_size: 32, num_threads: 1}
grid:
  embedding.dim: [4, 8]
"""
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture
def slurm_env(subprocess_env):
    subprocess_env["PYTHON"] = PYTHON
    for key in [k for k in subprocess_env if k.startswith(("SLURM_", "SBATCH_", "GRID_"))]:
        subprocess_env.pop(key)
    return subprocess_env


def sbatch(args: list, env: dict, cwd) -> str:
    p = subprocess.run(["sbatch", "--parsable", f"--chdir={cwd}", *args], env=env, capture_output=True, text=True,
                       check=True)
    return p.stdout.strip().split(";")[0]


def sacct_states(job: str) -> dict:
    """JobID -> State of a job (and its array tasks), allocations only."""
    p = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"], capture_output=True, text=True)
    return dict(line.split("|")[:2] for line in p.stdout.splitlines() if "|" in line)


def wait_job(job: str, timeout_s: float = 240, n_tasks: int = 1) -> dict:
    """Poll until squeue forgets the job and sacct (which lags) reports n_tasks final states."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip()
        states = {k: v.split()[0] for k, v in sacct_states(job).items() if "[" not in k}
        if not queued and len(states) >= n_tasks and all(s in DONE for s in states.values()):
            return states
        time.sleep(1)
    raise TimeoutError(f"job {job} not finished after {timeout_s} s: {sacct_states(job)}")


def make_spec(tmp_path, body: str = SPEC):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(body))
    return path, expand_grid(load_spec(path))


def assert_all_completed(out, runs):
    assert grid.run_statuses(runs, out) == ["completed"] * len(runs)


@pytest.mark.timeout(1000)  # three jobs of up to 300 s each
def test_grid_sh_array_mode_then_nothing_to_do(tmp_path, slurm_env):
    spec, runs = make_spec(tmp_path)
    out = tmp_path / "res"
    driver = sbatch([f"--output={tmp_path}/driver-%j.out", str(ROOT / "slurm/grid.sh"), str(spec), "--out", str(out)],
                    slurm_env, tmp_path)
    assert wait_job(driver, 300) == {driver: "COMPLETED"}
    log = (tmp_path / f"driver-{driver}.out").read_text()
    array = re.search(r"submitted array job (\d+) --array=0-1%16", log).group(1)
    states = wait_job(array, 300, n_tasks=2)
    assert states == {f"{array}_0": "COMPLETED", f"{array}_1": "COMPLETED"}
    assert_all_completed(out, runs)
    assert "completed" in (out / "logs" / f"{array}_1.out").read_text()
    # the same command again: the driver finds nothing pending and queues no array
    again = sbatch([f"--output={tmp_path}/driver-%j.out", str(ROOT / "slurm/grid.sh"), str(spec), "--out", str(out)],
                   slurm_env, tmp_path)
    assert wait_job(again, 300) == {again: "COMPLETED"}
    assert "nothing to do" in (tmp_path / f"driver-{again}.out").read_text()
    assert len(list((out / "manifests").glob("*.json"))) == 1


def test_grid_sh_packed_mode(tmp_path, slurm_env):
    spec, runs = make_spec(tmp_path)
    out = tmp_path / "res"
    slurm_env["GRID_MODE"] = "packed"
    job = sbatch(["-n", "2", f"--output={tmp_path}/packed-%j.out", str(ROOT / "slurm/grid.sh"), str(spec),
                  "--out", str(out)], slurm_env, tmp_path)
    assert wait_job(job, 300) == {job: "COMPLETED"}, (tmp_path / f"packed-{job}.out").read_text()
    assert_all_completed(out, runs)
    steps = subprocess.run(["sacct", "-n", "-P", "-j", job, "-o", "JobID,State"], capture_output=True, text=True).stdout
    assert f"{job}.0|COMPLETED" in steps and f"{job}.1|COMPLETED" in steps  # one srun step per run
    for i in range(2):
        assert "completed" in (out / "logs" / f"{job}-run{i}.out").read_text()


def test_submit_slurm_executor_ddp_then_nothing_to_do(tmp_path, slurm_env):
    """An array of 2 runs, each a 2-task DDP run (tasks_per_node=2), then the same command again."""
    spec, _ = make_spec(tmp_path)
    runs = expand_grid(load_spec(spec, ["model.norm=group"]))
    out = tmp_path / "res"
    cmd = [PYTHON, "-m", "runner.submit", str(spec), "--out", str(out), "--executor", "slurm", "--set",
           "model.norm=group", "--tasks-per-run", "2", "--cpus-per-task", "1", "--timeout-min", "10", "--wait"]
    p = subprocess.run(cmd, env=slurm_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 completed" in p.stdout
    assert_all_completed(out, runs)
    attrs = store.read_run(store.run_path(out, run_id(runs[0])))["attrs"]
    assert attrs["world_size"] == 2 and attrs["launcher"] == "slurm"
    (record,) = submissions.read_submissions(out)  # what runner.status reconciles against
    (job,) = record["jobs"]
    assert record["kind"] == "runner.submit" and record["array_ranges"] == ["0-1%16"]
    assert record["runs"] == [[run_id(runs[t]), f"{job['job_id']}_{t}"] for t in range(2)]
    rows = status.collect(out)
    # run.h5 decides; sacct may still say COMPLETING right after --wait returns
    assert [r.state for r in rows] == ["completed"] * 2 and {r.job for r in rows} == {j for _, j in record["runs"]}
    p = subprocess.run(cmd, env=slurm_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "nothing to do" in p.stdout


def test_two_task_ddp_run_via_srun(tmp_path, slurm_env):
    spec, _ = make_spec(tmp_path)
    out = tmp_path / "res"
    p = subprocess.run(["srun", "-n", "2", f"--chdir={tmp_path}", "--kill-on-bad-exit=1", PYTHON, "-m", "runner.grid",
                        str(spec), "--out", str(out), "--run-index", "0", "--set", "model.norm=group"],
                       env=slurm_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("completed") == 1  # only rank 0 reports
    cfg = expand_grid(load_spec(spec, ["model.norm=group"]))[0]
    attrs = store.read_run(store.run_path(out, run_id(cfg)))["attrs"]
    assert attrs["status"] == "completed" and attrs["world_size"] == 2 and attrs["launcher"] == "slurm"


def test_preempted_run_requeues_resumes_and_matches_uninterrupted(tmp_path, slurm_env):
    """submitit's preemption signal (SIGTERM, then USR2): GridTask.checkpoint requeues, the run resumes."""
    import submitit

    from runner.launch.submitit_jobs import GridTask
    from runner.launch.run import run_one
    spec, _ = make_spec(tmp_path, SPEC.replace("epochs: 1", "epochs: 10, save_every: 1"))
    cfg = expand_grid(load_spec(spec))[0]
    out = tmp_path / "res"
    executor = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    executor.update_parameters(timeout_min=10, cpus_per_task=1, tasks_per_node=1,
                               slurm_setup=[f"export PYTHONPATH={ROOT}"])
    job = executor.submit(GridTask(), [cfg.to_dict()], str(out), False)
    ckpt = store.run_dir(out, run_id(cfg)) / "checkpoint.pt"
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert ckpt.exists(), job.stderr()
    first = ckpt.stat().st_mtime_ns  # epoch 0 (untrained); interrupt once epoch 1 is saved
    while ckpt.exists() and ckpt.stat().st_mtime_ns == first and time.time() < deadline:
        time.sleep(0.05)
    job._interrupt(timeout=False)  # preemption
    result = job.result()[0]
    assert result["status"] == "completed", (result, job.stderr()[-3000:] if job.stderr() else "")
    history = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", job.job_id, "-o", "State"],
                             capture_output=True, text=True).stdout.split()
    assert "REQUEUED" in history or "PREEMPTED" in history, history
    resumed = store.read_run(store.run_path(out, run_id(cfg)), epochs=True)
    reference = run_one(cfg, tmp_path / "reference", progress=False)
    uninterrupted = store.read_run(store.run_path(tmp_path / "reference", run_id(cfg)), epochs=True)
    assert resumed["attrs"]["metrics"] == pytest.approx(reference["metrics"], abs=1e-6)
    np.testing.assert_allclose(resumed["history"]["steps"]["loss"], uninterrupted["history"]["steps"]["loss"],
                               atol=1e-6)
    for split in ("train", "test"):
        np.testing.assert_allclose(resumed["final"][split]["embeddings"], uninterrupted["final"][split]["embeddings"],
                                   atol=1e-6)


def test_grid_sh_rejects_a_bad_grid_before_queueing(tmp_path, slurm_env):
    """The real sbatch is on PATH: a grid with problems exits 2 with a line per problem, queues
    no job (none of its name in the accounting) and creates no results directory."""
    name = f"bad-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(SPEC + "seeds: [0, 1]\n")
    out = tmp_path / "res"
    p = subprocess.run(["bash", str(ROOT / "slurm/grid.sh"), str(spec), "--out", str(out),
                        "--set", "model.backbone=vgg16", "--set", "train.device=cuda"],
                       env=slurm_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["train.device", "data.image_size"], lines
    assert all(line.endswith("[runs 0-3]") for line in lines) and "submitted" not in p.stdout
    assert not out.exists()
    jobs = subprocess.run(["sacct", "-n", "-X", "-P", "--name", f"dml-{name}", "-S", "now-1hour", "-o", "JobID"],
                          capture_output=True, text=True).stdout
    assert jobs.strip() == ""


def epoch_seconds(tmp_path, layer: dict) -> float:
    """Seconds one epoch of `layer` takes on this machine now: training, evaluation, checkpoint and
    logging, from the fit's wall time of a 20-epoch run in this process (21 evaluated epochs)."""
    from runner.launch.run import run_one
    from runner.spec import resolve
    result = run_one(resolve(layer, {"train": {"epochs": 20}}), tmp_path / "calibrate", progress=False)
    return store.read_attrs(result["path"])["wall_time_s"] / 21


@pytest.mark.timeout(900)
def test_grid_sh_requeues_itself_on_usr2_and_the_run_resumes(tmp_path, slurm_env):
    """An array task with --time=2: SLURM sends USR2 (#SBATCH --signal=B:USR2@60), grid.sh requeues
    the task, and the requeued task resumes the run from its last epoch checkpoint.

    SLURM sends the signal up to 60 s before the time given, and later than that when slurmctld is
    busy: observed 0-70 s after the task starts. The run is sized to this machine's speed, about
    85 s of run time, so that it is mid-run whenever USR2 comes, and the rest of it (at most 85 s
    plus start-up) ends inside the second attempt's own 2 minutes (not requeued again:
    GRID_MAX_REQUEUE=1). Run 0 is already done: the array holds exactly run 1.
    """
    from tests.test_grid import fake_done
    layer = {"model": {"width": 8}, "embedding": {"dim": 8}, "data": {"n_per_class": 8},
             "train": {"batch_size": 32, "num_threads": 1, "save_every": 1000}}
    epochs = max(20, min(6000, int(85 / epoch_seconds(tmp_path, layer))))
    body = (f"name: usr2\nmodel: {{width: 8}}\nembedding: {{dim: 8}}\ndata: {{n_per_class: 8}}\n"
            f"train: {{batch_size: 32, num_threads: 1, save_every: 1000, epochs: {epochs}}}\n"
            "grid: {seed: [0, 1]}\n")
    spec, runs = make_spec(tmp_path, body)
    out = tmp_path / "res"
    fake_done(out, runs[0])
    slurm_env.update(GRID_SBATCH_ARGS="--time=2", GRID_MAX_REQUEUE="1")
    driver = sbatch([f"--output={tmp_path}/driver-%j.out", str(ROOT / "slurm/grid.sh"), str(spec), "--out", str(out)],
                    slurm_env, tmp_path)
    assert wait_job(driver, 300) == {driver: "COMPLETED"}
    log = (tmp_path / f"driver-{driver}.out").read_text()
    array = re.search(r"submitted array job (\d+) --array=0-0%16", log).group(1)  # one task: run 1
    assert wait_job(array, 600) == {f"{array}_0": "COMPLETED"}
    history = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", array, "-o", "State"],
                             capture_output=True, text=True).stdout.split()
    assert "REQUEUED" in history, history
    task_log = (out / "logs" / f"{array}_0.out").read_text()  # both attempts: the array appends
    assert "USR2: time is nearly up, requeueing" in task_log and "restart 1" in task_log, task_log[-3000:]
    resumed = re.search(r"resuming after epoch (\d+)", task_log)
    assert resumed and 1 <= int(resumed.group(1)) < epochs, task_log[-3000:]
    data = store.read_run(store.run_path(out, run_id(runs[1])))
    assert data["attrs"]["status"] == "completed" and data["attrs"]["epochs_run"] == epochs
    steps = data["history"]["steps"]["step"]
    np.testing.assert_array_equal(steps, np.arange(len(steps)))  # every step once: resumed, not redone
