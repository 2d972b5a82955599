"""Fault suite: kills at many points, torn and garbage files, full disks, NaNs, concurrent launches.

Kill points are deterministic: a helper process imports the runner once, then forks one
child per kill point; the child patches one function so that the process signals itself
(SIGKILL, or the preemption signals SIGTERM / SIGUSR2, whose default action ends it) at
exactly that point. Each killed run is then resumed here and compared with one
uninterrupted reference run. docs/reliability.md reports the counts.
"""

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time

import numpy as np
import pytest

from runner import grid, store
from runner.config import ConfigError, run_id
from runner.spec import expand_grid, load_spec, resolve
from runner.launch.run import run_one
from tests.conftest import PYTHON, ROOT, start_train_until_checkpoint, tiny_layer


def small_layer(**train) -> dict:
    """8 training images per digit class: 2 steps per epoch, 3 epochs, about a second per run."""
    layer = tiny_layer(**{"epochs": 3, **train})
    layer["data"] = {"n_per_class": 8}
    return layer


# (name, where, n-th call, signal): 24 kill points over every phase of a run
KILL_POINTS = [
    ("load_data", "prepare_data", 1, "SIGKILL"),
    *[(f"step{n}", "step", n, "SIGKILL") for n in (1, 3, 6)],
    ("step2_term", "step", 2, "SIGTERM"),
    ("step4_usr2", "step", 4, "SIGUSR2"),
    ("step5", "step", 5, "SIGKILL"),
    *[(f"eval{n}", "eval", n, "SIGKILL") for n in (1, 2, 4)],
    ("eval3_term", "eval", 3, "SIGTERM"),
    *[(f"ckpt_mid{n}", "ckpt_mid", n, "SIGKILL") for n in (1, 4)],
    ("ckpt_mid2_usr2", "ckpt_mid", 2, "SIGUSR2"),
    *[(f"ckpt_rename{n}", "ckpt_rename", n, "SIGKILL") for n in (2, 4)],
    *[(f"ckpt_done{n}", "ckpt_done", n, "SIGKILL") for n in (1, 3)],
    ("tb_epoch2", "tb", 2, "SIGKILL"),
    ("model_save", "model_save", 1, "SIGKILL"),
    ("h5_mid1_term", "h5_mid", 1, "SIGTERM"),
    ("h5_mid3", "h5_mid", 3, "SIGKILL"),
    ("h5_rename", "h5_rename", 1, "SIGKILL"),
    ("h5_done", "h5_done", 1, "SIGKILL"),
]

# The helper process: import once, fork per kill point, patch, train, die at the point.
CHILD = textwrap.dedent(r'''
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from runner import store
    from runner.launch import run as train, tb_logger as tb
    from runner.store import files, run_file
    from runner.training import engine
    from runner.spec import resolve
    plan = json.load(open(sys.argv[1]))
    cfg = resolve(plan["layer"])

    def die(sig):
        os.kill(os.getpid(), getattr(signal, sig))
        os._exit(99)  # SIGTERM/SIGUSR2 are delivered before the next bytecode; never reached

    def patch(owner, attr, where, n, sig, before=True, match=None):
        real, calls = getattr(owner, attr), [0]
        def hooked(*args, **kwargs):
            hit = match is None or match(args)
            if hit:
                calls[0] += 1
            if hit and calls[0] == n and before:
                die(sig)
            out = real(*args, **kwargs)
            if hit and calls[0] == n and not before:
                die(sig)
            return out
        setattr(owner, attr, hooked)

    def torn_save(n, sig):
        real, calls = torch.save, [0]
        def save(obj, f, *a, **k):
            real(obj, f, *a, **k)
            if "checkpoint" in str(f):
                calls[0] += 1
                if calls[0] == n:  # half the bytes reached the disk, then the process died
                    os.truncate(f, os.path.getsize(f) // 2)
                    die(sig)
        torch.save = save

    def install(where, n, sig):
        if where == "prepare_data":
            patch(train, "prepare_data", where, n, sig)
        elif where == "step":
            patch(engine, "train_step", where, n, sig)
        elif where == "eval":
            patch(engine, "evaluate_epoch", where, n, sig)
        elif where == "ckpt_mid":
            torn_save(n, sig)
        elif where == "ckpt_rename":
            patch(files, "fsync_replace", where, n, sig, match=lambda a: "checkpoint" in str(a[1]))
        elif where == "ckpt_done":
            patch(train, "save_checkpoint", where, n, sig, before=False)
        elif where == "tb":
            patch(tb.TBLogger, "log_epoch", where, n, sig)
        elif where == "model_save":
            patch(files, "fsync_replace", where, n, sig, match=lambda a: str(a[1]).endswith("model.pt"))
        elif where == "h5_mid":
            patch(run_file, "_write_arrays", where, n, sig)
        elif where == "h5_rename":
            patch(files, "fsync_replace", where, n, sig, match=lambda a: str(a[1]).endswith("run.h5"))
        elif where == "h5_done":
            patch(store, "write_run", where, n, sig, before=False)

    # one full run first, so every lazy import (tensorboard, sklearn, h5py) is done before forking
    train.run_one(cfg, os.path.join(plan["out"], "_warm"), progress=False)
    results = {}
    for name, where, n, sig in plan["points"]:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                install(where, n, sig)
                train.run_one(cfg, os.path.join(plan["out"], name), progress=False)
            except BaseException:
                code = 3
            os._exit(code)  # the kill point was never reached
        _, status = os.waitpid(pid, 0)
        results[name] = signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) \
            else f"exit {os.WEXITSTATUS(status)}"
    json.dump(results, open(plan["result"], "w"))
''')


