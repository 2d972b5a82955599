"""DDP per run: rank/world from torchrun, srun or submitit, and 2 gloo ranks == 1 rank × 2 batch."""

import socket

import numpy as np
import pytest
import torch.multiprocessing as mp

from runner import dist, store
from runner.config import run_id
from runner.spec import resolve
from tests.conftest import tiny_layer


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
