"""The margin-sweep figure (analysis.curves.sweep_figure) on a grid that sweeps loss.margin.

The figure's content is read back from the matplotlib objects: one errorbar line per loss,
x = the swept margins, y = the configuration table's means, error bars = its 95% CIs.
"""

import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis import curves, tables
from analysis.load import load_runs
from tests.fixtures.fake_runs import write_grid
from runner.spec import expand_grid, load_spec
from tests.conftest import ROOT

MARGINS = [0.1, 0.3, 0.5]


@pytest.fixture(scope="module")
def margin_runs(tmp_path_factory):
    """jobs/margins.yaml cut to 3 margins × 2 seeds (12 runs), as synthetic run.h5 files."""
    runs = [r for r in expand_grid(load_spec(ROOT / "jobs/margins.yaml", ["train.epochs=2"]))
            if r.seed in (0, 1) and r.loss.margin in MARGINS]
    out = tmp_path_factory.mktemp("margins")
    write_grid(out, runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_runs(out)


@pytest.fixture(scope="module")
def margin_table(margin_runs):
    return tables.config_table(margin_runs)


def test_paired_triplet_vs_contrastive_never_pairs_across_margins(margin_runs):
    """Margins swept for both losses: each (contrastive margin, triplet margin) is its own comparison,
    its pairs one per seed, each pair two runs that differ only in the loss."""
    p = tables.paired_comparisons(margin_runs, metrics=("knn1",))
    rows = p[(p["comparison"] == "triplet vs contrastive") & (p["stratum"] == "all")]
    assert len(rows) == len(MARGINS) ** 2 and (rows["n_pairs"] == 2).all()
    t = margin_runs.table
    for _, r in rows.iterrows():
        m_a, m_b = (float(x.split("m=")[1].split()[0].rstrip(")")) for x in (r["a"], r["b"]))
        for loss, m, mean in (("ContrastiveLoss", m_a, r["mean_a"]), ("TripletMarginLoss", m_b, r["mean_b"])):
            runs = t[(t["loss.name"] == loss) & np.isclose(t["loss.margin"], m)]
            assert mean == pytest.approx(runs["knn1"].mean())  # the pairs are exactly those runs


def test_margin_sweep_figure_draws_a_line_per_loss_through_the_table(margin_table):
    t = margin_table
    assert (t["knn1_ci"] > 0).all()  # 2 seeds per point: real error bars to check
    fig = Figure(figsize=(8, 6))
    axes = curves.sweep_figure(fig, t)
    assert axes.shape == (2, 1)  # knn1 and map_at_r over the margin; the dim is not swept here
    legend = axes[0, 0].get_legend_handles_labels()[1]
    assert [label.split(" · ")[0] for label in legend] == ["Contrastive", "Triplet"]
    for ax, metric in zip(axes[:, 0], ("knn1", "map_at_r")):
        assert ax.get_xlabel() == "margin" and len(ax.containers) == 2  # one ErrorbarContainer per loss
        for bar, loss in zip(ax.containers, ("ContrastiveLoss", "TripletMarginLoss")):
            line, _, (vertical,) = bar.lines
            rows = t[t["loss.name"] == loss].sort_values("loss.margin")
            assert line.get_marker() == "o"
            np.testing.assert_allclose(np.asarray(line.get_xdata(), float), MARGINS)
            np.testing.assert_allclose(np.asarray(line.get_ydata(), float), rows[f"{metric}_mean"])
            half = np.array([seg[1, 1] - seg[0, 1] for seg in vertical.get_segments()]) / 2
            np.testing.assert_allclose(half, rows[f"{metric}_ci"].to_numpy(float), rtol=1e-6)
