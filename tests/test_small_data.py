"""Smoke test of benchmarks/small_data.py: every method's code path on a few steps of digits."""

import csv
import importlib.util

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
    assert "| digits | 5 | pca+lda | 2 |" in table and "±" in table
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
