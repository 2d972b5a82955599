"""Smoke tests of benchmarks/train_speed.py and benchmarks/packing.py (code paths at tiny size),
and of the fast-path switches on CPU (AMP is a no-op there, channels_last can be turned off)."""

import importlib.util
import subprocess

import pytest
import torch

from runner import dist
from runner.launch.run import build_run_parts
from runner.training import engine
from runner.data.augment import policy_for
from runner.spec import resolve
from runner.data import load_dataset, split_dataset
from tests.conftest import PYTHON, ROOT, tiny_layer


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_speed_quick_prints_ratios(capsys):
    bench = load_bench("train_speed")
    assert bench.main(["--quick", "--repeats", "1", "--contiguous"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("triplet ", "contrastive "))]
    assert [r[0] for r in rows] == ["triplet", "contrastive"]
    assert all(r[-1].endswith("x") and float(r[-1][:-1]) > 0 for r in rows)


def test_train_speed_sides_train_the_same_network():
    bench = load_bench("train_speed")
    cfg = bench.make_config("triplet", 1, "none", 32, 8)
    splits = split_dataset(load_dataset(cfg.data), cfg.data)
    parts = build_run_parts(cfg, splits, policy_for(cfg.data, "digits"), dist.DistEnv(), torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    from runner.training.models import build_model, channel_stats
    bare = build_model(cfg.model, cfg.embedding, 1, 8, *channel_stats(splits.train.images))
    for (name, a), b in zip(parts.model.state_dict().items(), bare.state_dict().values()):
        assert torch.equal(a, b), name
    assert type(parts.loss_fn).__name__ == "TripletMarginLoss" and parts.loss_fn.margin == 0.2
    assert parts.miner.type_of_triplets == "semihard" and parts.miner.margin == 0.2


def test_train_speed_profile_breakdown(capsys):
    bench = load_bench("train_speed")
    assert bench.profile_run(1) == 0
    out = capsys.readouterr().out
    assert "completed" in out and "miner" in out and "evaluation (evaluate_epoch)" in out


def test_packing_quick_prints_ratio(subprocess_env):
    # a subprocess: the spawned workers import benchmarks/packing.py as __main__'s module
    out = subprocess.run([PYTHON, str(ROOT / "benchmarks" / "packing.py"), "--quick", "--threads", "1"],
                         env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "packed/sequential" in out.stdout


def _one_epoch(layer: dict) -> dict:
    cfg = resolve(layer)
    splits = split_dataset(load_dataset(cfg.data), cfg.data)
    device = torch.device(cfg.train.device)
    parts = build_run_parts(cfg, splits, policy_for(cfg.data, "digits"), dist.DistEnv(), device)
    state = engine.TrainState()
    engine.train_one_epoch(parts, engine.DeviceData.of(splits, parts.device), 1, state, cfg.seed, cfg.train.grad_clip)
    return {"amp": parts.amp, "steps": state.steps,
            "weights": {k: v.clone() for k, v in parts.model.state_dict().items()}}


def test_amp_on_cpu_is_a_noop():
    """train.amp asks for bf16 autocast on CUDA only: on CPU the run is bit-identical to amp=False."""
    off = _one_epoch(tiny_layer(amp=False, device="cpu"))
    on = _one_epoch(tiny_layer(amp=True, device="cpu"))
    assert on["amp"] is False
    assert on["steps"] == off["steps"]
    assert all(torch.equal(on["weights"][k], off["weights"][k]) for k in off["weights"])


def test_cpu_parts_stay_contiguous_with_channels_last_off():
    """train.channels_last: false keeps the default layout on CPU (the auto default is channels_last)."""
    cfg = resolve(tiny_layer(device="cpu", channels_last=False))
    splits = split_dataset(load_dataset(cfg.data), cfg.data)
    parts = build_run_parts(cfg, splits, policy_for(cfg.data, "digits"), dist.DistEnv(), torch.device("cpu"))
    convs = [m for m in parts.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous() for m in convs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_fast_path_runs_with_amp():
    out = _one_epoch(tiny_layer(amp=True, device="cuda"))
    assert out["amp"] is True and all(v == v for v in out["steps"]["loss"])


def test_launch_relaunch_of_finished_grid_queues_nothing(capsys):
    """The benchmark itself raises when a launcher queues work for a finished grid."""
    assert load_bench("launch").main(["--part", "relaunch", "--runs", "5"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.endswith("x")]
    assert len(rows) >= 4 and rows[0].startswith("reference")
    assert all(float(line.split()[-1][:-1]) > 0 for line in rows)


def test_launch_overhead_local_launchers(capsys):
    assert load_bench("launch").main(["--part", "overhead", "--no-slurm"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.endswith("x")]
    assert [r.split()[0] for r in rows] == ["python", "runner.submit"]
    assert float(rows[0].split()[-1][:-1]) == 1.0  # the reference row


def test_relaunch_speed_skips_every_finished_run(tmp_path, capsys):
    """The benchmark raises when the relaunch of its finished grid does not print `nothing to do`."""
    assert load_bench("relaunch_speed").main(["--runs", "8", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "wrote 8 completed run.h5" in out and out.count("nothing to do: all 8 runs are done") == 1
    assert out.splitlines()[-1].startswith("reference") and "x with the catalog" in out


def test_table_speed_times_both_ways_over_the_same_runs(tmp_path, capsys):
    assert load_bench("table_speed").main(["--runs", "30", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "wrote 30 run.h5 in " + lines[0].split(" in ")[1]
    assert [line.split("(")[-1] for line in lines[1:3]] == ["28 completed runs with map_at_r in 12 groups, of 30 "
                                                             "finished runs)"] * 2  # every 20th failed: 0 and 20


def test_runs_per_task_trains_every_run_both_ways(tmp_path, capsys):
    """The benchmark raises unless every run completed with K = 1 and with K = 2."""
    assert load_bench("runs_per_task").main(["--runs", "2", "--per-task", "2", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("--runs-per-task  1: 2 runs in 2 tasks") and "2 runs in 1 tasks" in lines[1]
    assert lines[2].startswith("per-run overhead removed by --runs-per-task 2:")
