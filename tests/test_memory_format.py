"""train.channels_last (auto: on for conv backbones, CPU included) and train.compile."""

import numpy as np
import pytest
import torch

from runner import store
from runner.config import run_id
from runner.launch.run import run_one
from runner.spec import resolve
from tests.conftest import tiny_layer


def _run(out, **train):
    cfg = resolve(tiny_layer(epochs=1, **train))
    result = run_one(cfg, out, progress=False)
    assert result["status"] == "completed", result
    return cfg, store.read_run(store.run_path(out, run_id(cfg)), epochs=True)


def test_channels_last_is_the_cpu_default_recorded_and_reproducible(tmp_path):
    cfg, auto = _run(tmp_path / "a")
    assert cfg.train.channels_last is None and auto["attrs"]["memory_format"] == "channels_last"
    _, again = _run(tmp_path / "b")  # same config, same version: the same numbers, bit for bit
    np.testing.assert_array_equal(auto["final"]["test"]["embeddings"], again["final"]["test"]["embeddings"])
    assert auto["attrs"]["metrics"] == again["attrs"]["metrics"]
    cfg_off, off = _run(tmp_path / "c", channels_last=False)
    assert off["attrs"]["memory_format"] == "contiguous" and run_id(cfg_off) != run_id(cfg)
    # the layout changes only how convolutions round: the untrained embeddings agree to float precision
    np.testing.assert_allclose(off["epochs"][0]["test"], auto["epochs"][0]["test"], rtol=1e-4, atol=1e-5)


def test_channels_last_model_and_batches(tmp_path):
    from runner.launch.run import build_run_parts, prepare_data
    from runner import dist
    cfg = resolve(tiny_layer())
    splits, policy = prepare_data(cfg.data)
    parts = build_run_parts(cfg, splits, policy, dist.DistEnv(), torch.device("cpu"))
    conv = next(m for m in parts.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert parts.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # really the other layout (the test would pass vacuously otherwise)


@pytest.mark.slow
def test_compile_opt_in_trains_and_records_its_time(tmp_path):
    cfg, data = _run(tmp_path, compile=True)
    assert cfg.train.compile and data["attrs"]["compile_s"] > 0
    assert np.isfinite(data["history"]["steps"]["loss"]).all()
