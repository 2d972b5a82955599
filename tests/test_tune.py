"""runner.tune: spec validation (no Ray), a small ASHA search, resume, DDP trials, slurm/tune.sh."""

import csv
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from runner import tune as rtune
from runner.config import ConfigError, run_id
from runner.spec import load_config
from runner.store import read_attrs, run_path, run_status
from tests.conftest import PYTHON, ROOT, make_subprocess_env, tiny_layer

SEARCH = {"train.lr": {"loguniform": [3e-4, 3e-2]}, "loss.margin": {"uniform": [0.05, 0.4]},
          "embedding.dim": {"choice": [4, 8]}}


def write_spec(path, search=SEARCH, epochs=3, **tune):
    spec = {"name": "t", **tiny_layer(epochs=epochs, save_every=1), "search": search,
            "tune": {"grace_period": 1, "reduction_factor": 2, "cpus_per_trial": 1, **tune}}
    path.write_text(yaml.safe_dump(spec))
    return str(path)


# ------------------------------------------------------------------ validation, no Ray

@pytest.mark.parametrize("search, key", [
    ({"embedding.dim": {"choice": []}}, "search.embedding.dim"),
    ({"train.lr": {"loguniform": [0, 1]}}, "search.train.lr"),
    ({"train.lr": {"uniform": [1, 0.1]}}, "search.train.lr"),
    ({"model.widht": {"int": [8, 16]}}, "search.model.widht"),
    ({"embedding.dim": {"int": [0, 4]}}, "search.embedding.dim"),
    ({"train.lr": [0.1, 0.2]}, "search.train.lr"),
    ({}, "search"),
])
def test_bad_search_is_one_line_config_error(tmp_path, capsys, search, key):
    spec = write_spec(tmp_path / "s.yaml", search=search)
    with pytest.raises(ConfigError) as err:
        rtune.prepare(spec, [])
    assert err.value.key == key and "\n" not in str(err.value)
    assert rtune.main([spec, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {key}")


def test_prepare_adds_val_split_and_one_thread(tmp_path):
    _, base, space, s = rtune.prepare(write_spec(tmp_path / "s.yaml", metric="val_knn1"), [])
    assert base["data"]["val_fraction"] == s.val_fraction > 0 and base["train"]["num_threads"] == 1
    assert set(space) == set(SEARCH)
    with pytest.raises(ConfigError, match="tune.metric"):
        rtune.prepare(write_spec(tmp_path / "b.yaml", metric="knn1"), [])  # never the test split


# ------------------------------------------------------------------ Ray (one instance per module)

@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def search_out(tmp_path_factory):
    """One small search: 4 trials, 3 epochs, ASHA grace 1, rf 2; reused by the tests below.

    `python -m runner.tune` as a user runs it, with its own Ray (before this module's in-process
    one starts), so its whole output, the trials' included, can be read. One trial at a time:
    ASHA stops a trial whose metric at a rung is below the median of the trials that reached the
    rung before it, so which trials stop depends on the order they arrive in; run one after
    another, with the search's seeded sampler and seeded runs, the order and the outcome are the
    same on every machine.
    """
    pytest.importorskip("ray")
    tmp = tmp_path_factory.mktemp("tune")
    spec = write_spec(tmp / "s.yaml")
    p = subprocess.run([PYTHON, "-m", "runner.tune", spec, "--num-samples", "4", "--out", str(tmp / "out"),
                        "--max-concurrent", "1", "--num-cpus", "4"], cwd=tmp, env=make_subprocess_env(),
                       capture_output=True, text=True, timeout=540)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    return spec, tmp / "out", p.stdout + p.stderr


def read_rows(out):
    with open(out / "tune" / "t" / "results.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.ray
def test_search_writes_runs_table_and_best_yaml(search_out):
    spec, out, _ = search_out
    rows = read_rows(out)
    assert len(rows) == 4
    for row in rows:
        attrs = read_attrs(run_path(out, row["run_id"]))
        assert attrs["status"] == row["status"] in ("completed", "stopped")
        assert int(row["epochs"]) == attrs["epochs_run"]
        if row["status"] == "stopped":
            assert attrs["stopped_epoch"] == int(row["epochs"]) < 3
    best = out / "tune" / "t" / "best.yaml"
    cfg = load_config(str(best))  # runner.train accepts it and it is the best trial's run
    assert run_id(cfg) == rows[0]["run_id"] and cfg.data.val_fraction > 0


@pytest.mark.ray
def test_asha_stops_some_trials_early_without_a_traceback(search_out):
    """Trials ASHA stops end as `stopped`, quietly: a normal search prints no traceback."""
    _, out, output = search_out
    rows = read_rows(out)
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert stopped and any(r["status"] == "completed" for r in rows)
    assert all(int(r["epochs"]) < 3 for r in stopped)
    # --max-concurrent 1 held: no trial started before the one before it had ended
    spans = sorted((a["start_time"], a["end_time"]) for a in (read_attrs(run_path(out, r["run_id"])) for r in rows))
    assert all(end <= nxt for (_, end), (nxt, _) in zip(spans, spans[1:])), spans
    for noise in ("Traceback", "Exception ignored", "SystemExit"):
        assert noise not in output, output[max(0, output.find(noise) - 2000):output.find(noise) + 2000]


def interrupt_once(marker):
    """A Tune callback sending SIGINT (Ctrl+C) after the first result, once: the restored
    search unpickles the same callback, so the marker file says it already fired."""
    from ray.tune import Callback

    class Interrupt(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGINT)
    return Interrupt()


@pytest.mark.ray
def test_resume_after_interruption(ray_session, tmp_path):
    spec = write_spec(tmp_path / "s.yaml", epochs=2)
    out = tmp_path / "out"
    code = rtune.main([spec, "--num-samples", "2", "--out", str(out)], callbacks=[interrupt_once(tmp_path / "fired")])
    assert (tmp_path / "fired").exists()
    # an interrupted search still writes results.csv, with the trials it left unfinished, and exits 130
    unfinished = [r for r in read_rows(out) if r["status"] == "unfinished"]
    assert code == 130 and unfinished
    assert rtune.main([spec, "--num-samples", "2", "--out", str(out)]) == 2  # exists: needs --resume
    assert rtune.main([spec, "--num-samples", "2", "--out", str(out), "--resume"]) == 0
    rows = read_rows(out)
    assert len(rows) == 2 and all(run_status(run_path(out, r["run_id"])) in ("completed", "stopped") for r in rows)


@pytest.mark.ray
def test_ddp_trial_with_gloo_workers(ray_session, tmp_path):
    """workers_per_trial=2 on CPU: a TorchTrainer per trial, ranks from Ray Train, one run.h5."""
    spec = write_spec(tmp_path / "s.yaml", search={"loss.margin": {"choice": [0.2]}}, epochs=2,
                      workers_per_trial=2)
    out = tmp_path / "out"
    assert rtune.main([spec, "--num-samples", "1", "--out", str(out)]) == 0
    (row,) = read_rows(out)
    attrs = read_attrs(run_path(out, row["run_id"]))
    assert attrs["status"] == "completed" and attrs["world_size"] == 2


# ------------------------------------------------------------------ SLURM

@pytest.mark.slurm
@pytest.mark.ray
@pytest.mark.skipif(shutil.which("sinfo") is None, reason="no SLURM client (sinfo)")
def test_slurm_tune_script(tmp_path, subprocess_env):
    spec = write_spec(tmp_path / "s.yaml", search={"loss.margin": {"choice": [0.1, 0.3]}}, epochs=2)
    out = tmp_path / "out"
    env = {**subprocess_env, "DMLR_PYTHON": PYTHON}
    sub = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/slurm-%j.out", "--chdir", str(ROOT),
                          str(ROOT / "slurm" / "tune.sh"), spec, "--num-samples", "2", "--out", str(out)],
                         env=env, capture_output=True, text=True, check=True)
    job = sub.stdout.strip().split(";")[0]
    deadline = time.time() + 240
    while time.time() < deadline:
        if not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
            break
        time.sleep(3)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert (out / "tune" / "t" / "results.csv").exists(), log[-3000:]
    assert len(read_rows(out)) == 2 and "ray cluster up: 1 node" in log and "ray stopped" in log
    time.sleep(2)  # only this job's Ray is gone (the script never runs `ray stop`)
    left = subprocess.run(["pgrep", "-f", f"/tmp/ray-{job}-"], capture_output=True, text=True).stdout
    assert not left.strip(), left
    state = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State", "--parsable2"],
                           capture_output=True, text=True).stdout.split()
    assert state and state[0] == "COMPLETED", log[-3000:]
