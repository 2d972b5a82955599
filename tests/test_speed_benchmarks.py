"""The eval-share and fixed-cost benchmarks run and print what docs/performance.md quotes."""

import re

import pytest

from tests.test_benchmarks import load_bench


def test_eval_share_small_set_compares_and_checks_identity(capsys):
    load_bench("eval_share").main(["--n", "600", "--epochs", "3", "--eval-every", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert "final embeddings and metrics identical" in out
    rows = {line.split()[0]: line for line in out.splitlines() if re.match(r"\s+[12] ", line)}
    assert "[0, 1, 2, 3]" in rows["1"] and "[0, 2, 3]" in rows["2"]


def test_eval_share_projection_counts_the_evaluations(capsys):
    load_bench("eval_share").main(["--n", "600", "--project", "10", "--eval-every", "5", "--threads", "1"])
    out = capsys.readouterr().out
    counts = [int(m) for m in re.findall(r"(\d+) evaluations", out)]
    assert counts == [11, 3]  # every epoch of 10 and epoch 0; epochs 0, 5, 10


@pytest.mark.slow
def test_fixed_cost_prints_per_run_costs(capsys):
    assert load_bench("fixed_cost").main(["--runs", "2", "--per-process", "2"]) == 0
    out = capsys.readouterr().out
    assert "runs-per-task  1" in out and "runs-per-task  2" in out and "beyond the first" in out
