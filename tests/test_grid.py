"""Spec expansion, validation before submission, manifests, pending/retry, locks, listings into a closed pipe.

grid.sh on the real cluster is tests/test_slurm.py's.
"""

import json
import subprocess
import textwrap

import numpy as np
import pytest

from runner import grid, store
from runner.spec import expand_grid, load_spec
from runner.config import run_id
from runner.launch.run import run_one
from runner.store import RunLocked, run_lock
from tests.conftest import PYTHON, ROOT

TINY = """\
name: tiny
model: {width: 8}
train: {epochs: 1, batch_size: 32, num_threads: 1}
"""


def write_spec(tmp_path, body: str, name: str = "spec.yaml"):
    path = tmp_path / name
    path.write_text(TINY + textwrap.dedent(body))
    return path


def test_exercise_expands_to_60_distinct_runs():
    runs = expand_grid(load_spec(ROOT / "jobs/exercise.yaml"))
    assert len(runs) == 60 and len({run_id(r) for r in runs}) == 60
    assert sorted({r.embedding.dim for r in runs}) == [2, 8, 16, 32, 64] and {r.seed for r in runs} == {0, 1, 2}
    assert {(r.loss.name, r.miner.name) for r in runs} == {
        ("ContrastiveLoss", None), ("ContrastiveLoss", "PairMarginMiner"),
        ("TripletMarginLoss", None), ("TripletMarginLoss", "TripletMarginMiner")}


def test_variants_grid_include_seeds_and_dedup(tmp_path):
    spec = write_spec(tmp_path, """\
        variants: [{loss: {name: triplet}}, {loss: {name: contrastive}, miner: {name: null}}]
        grid: {embedding.dim: [4, 8], train.lr: [0.001, 0.01]}
        include: [{embedding.dim: 16}, {embedding.dim: 4, train.lr: 0.001, loss: {name: contrastive}, miner: {name: null}}]
        seeds: [0, 1]
        """)
    runs = expand_grid(load_spec(spec))
    # 2 variants × 4 grid points × 2 seeds + 1 new include × 2 seeds; the second include is variant 1 at dim 4
    assert len(runs) == 2 * 4 * 2 + 2
    assert runs[-1].embedding.dim == 16 and runs[-1].seed == 1 and runs[-1].loss.name == "TripletMarginLoss"
    assert len(expand_grid(load_spec(spec, ["train.epochs=2"]))) == 18


