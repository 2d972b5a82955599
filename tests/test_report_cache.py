"""The report's caches: per-run rows, projections, TensorBoard sessions and drawn slides are reused
on unchanged results and redone for a run that is added or rerun."""

import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from analysis import baselines, embeddings, load, render, report, tensorboard
from runner import store
from tests.fixtures.fake_runs import fake_record
from tests.test_analysis import grid_configs, shared_grid


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def rerun(path, cfg, shuffle_seed=0):
    """Rewrite a run.h5 as a rerun would: same run_id, other final embeddings (so other metrics)."""
    rec = fake_record(cfg)
    rng = np.random.default_rng(shuffle_seed)
    for split in rec.final.values():
        split["embeddings"] = rng.permutation(split["embeddings"])  # rows no longer match their labels
    time.sleep(0.01)  # a new mtime even on coarse clocks
    store.write_run(path, rec)


@pytest.fixture
def results(tmp_path_factory, tmp_path):
    out = tmp_path / "results"
    shutil.copytree(shared_grid(tmp_path_factory), out)
    return out


def forbid(monkeypatch, module, name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{module.__name__}.{name} called on a warm cache")
    monkeypatch.setattr(module, name, fail)


def test_warm_load_opens_no_run_file_and_equals_the_cold_one(results, tmp_path, monkeypatch):
    cold = quiet(load.load_runs, results, cache_dir=tmp_path / "cache")
    for name in ("read_attrs", "read_final", "run_status", "read_history", "read_data_info"):
        forbid(monkeypatch, load.store, name)
    warm = quiet(load.load_runs, results, cache_dir=tmp_path / "cache")
    assert warm.config_columns == cold.config_columns and warm.skipped == cold.skipped
    cols = ["run_id", "status", "config_label", "config_id", "n_steps", *store.METRIC_NAMES]
    assert warm.table[cols].equals(cold.table[cols])


def test_a_rerun_or_added_run_is_read_again(results, tmp_path):
    cache = tmp_path / "cache"
    before = quiet(load.load_runs, results, cache_dir=cache).table.set_index("run_id")
    cfg = grid_configs()[0]
    rid = fake_record(cfg).run_id
    rerun(store.run_path(results, rid), cfg)
    added = grid_configs(seeds=(5,))[0]
    store.write_run(store.run_path(results, fake_record(added).run_id), fake_record(added))
    after = quiet(load.load_runs, results, cache_dir=cache).table.set_index("run_id")
    fresh = quiet(load.load_runs, results).table.set_index("run_id")  # no cache at all
    assert len(after) == len(before) + 1 and fake_record(added).run_id in after.index
    assert after.loc[rid, "map_at_r"] < before.loc[rid, "map_at_r"]  # shuffled embeddings score worse
    assert after["map_at_r"].equals(fresh["map_at_r"])


def test_a_rerun_run_is_projected_again(results, tmp_path, monkeypatch):
    cfg = grid_configs()[2]  # d=8: t-SNE is fitted
    path = store.run_path(results, fake_record(cfg).run_id)
    first = embeddings.project_run(str(path), "tsne", max_points=80, cache_dir=tmp_path)
    calls = []
    real = embeddings.project
    monkeypatch.setattr(embeddings, "project", lambda *a, **k: calls.append(1) or real(*a, **k))
    embeddings.project_run(str(path), "tsne", max_points=80, cache_dir=tmp_path)
    assert calls == []
    rerun(path, cfg)
    second = embeddings.project_run(str(path), "tsne", max_points=80, cache_dir=tmp_path)
    assert len(calls) == len(first) == len(second)


def test_a_warm_report_fits_and_draws_nothing_and_a_rerun_redraws(results, tmp_path, monkeypatch):
    opts = report.Options(methods=("tsne",), max_points=120)
    out = tmp_path / "report"
    cold = quiet(report.build_report, results, out, opts)
    assert cold["timings"]["slides_redrawn"] and (results / "report_cache" / "rows-checked60.json").exists()
    pdf_bytes = (out / "report.pdf").read_bytes()
    for module, name in ((embeddings, "project"), (baselines, "baselines_for_split"), (render, "write_slides"),
                         (tensorboard, "_write_session")):
        forbid(monkeypatch, module, name)
    warm = quiet(report.build_report, results, out, opts)
    assert not warm["timings"]["slides_redrawn"] and warm["slides"] == cold["slides"]
    assert (out / "report.pdf").read_bytes() == pdf_bytes and len(warm["figures"]) == len(cold["figures"])
    monkeypatch.undo()
    written = session_files(out)
    cfg = grid_configs()[0]
    rerun(store.run_path(results, fake_record(cfg).run_id), cfg)
    again = quiet(report.build_report, results, out, opts)
    rewritten = {rid for rid, files in session_files(out).items() if files != written.get(rid)}
    assert again["timings"]["slides_redrawn"] and rewritten == {fake_record(cfg).run_id}


def session_files(out: Path) -> dict:
    """run_id -> {file: (mtime_ns, size)} of its HParams session (TensorBoard may write it in another process)."""
    return {folder.name: {f.name: (f.stat().st_mtime_ns, f.stat().st_size) for f in folder.iterdir()}
            for folder in (out / "tensorboard" / "hparams").iterdir() if folder.is_dir()}


def test_tsne_gives_the_same_map_on_one_core_or_two():
    """The report fits t-SNE on the cores another process leaves it; the cache key has no thread count."""
    emb = np.random.default_rng(0).normal(size=(300, 8))
    assert np.array_equal(embeddings.project(emb, "tsne", threads=1), embeddings.project(emb, "tsne", threads=2))
