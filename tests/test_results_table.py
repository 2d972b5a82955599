"""analysis.load_results and python -m analysis.table: read from the catalog, mean ± t CI per group."""

import csv
import io
import json
import math
import sqlite3

import h5py
import numpy as np
import pytest
from scipy import stats

from analysis import load_results
from analysis import table as table_cmd
from runner import store
from runner.launch.run import run_one
from runner.spec import resolve
from runner.store import catalog
from tests.fake_runs import fake_config, fake_run_id, write_fake_run

N = 48
FAILED = {0, 9, 18}


@pytest.fixture
def fake_dir(tmp_path):
    for i in range(N):
        write_fake_run(tmp_path, i, "failed" if i in FAILED else "completed")
    return tmp_path


def expected_groups(where=lambda cfg: True) -> dict[tuple, list[float]]:
    """(loss.name, embedding.dim) -> map_at_r of the completed fake runs, from fake_runs' own definitions."""
    groups = {}
    for i in range(N):
        cfg = fake_config(i)
        if i not in FAILED and where(cfg):
            groups.setdefault((cfg["loss"]["name"], cfg["embedding"]["dim"]), []).append(0.5 + (i % 10) / 100)
    return groups


def t_half_width(values: list[float]) -> float:
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    return (high - low) / 2


def test_load_results_one_row_per_run_with_config_metrics_and_provenance(fake_dir):
    frame = load_results(fake_dir)
    assert len(frame) == N and frame["run_id"].is_unique
    row = frame.set_index("run_id").loc[fake_run_id(5)]
    cfg = fake_config(5)
    assert row["loss.name"] == cfg["loss"]["name"] == "ContrastiveLoss"
    assert row["embedding.dim"] == cfg["embedding"]["dim"] == 32
    assert row["seed"] == 0
    assert row["map_at_r"] == pytest.approx(0.55) and row["host"] == "node01" and row["git_rev"] == "abc123"
    assert row["train_time_s"] == 55.0 and row["status"] == "completed"
    assert json.loads(row["loss.params"]) == {}  # a params mapping is one JSON cell
    failed = frame.set_index("run_id").loc[fake_run_id(9)]
    assert failed["status"] == "failed" and math.isnan(failed["map_at_r"]) and failed["error"].startswith("Runtime")
    assert {"loss.name", "embedding.dim", "seed"} <= set(frame.attrs["config_columns"])
    assert set(frame.attrs["metric_columns"]) == {"map_at_r", "knn1"}


def test_a_fresh_catalog_answers_without_opening_hdf5(fake_dir, monkeypatch):
    first = load_results(fake_dir)  # builds index.sqlite from the files
    assert catalog.catalog_path(fake_dir).exists()

    def no_hdf5(*args, **kwargs):
        raise AssertionError("opened a run.h5 although the catalog is fresh")
    monkeypatch.setattr(h5py, "File", no_hdf5)
    again = load_results(fake_dir)
    assert again.equals(first)


def test_a_rewritten_or_deleted_run_h5_is_read_again_or_left_out(fake_dir):
    load_results(fake_dir)
    write_fake_run(fake_dir, 9, "completed")  # the failed run 9 rerun and completed: newer file
    store.run_path(fake_dir, fake_run_id(1)).unlink()
    frame = load_results(fake_dir).set_index("run_id")
    assert frame.loc[fake_run_id(9), "status"] == "completed"
    assert frame.loc[fake_run_id(9), "map_at_r"] == pytest.approx(0.59)
    assert fake_run_id(1) not in frame.index and len(frame) == N - 1
    assert catalog.read_catalog(fake_dir)[fake_run_id(9)]["status"] == "completed"  # upserted


def test_a_catalog_written_before_the_protocol_column_gets_it_and_is_refreshed(fake_dir):
    rows = [catalog.row_from_attrs(store.read_attrs(store.run_path(fake_dir, fake_run_id(i))), 0.0)[:-1]
            for i in range(N)]
    old_columns = catalog.COLUMNS[:-1]
    con = sqlite3.connect(catalog.catalog_path(fake_dir))
    con.execute(catalog.SCHEMA.replace(",\n  protocol TEXT", ""))
    con.executemany(f"INSERT INTO runs ({','.join(old_columns)}) VALUES ({','.join('?' * len(old_columns))})", rows)
    con.commit()
    con.close()
    assert all(r["h5_stamp"] is None for r in catalog.read_catalog(fake_dir).values())  # migrated: all stale
    frame = load_results(fake_dir)
    assert len(frame) == N and "eval_protocol" in frame


