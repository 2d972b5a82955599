"""Smoke test of benchmarks/small_data.py: every method's code path on a few steps of digits."""

import csv
import importlib.util

import numpy as np
import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("small_data", ROOT / "benchmarks" / "small_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_data_table(bench, tmp_path, capsys):
    argv = ["--datasets", "digits", "--n-per-class", "5", "--seeds", "0", "1", "--min-steps", "3",
            "--max-steps", "3", "--methods", "recipe", "bare", "raw", "pca+lda", "pca+nca",
            "--variants", "dbl", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "rows.csv")))
    assert {r["method"] for r in rows} == {"recipe", "bare", "raw", "pca+lda", "pca+nca", "dbl"}
    assert len(rows) == 12
    recipe = [r for r in rows if r["method"] == "recipe"]
    assert all(int(r["steps"]) == 3 for r in recipe)
    assert all(0.0 <= float(r["knn1"]) <= 1.0 and 0.0 <= float(r["map_at_r"]) <= 1.0 for r in rows)
    table = (tmp_path / "table.md").read_text()
    assert "| digits | stratified | 5 | pca+lda | 2 |" in table and "±" in table
    assert "MAP@R" in capsys.readouterr().out
    # a rerun finds every row done and trains nothing
    assert bench.main(argv) == 0
    assert len(list(csv.DictReader(open(tmp_path / "rows.csv")))) == 12


def test_step_floor(bench):
    args = bench.parse_args(["--min-steps", "300", "--max-steps", "0"])
    cfg = bench.recipe_config("digits", 10, 0, None, args)
    assert bench.scaled_epochs(cfg, 1, args) == 300  # 100 images: one P×K batch per epoch
    assert bench.scaled_epochs(cfg, 11, args) == 30  # all digits: the spec's 30 epochs already give 330 steps
    assert bench.scaled_epochs(cfg, 1, args, floor=False) == 30


def test_class_disjoint_rows_are_leave_one_out_on_the_unseen_classes(bench, tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.neighbors import NearestNeighbors
    argv = ["--split", "class_disjoint", "--datasets", "digits", "--n-per-class", "5", "--seeds", "0",
            "--min-steps", "3", "--max-steps", "3", "--methods", "recipe", "raw", "pca", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "rows.csv"))}
    assert {r["split"] for r in rows.values()} == {"class_disjoint"}
    for r in rows.values():
        assert all(0.0 <= float(r[k]) <= 1.0 for k in ("knn1", "p_at_1", "recall_at_1", "map_at_r", "nmi"))
    # raw pixels need no fitting: recompute by hand, each image of digits 5-9 against all the others
    x, y = load_digits(return_X_y=True)
    x, y = np.round(x[y >= 5] * (255.0 / 16.0)) / 255.0, y[y >= 5]  # the runner's uint8 pixels, in [0, 1]
    nn = NearestNeighbors(n_neighbors=len(x) - 1).fit(x).kneighbors(None, return_distance=False)
    same = y[nn] == y[:, None]
    big_r = np.bincount(y)[y] - 1
    hits = same & (np.arange(1, same.shape[1] + 1) <= big_r[:, None])
    precision = np.cumsum(hits, 1) / np.arange(1, hits.shape[1] + 1)
    assert float(rows["raw"]["p_at_1"]) == pytest.approx(same[:, 0].mean(), abs=1e-9)
    assert float(rows["raw"]["map_at_r"]) == pytest.approx(np.mean((precision * hits).sum(1) / big_r), abs=1e-6)  # float32 pixels
    assert "| digits | class_disjoint | 5 | raw | 1 |" in (tmp_path / "table.md").read_text()
