"""RESULTS/index.sqlite: concurrent writers leave it complete, a rebuild equals it, a real run lands in it."""

import multiprocessing as mp

import h5py
import numpy as np
import pytest

from runner import store
from runner.config import run_id
from runner.launch.many import pending, run_statuses
from runner.launch.run import run_one
from runner.spec import resolve
from runner.store import catalog
from tests.fake_runs import RUNS_EACH, fake_run_id, write_fake_run, writer

WRITERS = 8


def test_eight_concurrent_writers_leave_the_catalog_complete(tmp_path):
    with mp.get_context("spawn").Pool(WRITERS) as pool:  # separate processes, separate connections
        assert sorted(pool.map(writer, [(tmp_path, w) for w in range(WRITERS)])) == list(range(WRITERS))
    rows = catalog.read_catalog(tmp_path)
    n = WRITERS * RUNS_EACH
    assert set(rows) == {fake_run_id(i) for i in range(n)}
    assert sum(r["status"] == "failed" for r in rows.values()) == n // 5
    failed = rows[fake_run_id(5)]
    assert failed["error"].startswith("RuntimeError") and failed["config"]["loss.name"] == "ContrastiveLoss"
    assert rows[fake_run_id(1)]["metrics"]["map_at_r"] == pytest.approx(0.51)


def test_rebuild_after_deletion_equals_the_original(tmp_path):
    for i in range(20):
        write_fake_run(tmp_path, i, "failed" if i == 3 else "completed", index=True)
    original = catalog.read_catalog(tmp_path)
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"index.sqlite{suffix}").unlink(missing_ok=True)
    assert catalog.read_catalog(tmp_path) is None
    assert catalog.rebuild(tmp_path) == 20
    assert catalog.read_catalog(tmp_path) == original


def test_a_finished_run_is_upserted_with_its_config_and_metrics(tmp_path, tiny):
    cfg = resolve(tiny, {"train": {"epochs": 1}})
    result = run_one(cfg, tmp_path, progress=False)
    assert result["status"] == "completed"
    row = catalog.read_catalog(tmp_path)[result["run_id"]]
    assert row["status"] == "completed" and row["config"]["embedding.dim"] == 8
    assert row["metrics"]["map_at_r"] == pytest.approx(result["metrics"]["map_at_r"])
    assert row["h5_stamp"] == store.file_stamp(store.run_path(tmp_path, result["run_id"]))


def test_a_relaunch_reads_fresh_catalog_rows_instead_of_run_h5(tmp_path, tiny, monkeypatch):
    runs = [resolve(tiny, {"seed": s}) for s in range(4)]
    final = {s: {"embeddings": np.zeros((4, 8), np.float32), "labels": np.arange(4), "index": np.arange(4)}
             for s in ("train", "test")}
    for cfg in runs[:3]:
        store.write_run(store.run_path(tmp_path, run_id(cfg)),
                        store.RunRecord(run_id(cfg), cfg.to_dict(), "completed", final=final))
    catalog.rebuild(tmp_path)
    real_file = h5py.File

    def no_hdf5(*args, **kwargs):
        raise AssertionError("opened a run.h5 although its catalog row is fresh")
    monkeypatch.setattr(h5py, "File", no_hdf5)
    assert run_statuses(runs, tmp_path) == ["completed", "completed", "completed", None]
    assert pending(runs, tmp_path) == [3]
    monkeypatch.setattr(h5py, "File", real_file)
    path = store.run_path(tmp_path, run_id(runs[1]))
    store.write_run(path, store.RunRecord(run_id(runs[1]), runs[1].to_dict(), "failed"))  # rewritten: row stale
    assert run_statuses(runs, tmp_path)[1] == "failed" and pending(runs, tmp_path, retry_failed=True) == [1, 3]
