"""runner.status from the files, the submission records, and the array plan (no SLURM needed)."""

import json
import multiprocessing as mp
import subprocess
from pathlib import Path

import numpy as np

from runner import grid, store
from runner import status as status_cmd
from runner.config import run_id
from runner.launch import arrays, status
from runner.spec import expand_grid, load_spec
from runner.store import submissions
from tests.conftest import PYTHON, ROOT, make_subprocess_env
from tests.fake_runs import fake_run_id, write_fake_run


def _append(args):
    out, w = args
    for k in range(40):  # ~200 kB lines: far beyond PIPE_BUF, so only the lock keeps them whole
        submissions.append_submission(out, {"writer": w, "k": k, "runs": [[f"{w}-{k}-{j}", f"{w}_{j}"]
                                                                         for j in range(8000)]})
    return w


def test_concurrent_submissions_never_interleave(tmp_path):
    with mp.get_context("fork").Pool(8) as pool:
        pool.map(_append, [(tmp_path, w) for w in range(8)])
    lines = submissions.submissions_path(tmp_path).read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert len(records) == 320 and {(r["writer"], r["k"]) for r in records} == {(w, k) for w in range(8)
                                                                                 for k in range(40)}
    assert all(len(r["runs"]) == 8000 for r in records)


def test_status_from_the_files_alone(tmp_path, capsys):
    for i in range(24):
        write_fake_run(tmp_path, i, "failed" if i % 6 == 1 else "completed")
    submissions.append_submission(tmp_path, {"kind": "grid.sh", "runs": [[fake_run_id(99), "77_0"]]})
    assert status_cmd.main([str(tmp_path), "--no-slurm"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "25 runs: 20 completed, 4 failed, 1 missing"
    assert status_cmd.main([str(tmp_path), "--no-slurm", "--failed"]) == 0
    out = capsys.readouterr().out
    assert "4  failed: RuntimeError: CUDA out of memory" in out and fake_run_id(7) in out
    assert status_cmd.main([str(tmp_path), "--no-slurm", "--json", "--where", "loss.name=ContrastiveLoss",
                            "--state", "completed"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["completed"] == 4 and all(r["config"]["loss.name"] == "ContrastiveLoss" for r in data["runs"])
    assert status_cmd.main([str(tmp_path), "--state", "bogus"]) == 2
    # the first status wrote the catalog; a second reads it and agrees
    assert (tmp_path / "index.sqlite").exists()
    assert [r.state for r in status.collect(tmp_path, use_slurm=False)].count("completed") == 20


def test_status_command_on_a_spec_lists_missing_runs_in_order(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nmodel: {width: 8}\ngrid:\n  embedding.dim: [4, 8]\n")
    p = subprocess.run([PYTHON, "-m", "runner.status", str(spec), "--out", str(tmp_path / "res"), "--no-slurm"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == "2 runs: 0 completed, 2 missing"
    assert p.stdout.splitlines()[1].split()[0] == "0"


def test_waiting_is_never_failing():
    for live in ("PENDING", "CONFIGURING", "REQUEUED", "PREEMPTED", "REQUEUE_HOLD"):
        state, _ = status.reconcile("failed", False, [{"state": "TIMEOUT"}, {"state": live}], "old error")
        assert state in ("pending", "requeued", "preempted"), live
    assert status.reconcile(None, False, [{"state": "PREEMPTED"}, {"state": "PENDING"}], "")[0] == "preempted"
    assert status.reconcile(None, False, [{"state": "REQUEUED"}, {"state": "PENDING"}], "")[0] == "requeued"
    assert status.reconcile(None, False, [{"state": "TIMEOUT"}], "")[0] == "timeout"
    assert status.reconcile(None, False, [{"state": "OUT_OF_MEMORY"}], "")[0] == "out_of_memory"
    assert status.reconcile(None, True, [], "")[0] == "running"
    assert status.reconcile("completed", False, [{"state": "TIMEOUT"}], "")[0] == "completed"


def test_arrays_fit_max_array_size_and_pack_runs_per_task():
    tasks, plan = arrays.plan_arrays([(list(range(12)), [], "")], 1, 5, 16)
    assert [(a.offset, a.array) for a in plan] == [(0, "0-4%16"), (5, "0-4%16"), (10, "0-1%16")]
    assert tasks[10] == [10]
    tasks, plan = arrays.plan_arrays([(list(range(5000)), [], "")], 10, 1001, 0)
    assert len(tasks) == 500 and len(plan) == 1 and tasks[-1] == list(range(4990, 5000))
    tasks, plan = arrays.plan_arrays([(list(range(5000)), [], "")], 1, 1001, 0)
    assert len(plan) == 5 and max(a.tasks for a in plan) == 1001


def test_runs_per_task_rises_until_the_tasks_fit_max_submit_jobs():
    assert arrays.fit_runs_per_task([5000], 1, 1001) == 5  # ceil(5000 / 5) = 1000 tasks
    assert arrays.fit_runs_per_task([5000], 10, 1001) == 10  # 500 tasks fit already
    assert arrays.fit_runs_per_task([10, 3, 1], 1, 4) == 5  # 2 + 1 + 1: each resource group its own tasks
    assert arrays.fit_runs_per_task([10, 3, 1], 1, 2) is None  # three groups never fit in two jobs
    assert arrays.fit_runs_per_task([10], 2, None) == 2  # no known limit: as asked
    for sizes, room in (([5000], 1001), ([7, 7, 7], 5), ([1, 2, 3, 50], 9)):
        k = arrays.fit_runs_per_task(sizes, 1, room)
        tasks, _ = arrays.plan_arrays([(list(range(n)), [], "") for n in sizes], k, 1001, 0)
        assert len(tasks) <= room and sum(map(len, tasks)) == sum(sizes)
        if k > 1:  # and it is the smallest that fits
            assert len(arrays.plan_arrays([(list(range(n)), [], "") for n in sizes], k - 1, 1001, 0)[0]) > room


def test_plan_arrays_refuses_a_grid_that_cannot_fit_max_submit_jobs(tmp_path):
    """Without squeue on PATH nothing is known queued: the override alone is the room."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: twelve\nmodel: {width: 8}\ngrid:\n  embedding.dim: [4, 8, 16]\n  seed: [0, 1, 2, 3]\n")
    env = {**make_subprocess_env(), "PATH": str(Path(PYTHON).parent)}
    manifest = tmp_path / "m.json"
    run = lambda *extra: subprocess.run([PYTHON, "-m", "runner.grid", str(spec), "--out", str(tmp_path / "r"),
                                         "--write-manifest", str(manifest), "--plan-arrays", *extra],
                                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    p = run("--max-submit-jobs", "4", "--max-array-size", "3")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["0 0-2", "3 0-0"]  # 12 runs as 4 tasks of 3, arrays of at most 3
    assert json.loads(manifest.read_text())["tasks"] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert "--max-submit-jobs 4: 12 runs as 4 tasks of up to 3 runs" in p.stderr
    p = run("--max-submit-jobs", "-1")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "--max-submit-jobs" in p.stderr


def test_timeouts_get_more_time_capped_and_queued_runs_are_left_alone():
    rows = {0: status.RunState("a", "timeout", attempts=1, time_limit_s=3600),
            1: status.RunState("b", "timeout", attempts=1, time_limit_s=3 * 3600),
            2: status.RunState("c", "out_of_memory", attempts=1, mem_mb=4000),
            3: status.RunState("d", "pending", attempts=1), 4: status.RunState("e", "failed", attempts=5)}
    groups = arrays.resource_groups(rows, [0, 1, 2, 3, 4, 5], 2.0, 2.0, 5, max_time_s=4 * 3600)
    assert groups == [([5], [], ""), ([0], ["--time=02:00:00"], "timed out: --time 02:00:00"),
                      ([1], ["--time=04:00:00"], "timed out: --time 04:00:00"),
                      ([2], ["--mem=8000M"], "out of memory: --mem 8000M")]


def test_estimate_uses_the_same_config_with_another_seed(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\nmodel: {width: 8}\ngrid:\n  seed: [0, 1]\n  embedding.dim: [4, 8]\n")
    out = tmp_path / "res"
    assert grid.main([str(spec), "--out", str(out), "--list", "--estimate"]) == 0
    assert "estimate: no basis" in capsys.readouterr().out
    runs = expand_grid(load_spec(spec))
    for cfg, wall_s in ((runs[0], 120.0), (runs[1], 600.0)):  # seed 0 of dim 4 and of dim 8
        rec = store.RunRecord(run_id(cfg), cfg.to_dict(), "completed", attrs={"wall_time_s": wall_s})
        rec.final = {s: {"embeddings": np.zeros((2, 2), "float32"), "labels": np.arange(2), "index": np.arange(2)}
                     for s in ("train", "test")}
        store.write_run(store.run_path(out, run_id(cfg)), rec)
    assert grid.main([str(spec), "--out", str(out), "--list", "--estimate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("estimate: 2 runs to do, ~6.0 min each (2 from completed runs of the same config")
    assert lines[-1].startswith("estimate: 0.20 run-hours")


def test_retry_limits_become_submitit_parameters():
    assert arrays.submitit_limits(["--time=04:00:00"]) == {"timeout_min": 240}
    assert arrays.submitit_limits(["--mem=8000M"]) == {"mem_gb": 8}
    assert arrays.submitit_limits([]) == {}
