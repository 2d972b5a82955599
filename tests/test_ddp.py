"""DDP per run: rank/world from torchrun, srun or submitit, and 2 gloo ranks == 1 rank × 2 batch."""

import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from runner import dist, store
from runner.config import run_id
from runner.spec import load_config, resolve
from tests.conftest import PYTHON, tiny_layer


def test_from_environ_torchrun_wins():
    env = dist.from_environ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "n1",
                             "MASTER_PORT": "1234", "SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "8"})
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.master_port, env.source) == \
        (1, 1, 4, "n1", 1234, "torchrun")


def test_from_environ_srun_step():
    env = dist.from_environ({"SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "2",
                             "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[03-05]", "SLURM_JOB_ID": "7",
                             "SLURM_STEP_ID": "0"})
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.source) == (1, 1, 2, "gpu03", "slurm")
    other_step = dist.from_environ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_NODELIST": "a",
                                    "SLURM_JOB_ID": "7", "SLURM_STEP_ID": "1"})
    assert other_step.master_port != env.master_port  # packed steps in one allocation don't collide


def test_from_environ_batch_script_is_single_process():
    # the batch script of a 2-task job sees SLURM_NTASKS=2 but is one process
    assert dist.from_environ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7"}) == dist.DistEnv()


def test_from_environ_submitit_local():
    env = dist.from_environ({"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
                             "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_ID": "4242"})
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.source) == \
        (1, 1, 2, "127.0.0.1", "submitit-local")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model_float64(*args, **kwargs):
    """float64 models: float32 rounding depends on the summation order (gathered vs one batch,
    DDP's gradient all-reduce), and semi-hard mining turns a 1e-7 difference into another
    triplet set some dozens of steps later. The engine keeps the model's dtype for the loss."""
    from runner.training import models
    return models.build_model(*args, **kwargs).double()


def _rank_main(rank: int, cfg, out: str, port: int) -> None:
    from runner.launch.run import run_one
    from runner.training import parts
    parts.build_model = build_model_float64  # a fresh spawned interpreter: patched for this rank only
    env = dist.DistEnv(rank, rank, 2, "127.0.0.1", port, "test")
    result = run_one(cfg, out, env, progress=False)
    assert result["status"] == "completed", result


# GroupNorm (no BatchNorm statistics per rank), no augmentation (per-rank generators)
EXACT = {"model": {"norm": "group"}, "data": {"augment": "none"}}