def _final(out, cfg) -> dict:
    data = store.read_run(store.run_path(out, run_id(cfg)), epochs=True)
    return {"train": data["final"]["train"]["embeddings"], "test": data["final"]["test"]["embeddings"],
            "loss": data["history"]["steps"]["loss"], "metrics": data["attrs"]["metrics"],
            "epochs": sorted(data["epochs"]), "epoch_list": list(data["history"]["epochs"]["epoch"])}


def assert_same_result(a: dict, b: dict) -> None:
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(b["train"], a["train"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(b["test"], a["test"], rtol=0, atol=1e-5)
    assert b["metrics"] == pytest.approx(a["metrics"], abs=1e-9)
    assert b["epochs"] == a["epochs"] and b["epoch_list"] == a["epoch_list"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run of the small config: every fault case must end equal to it."""
    out = tmp_path_factory.mktemp("reference")
    cfg = resolve(small_layer())
    assert run_one(cfg, out, progress=False)["status"] == "completed"
    return cfg, out, _final(out, cfg)


# ---------------------------------------------------------------- 1. kill and resume

def test_kill_points_resume_equal(tmp_path, reference, subprocess_env):
    """24 kill points (SIGKILL, SIGTERM, SIGUSR2) over steps, eval, checkpoint and HDF5 writes resume equal."""
    cfg, _, ref = reference
    plan = {"layer": small_layer(), "out": str(tmp_path), "result": str(tmp_path / "killed.json"),
            "points": [list(p) for p in KILL_POINTS]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    r = subprocess.run([PYTHON, "-c", CHILD, str(tmp_path / "plan.json")], cwd=ROOT, env=subprocess_env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    killed = json.loads((tmp_path / "killed.json").read_text())
    assert killed == {name: sig for name, _, _, sig in KILL_POINTS}  # every point was reached and fired
    rid = run_id(cfg)
    for name, where, _, _ in KILL_POINTS:
        out = tmp_path / name
        # nothing half-written is ever visible: run.h5 is absent until complete
        expected = "completed" if where == "h5_done" else None
        assert store.run_status(store.run_path(out, rid)) == expected, name
        result = run_one(cfg, out, progress=False)
        assert result["status"] == "completed", (name, result)
        assert_same_result(ref, _final(out, cfg))
        rdir = store.run_dir(out, rid)
        assert (rdir / "model.pt").exists(), name
        assert not list(rdir.glob(".*.tmp")), (name, list(rdir.glob(".*.tmp")))


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_preemption_signal_to_cli_then_resume(tmp_path, subprocess_env, sig):
    """The plain `python -m runner.train` process ended by a preemption signal mid-run resumes equal."""
    sets = ["model.width=8", "embedding.dim=8", "train.epochs=2", "train.batch_size=32",
            "train.num_threads=1", "train.save_every=1"]
    cfg = resolve(tiny_layer(epochs=2))
    proc, _ = start_train_until_checkpoint(tmp_path / "a", cfg, sets, subprocess_env)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == -sig  # it died mid-run (default action), it did not finish
    assert store.run_status(store.run_path(tmp_path / "a", run_id(cfg))) is None
    assert run_one(cfg, tmp_path / "a", progress=False)["status"] == "completed"
    assert run_one(cfg, tmp_path / "b", progress=False)["status"] == "completed"
    assert_same_result(_final(tmp_path / "b", cfg), _final(tmp_path / "a", cfg))


# ---------------------------------------------------------------- 2. nothing half-written

def _copy_run(reference, dst):
    cfg, out, _ = reference
    shutil.copytree(out, dst)
    return cfg, store.run_dir(dst, run_id(cfg))


def _truncate(path):
    os.truncate(path, path.stat().st_size // 2)


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _empty(path):
    path.write_bytes(b"")


def _missing_part(path):
    import h5py
    with h5py.File(path, "a") as f:
        del f["final/test"]


@pytest.mark.parametrize("damage", [_truncate, _garbage, _empty, _missing_part])
def test_corrupt_run_h5_is_detected_and_redone(tmp_path, reference, damage):
    cfg, rdir = _copy_run(reference, tmp_path / "out")
    damage(rdir / "run.h5")
    assert store.run_status(rdir / "run.h5") == "corrupt"
    with pytest.raises(store.CorruptRun):
        store.read_run(rdir / "run.h5")
    assert grid.pending([cfg], tmp_path / "out") == [0]  # a launcher reruns it
    result = run_one(cfg, tmp_path / "out", progress=False)
    assert result["status"] == "completed" and not result.get("skipped")
    assert_same_result(reference[2], _final(tmp_path / "out", cfg))


def _foreign(path):
    import torch
    torch.save({"run_id": "someoneelse", "epoch": 2}, path)


@pytest.mark.parametrize("damage", [_truncate, _garbage, _foreign])
def test_corrupt_checkpoint_is_not_trusted(tmp_path, reference, damage):
    """A torn, garbage or foreign checkpoint.pt is ignored: the run starts over and ends equal."""
    cfg, out, ref = reference
    first = run_one(cfg, tmp_path, progress=False, stop_after_epochs=2)
    assert first["status"] == "interrupted"
    ckpt = store.run_dir(tmp_path, run_id(cfg)) / "checkpoint.pt"
    damage(ckpt)
    assert run_one(cfg, tmp_path, progress=False)["status"] == "completed"
    assert_same_result(ref, _final(tmp_path, cfg))


def test_unwritable_out_is_a_clear_error_before_training(tmp_path, reference, subprocess_env):
    cfg = reference[0]
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigError) as exc:
        run_one(cfg, tmp_path / "file" / "results")
    assert exc.value.key == "--out" and "\n" not in str(exc.value)
    r = subprocess.run([PYTHON, "-m", "runner.train", "--out", str(tmp_path / "file" / "results"),
                        "--set", "embedding.dim=8"], cwd=ROOT, env=subprocess_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: --out:") and r.stderr.count("\n") == 1, r.stderr


def test_full_out_is_a_clear_error_before_training(tmp_path, reference, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1 << 20))
    with pytest.raises(ConfigError, match="MiB free") as exc:
        run_one(reference[0], tmp_path)
    assert exc.value.key == "--out"
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing created


def test_disk_full_while_writing_fails_the_run_with_its_reason(tmp_path, reference, monkeypatch):
    """ENOSPC at the final writes: the run is `failed` with the reason, no run.h5, and a rerun completes."""
    cfg, _, ref = reference

    def full(tmp, final):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.files, "fsync_replace", full)
    result = run_one(cfg, tmp_path, progress=False)
    assert result["status"] == "failed" and "No space left on device" in result["error"]
    assert "could not be written" in result["error"]
    assert store.run_status(store.run_path(tmp_path, run_id(cfg))) is None  # not trusted, not lost: redone
    monkeypatch.undo()
    assert run_one(cfg, tmp_path, progress=False)["status"] == "completed"
    assert_same_result(ref, _final(tmp_path, cfg))


def test_disk_full_while_saving_the_diff_fails_the_run_with_its_reason(tmp_path, reference, monkeypatch):
    """A checkout with uncommitted changes stores its diff before training: ENOSPC there is a failed run too."""
    from runner.launch import provenance
    cfg = reference[0]

    def dirty():
        return "diff --git a/x b/x\n+a change\n"

    monkeypatch.setattr(provenance, "_diff", dirty)

    def full(tmp, final):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.files, "fsync_replace", full)
    result = run_one(cfg, tmp_path, progress=False)
    assert result["status"] == "failed" and "No space left on device" in result["error"]
    assert not list((tmp_path / "provenance").glob("*.diff"))  # nothing half-written
    monkeypatch.undo()
    monkeypatch.setattr(provenance, "_diff", dirty)
    assert run_one(cfg, tmp_path, progress=False)["status"] == "completed"
    assert store.read_attrs(store.run_path(tmp_path, run_id(cfg)))["diff_sha256"]


# ---------------------------------------------------------------- 3. NaN / inf

@pytest.mark.parametrize("bad,at_call", [(float("nan"), 3), (float("inf"), 5)])
def test_non_finite_loss_stops_at_first_bad_step(tmp_path, monkeypatch, bad, at_call):
    import torch
    from runner.training import engine
    real, calls = engine.train_step, [0]

    def poisoned(*args, **kwargs):
        calls[0] += 1
        rec = real(*args, **kwargs)
        if calls[0] >= at_call:
            rec[0] = torch.tensor(bad)
        return rec

    monkeypatch.setattr(engine, "train_step", poisoned)
    cfg = resolve(small_layer())
    result = run_one(cfg, tmp_path, progress=False)
    assert result["status"] == "failed" and "non-finite" in result["error"]
    assert calls[0] == at_call  # no step after the first bad one
    attrs = store.read_attrs(store.run_path(tmp_path, run_id(cfg)))
    assert attrs["status"] == "failed" and attrs["failed_step"] == at_call - 1  # steps count from 0
    assert attrs["failed_epoch"] == (at_call - 1) // 2 + 1 and "non-finite" in attrs["error"]


def test_diverging_run_fails_and_grid_goes_on(tmp_path):
    spec = tmp_path / "spec.yaml"
    base = small_layer(epochs=2)
    spec.write_text(json.dumps({**base, "include": [
        {"train.lr": 1e12, "train.optimizer": "sgd", "loss.name": "ContrastiveLoss", "miner.name": None,
         "embedding.normalize": False},
        {"seed": 1}]}))
    runs = expand_grid(load_spec(spec))  # the base run, the diverging one, seed 1
    assert grid.run_indices(runs, [0, 1, 2], str(tmp_path / "out"), retry_failed=False) == 1
    assert grid.run_statuses(runs, tmp_path / "out") == ["completed", "failed", "completed"]
    attrs = store.read_attrs(store.run_path(tmp_path / "out", run_id(runs[1])))
    assert "non-finite" in attrs["error"] and attrs["failed_step"] >= 0 and attrs["failed_epoch"] >= 1
    assert grid.pending(runs, tmp_path / "out") == []  # failed runs rerun only with --retry-failed
    assert grid.pending(runs, tmp_path / "out", retry_failed=True) == [1]


# ---------------------------------------------------------------- 5. concurrency

def test_two_launches_of_one_grid_run_each_run_once(tmp_path, subprocess_env):
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({**small_layer(epochs=1), "seeds": [0, 1, 2]}))
    args = [PYTHON, "-m", "runner.grid", str(spec), "--run", "--out", str(tmp_path / "out")]
    procs = [subprocess.Popen(args, cwd=ROOT, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    runs = expand_grid(load_spec(spec))
    trained = [line for o, _ in outs for line in o.splitlines()
               if ": completed" in line and "skipped" not in line]
    assert sorted(line.split()[2].rstrip(":") for line in trained) == sorted(run_id(r) for r in runs)
    assert grid.run_statuses(runs, tmp_path / "out") == ["completed"] * 3


WRITER = textwrap.dedent(r'''
    import sys, time, numpy as np
    from runner import store
    i, out, start = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    while time.time() < start:
        time.sleep(0.001)
    for rep in range(5):
        for rid in (f"run{i}", "shared"):
            emb = np.full((500, 64), i, np.float32)
            rec = store.RunRecord(run_id=rid, config={"writer": i}, status="completed", attrs={"rep": rep},
                                  final={s: {"embeddings": emb, "labels": np.arange(500) % 10,
                                             "index": np.arange(500)} for s in ("train", "test")},
                                  epochs={e: {"train": emb, "test": emb} for e in range(4)})
            store.write_run(store.run_path(out, rid), rec)
''')


def test_eight_concurrent_writers_leave_eight_readable_files(tmp_path, subprocess_env):
    start = time.time() + 3
    procs = [subprocess.Popen([PYTHON, "-c", WRITER, str(i), str(tmp_path), str(start)], cwd=ROOT,
                              env=subprocess_env, stderr=subprocess.PIPE, text=True) for i in range(8)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    for i in range(8):
        data = store.read_run(store.run_path(tmp_path, f"run{i}"), epochs=True)
        assert data["config"] == {"writer": i} and (data["final"]["test"]["embeddings"] == i).all()
    shared = store.read_run(store.run_path(tmp_path, "shared"), epochs=True)  # one writer's complete file
    w = shared["config"]["writer"]
    assert all((shared["epochs"][e]["train"] == w).all() for e in range(4))
    assert not list(tmp_path.glob("runs/*/.*.tmp"))
