"""runner.submit --runs-per-gpu: an array task trains K runs at once, in K processes (on CPU here)."""

import os

import pytest

from runner import store
from runner.config import run_id
from runner.launch.submitit_jobs import GridTask
from runner.spec import resolve
from runner.submit import parse_args
from tests.conftest import tiny_layer


def test_grid_task_trains_runs_per_gpu_runs_in_as_many_processes(tmp_path):
    cfgs = [resolve({**tiny_layer(epochs=1), "embedding": {"dim": d}}) for d in (4, 8)]
    results = GridTask()([c.to_dict() for c in cfgs], str(tmp_path), False, 2)
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert [r["run_id"] for r in results] == [run_id(c) for c in cfgs]
    pids = {r["worker_pid"] for r in results}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, side by side
    for c in cfgs:
        assert store.read_attrs(store.run_path(tmp_path, run_id(c)))["status"] == "completed"


def test_runs_per_gpu_sets_runs_per_task_and_refuses_ddp(capsys):
    args = parse_args(["jobs/exercise.yaml", "--runs-per-gpu", "3"])
    assert args.runs_per_task == 3 and args.runs_per_gpu == 3
    assert parse_args(["jobs/exercise.yaml", "--runs-per-gpu", "3", "--runs-per-task", "6"]).runs_per_task == 6
    for bad in (["--runs-per-gpu", "0"], ["--runs-per-gpu", "2", "--gpus-per-run", "2"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(["jobs/exercise.yaml", *bad])
        assert exc.value.code == 2 and "--runs-per-gpu" in capsys.readouterr().err
