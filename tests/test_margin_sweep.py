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
from analysis.synthetic import write_grid
from runner.spec import expand_grid, load_spec
from tests.conftest import ROOT

MARGINS = [0.1, 0.3, 0.5]


@pytest.fixture(scope="module")
def margin_table(tmp_path_factory):
    """jobs/margins.yaml cut to 3 margins × 2 seeds (12 runs), as synthetic run.h5 files."""
    runs = [r for r in expand_grid(load_spec(ROOT / "jobs/margins.yaml", ["train.epochs=2"]))
            if r.seed in (0, 1) and r.loss.margin in MARGINS]
    out = tmp_path_factory.mktemp("margins")
    write_grid(out, runs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tables.config_table(load_runs(out))


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