def test_one_bad_combination_exits_2_with_one_line(tmp_path, capsys):
    spec = write_spec(tmp_path, """\
        grid: {train.batch_size: [32, 30]}
        """)
    assert grid.main([str(spec), "--list"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: train.batch_size") and "grid" not in err.split("[in")[0]
    assert "[in variants[0]" in err


def fake_done(out, cfg, status: str = "completed"):
    """A run.h5 with the given status (and the datasets a completed one must have)."""
    rec = store.RunRecord(run_id=run_id(cfg), config=cfg.to_dict(), status=status)
    if status == "completed":
        rec.final = {s: {"embeddings": np.zeros((2, 2), np.float32), "labels": np.zeros(2, np.int64),
                         "index": np.arange(2)} for s in ("train", "test")}
    store.write_run(store.run_path(out, run_id(cfg)), rec)


def test_manifest_freezes_runs_against_spec_edits(tmp_path, capsys):
    spec = write_spec(tmp_path, "grid: {embedding.dim: [4, 8]}\n")
    manifest, out = tmp_path / "m.json", tmp_path / "res"
    assert grid.main([str(spec), "--out", str(out), "--write-manifest", str(manifest)]) == 0
    spec.write_text(TINY + "grid: {embedding.dim: [2, 4, 8]}\n")  # edited after submission
    runs, data = grid.read_manifest(manifest)
    assert [r.embedding.dim for r in runs] == [4, 8] and data["out"] == str(out.resolve())
    assert grid.main(["--manifest", str(manifest), "--set", "seed=3"]) == 2
    data["runs"][0]["config"]["seed"] = 7  # tampered: run_id no longer matches
    manifest.write_text(json.dumps(data))
    assert grid.main(["--manifest", str(manifest), "--pending"]) == 2
    assert "--manifest" in capsys.readouterr().err


def test_pending_skips_done_and_failed_unless_retrying(tmp_path, capsys):
    spec = write_spec(tmp_path, "grid: {embedding.dim: [4, 8, 16]}\n")
    out = tmp_path / "res"
    runs = expand_grid(load_spec(spec))
    fake_done(out, runs[0])
    fake_done(out, runs[1], "failed")
    assert grid.pending(runs, out) == [2]
    assert grid.pending(runs, out, retry_failed=True) == [1, 2]
    assert grid.main([str(spec), "--out", str(out), "--array", "--max-parallel", "2", "--retry-failed"]) == 0
    assert capsys.readouterr().out.strip() == "1-2%2"
    grid.main([str(spec), "--out", str(out), "--list"])
    listing = capsys.readouterr().out.splitlines()
    assert "done" in listing[0] and "failed" in listing[1] and "missing" in listing[2]
    assert listing[-1] == "3 runs: 1 done, 1 failed, 0 running, 1 to do"


def test_array_ranges():
    assert grid.array_ranges([]) == ""
    assert grid.array_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert grid.array_ranges([3]) == "3"


def test_locked_run_is_running_and_skipped(tmp_path, capsys):
    spec = write_spec(tmp_path, "grid: {embedding.dim: [4]}\n")
    out = tmp_path / "res"
    runs = expand_grid(load_spec(spec))
    with run_lock(store.run_dir(out, run_id(runs[0]))):  # another launcher is training it
        assert grid.run_statuses(runs, out) == ["running"] and grid.pending(runs, out) == []
        with pytest.raises(RunLocked):
            run_one(runs[0], out, progress=False)
        assert grid.main([str(spec), "--out", str(out), "--run-index", "0"]) == 0
        assert "skipped" in capsys.readouterr().out
    assert grid.run_statuses(runs, out) == [None]


def test_two_concurrent_launches_of_one_run_leave_one_valid_result(tmp_path, subprocess_env):
    spec = write_spec(tmp_path, "grid: {embedding.dim: [4]}\n")
    out = tmp_path / "res"
    cmd = [PYTHON, "-m", "runner.grid", str(spec), "--out", str(out), "--run-index", "0"]
    procs = [subprocess.Popen(cmd, env=subprocess_env, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    # one trains it; the other finds it locked, or completed already: both say "skipped"
    assert sum("completed" in o and "skipped" not in o for o in outputs) == 1, outputs
    runs = expand_grid(load_spec(spec))
    assert grid.run_statuses(runs, out) == ["completed"]
    data = store.read_run(store.run_path(out, run_id(runs[0])))
    assert data["attrs"]["status"] == "completed"
    leftovers = [p.name for p in store.run_dir(out, run_id(runs[0])).iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_list_into_a_closed_pipe_ends_quietly(tmp_path, subprocess_env):
    """`runner.grid SPEC --list | head -1` and `| true`: a listing cut short by the reader, once while
    printing (1,000 runs, ~100 kB: more than a pipe holds), once at the exit's flush (a reader that
    never reads). Both end without a BrokenPipeError traceback."""
    big = write_spec(tmp_path, "grid: {embedding.dim: [4, 8, 16, 32, 64], train.lr: [0.001, 0.002, 0.003, 0.004, "
                               "0.005, 0.006, 0.007, 0.008, 0.009, 0.01], loss.margin: [0.1, 0.2, 0.3, 0.4]}\n"
                               "seeds: [0, 1, 2, 3, 4]\n", name="big.yaml")
    small = write_spec(tmp_path, "grid: {embedding.dim: [4, 8]}\n", name="small.yaml")
    cmds = [f"{PYTHON} -m runner.grid {big} --list --out {tmp_path / 'res'} | head -1",
            f"{PYTHON} -m runner.grid {small} --list --out {tmp_path / 'res'} | true"]
    procs = [subprocess.Popen(["bash", "-o", "pipefail", "-c", c], env=subprocess_env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    (out_big, err_big), (out_small, err_small) = [p.communicate(timeout=300) for p in procs]
    assert out_big.count("\n") == 1 and " missing " in out_big and out_small == "", (out_big, out_small)
    assert err_big == "" and err_small == "", err_big + err_small
    # cut short: exit 1, not 0 (with pipefail the pipeline reports the listing's code), and quietly
    assert [p.returncode for p in procs] == [1, 1]