def run_table(capsys, *argv) -> tuple[int, str, str]:
    code = table_cmd.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_csv_has_mean_and_student_t_ci_per_group(fake_dir, capsys):
    code, out, _ = run_table(capsys, fake_dir, "--by", "loss.name,embedding.dim", "--metric", "map_at_r", "--csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    expected = expected_groups()
    assert len(rows) == len(expected)
    for row in rows:
        values = expected[(row["loss.name"], int(row["embedding.dim"]))]
        assert int(row["n"]) == len(values)
        assert float(row["mean"]) == pytest.approx(np.mean(values))
        assert float(row["ci95"]) == pytest.approx(t_half_width(values))
    dims = [int(r["embedding.dim"]) for r in rows if r["loss.name"] == "ArcFaceLoss"]
    assert dims == sorted(dims)  # numbers in numeric order


def test_markdown_with_where_parses_back(fake_dir, capsys):
    code, out, _ = run_table(capsys, fake_dir, "--by", "loss.name", "--where", "embedding.dim=16", "--md")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0] == "| loss.name | n | map_at_r (mean ± 95% CI) |" and set(lines[1]) <= set("| -")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    expected = {}
    for (loss, _), values in expected_groups(lambda cfg: cfg["embedding"]["dim"] == 16).items():
        expected.setdefault(loss, []).extend(values)
    assert {c[0] for c in cells} == set(expected)
    for loss, n, shown in cells:
        mean, half = (float(x) for x in shown.split(" ± "))
        assert int(n) == len(expected[loss])
        assert mean == pytest.approx(np.mean(expected[loss]), abs=5e-5)
        assert half == pytest.approx(t_half_width(expected[loss]), abs=5e-5)


def test_terminal_table_defaults_to_the_varying_keys(fake_dir, capsys):
    code, out, _ = run_table(capsys, fake_dir)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["embedding.dim", "loss.name", "n"]  # seed is a repeat, not a key
    assert len(lines) == 1 + len(expected_groups()) + 1
    assert lines[-1].startswith(f"{N - len(FAILED)} completed runs with map_at_r in 12 groups, of {N}")


@pytest.mark.parametrize("argv, named, close", [
    (["--by", "loss.nme"], "--by: got 'loss.nme'", "loss.name"),
    (["--metric", "map_r"], "--metric: got 'map_r'", "map_at_r"),
    (["--where", "embeding.dim=8"], "--where: got 'embeding.dim'", "embedding.dim"),
])
def test_a_bad_key_is_one_line_with_close_matches_and_exit_2(fake_dir, capsys, argv, named, close):
    code, out, err = run_table(capsys, fake_dir, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and named in err and close in err


def test_real_runs_table_equals_their_stored_metrics(tmp_path, tiny, capsys):
    results = [run_one(resolve(tiny, {"train": {"epochs": 1}, "seed": seed}), tmp_path, progress=False)
               for seed in (0, 1)]
    assert [r["status"] for r in results] == ["completed", "completed"]
    capsys.readouterr()  # the runs' own epoch lines
    frame = load_results(tmp_path).set_index("run_id")
    for r in results:
        attrs = store.read_attrs(store.run_path(tmp_path, r["run_id"]))
        assert frame.loc[r["run_id"], "map_at_r"] == pytest.approx(attrs["metrics"]["map_at_r"])
        assert frame.loc[r["run_id"], "eval_protocol"] == attrs["eval_protocol"]
        assert frame.loc[r["run_id"], "git_rev"] == attrs.get("git_rev")
    code, out, _ = run_table(capsys, tmp_path, "--by", "embedding.dim", "--csv")
    row, = list(csv.DictReader(io.StringIO(out)))
    values = [r["metrics"]["map_at_r"] for r in results]
    assert code == 0 and row["embedding.dim"] == "8" and int(row["n"]) == 2
    assert float(row["mean"]) == pytest.approx(np.mean(values))
    assert float(row["ci95"]) == pytest.approx(t_half_width(values))