@pytest.mark.parametrize("miner", ["TripletMarginMiner", None], ids=["semihard", "no-miner"])
def test_two_gloo_ranks_equal_one_rank_with_twice_the_batch(tmp_path, monkeypatch, miner):
    layer = tiny_layer(epochs=2, batch_size=16, samples_per_class=4, save_every=1)
    one = resolve(layer, EXACT, {"train": {"batch_size": 32}, "miner": {"name": miner}})
    two = resolve(layer, EXACT, {"miner": {"name": miner}})
    from runner.launch.run import run_one
    from runner.training import parts
    monkeypatch.setattr(parts, "build_model", build_model_float64)
    assert run_one(one, tmp_path / "one", progress=False)["status"] == "completed"
    mp.spawn(_rank_main, args=(two, str(tmp_path / "two"), free_port()), nprocs=2, join=True)
    a = store.read_run(store.run_path(tmp_path / "one", run_id(one)), epochs=True)
    b = store.read_run(store.run_path(tmp_path / "two", run_id(two)), epochs=True)
    loss_a, loss_b = a["history"]["steps"]["loss"], b["history"]["steps"]["loss"]
    assert len(loss_a) == len(loss_b) > 50
    np.testing.assert_allclose(loss_b, loss_a, rtol=0, atol=1e-5)
    for split in ("train", "test"):
        np.testing.assert_allclose(b["final"][split]["embeddings"], a["final"][split]["embeddings"], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(b["final"][split]["labels"], a["final"][split]["labels"])


# ---------------------------------------------------------------- one start decision for all ranks

def _decision_rank(rank: int, cfgs, out: str, port: int, report: str) -> None:
    import json
    import time
    from runner.launch.many import run_each
    env = dist.DistEnv(rank, rank, 2, "127.0.0.1", port, "test")
    rows = []
    for cfg in cfgs:  # a fresh process group per run, as a grid's array task makes them
        t0 = time.perf_counter()
        result = next(run_each([cfg], out, env, progress=False))
        rows.append({"status": result["status"], "skipped": bool(result.get("skipped")),
                     "seconds": time.perf_counter() - t0})
    with open(f"{report}.{rank}", "w") as fh:
        json.dump(rows, fh)


def spawn_and_wait(fn, args: tuple, timeout_s: float) -> None:
    """mp.spawn of 2 ranks that must all end within timeout_s (then they are terminated: a failure)."""
    ctx = mp.spawn(fn, args=args, nprocs=2, join=False)
    deadline = time.time() + timeout_s
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail(f"ranks still running after {timeout_s} s")


def test_locked_and_completed_runs_end_every_rank_at_once(tmp_path):
    """Rank 0 decides skip / locked / train after the ranks meet and tells the others: with the run
    locked by another process, and with a run already complete, both ranks end in seconds
    (before, the ranks other than 0 waited in init_process_group for its 600 s timeout)."""
    import json
    locked = resolve(tiny_layer(), {"seed": 1})
    done = resolve(tiny_layer(), {"seed": 2})
    out = tmp_path / "out"
    rec = store.RunRecord(run_id=run_id(done), config=done.to_dict(), status="completed")
    rec.final = {s: {"embeddings": np.zeros((2, 2), np.float32), "labels": np.zeros(2, np.int64),
                     "index": np.arange(2)} for s in ("train", "test")}
    store.write_run(store.run_path(out, run_id(done)), rec)
    report = str(tmp_path / "report")
    with store.run_lock(store.run_dir(out, run_id(locked))):  # another launch is training it
        spawn_and_wait(_decision_rank, ([locked, done], str(out), free_port(), report), 120)
    for rank in (0, 1):
        rows = json.load(open(f"{report}.{rank}"))
        assert [r["status"] for r in rows] == ["locked", "completed"], (rank, rows)
        assert rows[1]["skipped"] and all(r["seconds"] < 30 for r in rows), (rank, rows)
    assert store.run_status(store.run_path(out, run_id(locked))) is None  # nothing trained it


def _spawn_rank(rank: int, cfg, out: str, port: int) -> None:
    from runner.launch.run import run_one
    result = run_one(cfg, out, dist.DistEnv(rank, rank, 2, "127.0.0.1", port, "test"), progress=False)
    assert result["status"] == "completed", result


def test_torchrun_two_gloo_ranks_equal_the_spawned_ranks(tmp_path, subprocess_env):
    """A real `torchrun --nproc-per-node 2 -m runner.train` (ranks from RANK/WORLD_SIZE, gloo) trains
    the run the 2 spawned ranks train, to the last bit."""
    sets = ["model.width=8", "model.norm=group", "embedding.dim=8", "train.epochs=2", "train.batch_size=16",
            "train.num_threads=1", "data.augment=none"]
    cfg = load_config(None, sets)  # as runner.train resolves them
    torchrun = Path(PYTHON).with_name("torchrun")  # the venv's console script (torch.distributed.run)
    p = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "runner.train",
                        "--out", str(tmp_path / "torchrun"), *[a for s in sets for a in ("--set", s)]],
                       cwd=tmp_path, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert p.stdout.count("completed") == 1  # rank 0 reports, once
    spawn_and_wait(_spawn_rank, (cfg, str(tmp_path / "spawn"), free_port()), 300)
    a = store.read_run(store.run_path(tmp_path / "torchrun", run_id(cfg)), epochs=True)
    b = store.read_run(store.run_path(tmp_path / "spawn", run_id(cfg)), epochs=True)
    assert a["attrs"]["launcher"] == "torchrun" and a["attrs"]["world_size"] == b["attrs"]["world_size"] == 2
    np.testing.assert_array_equal(a["history"]["steps"]["loss"], b["history"]["steps"]["loss"])
    for split in ("train", "test"):
        np.testing.assert_array_equal(a["final"][split]["embeddings"], b["final"][split]["embeddings"])
