"""`runner.grid --run --jobs N`: runs at once on this machine, same results, Ctrl-C resumes equal."""

import os
import signal
import subprocess
import time

import numpy as np

from runner import store
from runner.config import run_id
from runner.launch.pool import plan_jobs
from runner.launch.run import run_one
from runner.spec import expand_grid, load_spec
from tests.conftest import PYTHON

SPEC = """\
name: pool
model: {width: 8}
embedding: {dim: 8}
train: {epochs: EPOCHS, batch_size: 32, num_threads: 1, save_every: 1}
grid:
  loss.margin: [0.1, 0.2]
seeds: [0, 1]
"""


def spec(tmp_path, epochs):
    path = tmp_path / f"pool{epochs}.yaml"
    path.write_text(SPEC.replace("EPOCHS", str(epochs)))
    return path


def final(out, cfg):
    data = store.read_run(store.run_path(out, run_id(cfg)))
    return data["final"]["test"]["embeddings"], data["history"]["steps"]["loss"]


def test_plan_jobs_auto_divides_the_cpus(monkeypatch):
    runs = expand_grid(load_spec(__file__.replace("test_pool.py", "../jobs/exercise.yaml")))
    monkeypatch.setattr("runner.launch.pool.available_cpus", lambda: 8)
    assert plan_jobs("auto", runs, None) == (8, 1)  # no thread count set: one thread each
    assert plan_jobs("auto", runs, 2) == (4, 2)
    assert plan_jobs("3", runs, None) == (3, 2)  # 8 CPUs over 3 workers
    assert plan_jobs("auto", runs[:2], 1) == (2, 1)  # never more workers than runs


def test_jobs_2_gives_the_runs_of_a_sequential_grid(tmp_path, subprocess_env):
    path = spec(tmp_path, 2)
    r = subprocess.run([PYTHON, "-m", "runner.grid", str(path), "--run", "--jobs", "2", "--out", str(tmp_path / "par")],
                       env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "4 runs on 2 worker(s) x 1 thread(s)" in r.stdout and r.stdout.count(": completed") == 4
    for cfg in expand_grid(load_spec(path)):
        run_one(cfg, tmp_path / "seq", progress=False)
        (a, la), (b, lb) = final(tmp_path / "par", cfg), final(tmp_path / "seq", cfg)
        np.testing.assert_array_equal(a, b)  # one thread each: bit-identical to a run on its own
        np.testing.assert_array_equal(la, lb)


def test_ctrl_c_stops_every_run_and_the_next_launch_resumes_them_equal(tmp_path, subprocess_env):
    path = spec(tmp_path, 6)
    cmd = [PYTHON, "-m", "runner.grid", str(path), "--run", "--jobs", "2", "--out", str(tmp_path / "par")]
    # its own process group with Ctrl-C at its default, as a terminal's foreground job (a CI runner may
    # have started us with SIGINT ignored, which children inherit)
    proc = subprocess.Popen(cmd, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    runs = expand_grid(load_spec(path))
    ckpts = [store.run_dir(tmp_path / "par", run_id(c)) / "checkpoint.pt" for c in runs[:2]]
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not all(c.exists() for c in ckpts):
        time.sleep(0.05)
    assert all(c.exists() for c in ckpts), proc.stderr.read() if proc.poll() is not None else "no checkpoints"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err and "Traceback" not in err
    statuses = [store.run_status(store.run_path(tmp_path / "par", run_id(c))) for c in runs]
    assert statuses.count("completed") < len(runs)  # it really was interrupted
    assert all(c.exists() for c in ckpts if store.run_status(c.parent / "run.h5") != "completed")
    r = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for cfg in runs:
        run_one(cfg, tmp_path / "ref", progress=False)
        (a, la), (b, lb) = final(tmp_path / "par", cfg), final(tmp_path / "ref", cfg)
        np.testing.assert_allclose(a, b, atol=1e-6)
        np.testing.assert_allclose(la, lb, atol=1e-6)
