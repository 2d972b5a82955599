"""A `runner.tune` search in the report: the best trials, the validation metric against each
searched key, where ASHA stopped trials, and the chosen trial's test metrics.

A search is a results directory holding tune/<name>/results.csv (runner.launch.tune.results:
one row per trial, best first by the validation metric; its runs under runs/<run_id>/). The
trial is chosen on the validation metric only; the test split is read once, for the chosen
trial, and the slides say so. Labels show floats to 3 significant digits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from scipy import stats

from analysis.load import METRIC_LABELS, label_part, short_value
from analysis.render import Slide, table_figure

TOP_TRIALS = 9
TEST_METRICS = ("map_at_r", "knn1", "p_at_1", "recall_at_1", "nmi")
STATUS_COLOURS = {"completed": "#1f77b4", "stopped": "#ff7f0e"}


@dataclass
class Search:
    name: str
    table: pd.DataFrame
    """results.csv: trial, run_id, the searched keys, the validation metric, test_knn1, epochs, status."""
    metric: str
    """The validation metric the trials were ranked on (val_map_at_r, val_knn1)."""
    keys: list
    """Searched config keys (dotted), in the order of the search space."""
    runs_root: Path
    """The results directory holding runs/<run_id>/ of the trials."""

    @property
    def best(self) -> pd.Series:
        ok = self.table[np.isfinite(self.table[self.metric].astype(float))]
        return ok.iloc[0] if len(ok) else self.table.iloc[0]


def find_search(root: str | Path) -> Optional[Search]:
    """The search under root (root/tune/<name>/results.csv, or root = tune/<name>); None when root holds none."""
    root = Path(root)
    files = [root / "results.csv"] if (root / "results.csv").is_file() else sorted(root.glob("tune/*/results.csv"))
    if not files:
        return None
    path = max(files, key=lambda f: f.stat().st_mtime)
    if len(files) > 1:
        warnings.warn(f"{len(files)} searches under {root}: the report shows the newest, {path.parent.name}", stacklevel=2)
    table = pd.read_csv(path)
    metric = next((c for c in table.columns if c.startswith("val_")), None)
    if metric is None or "run_id" not in table:
        return None
    table = table.sort_values(metric, ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    keys = [c for c in table.columns if "." in c]
    return Search(path.parent.name, table, metric, keys, path.parent.parent.parent)


def metric_label(name: str) -> str:
    """val_map_at_r -> 'val MAP@R', test_knn1 -> 'test kNN-1'."""
    split, _, base = name.partition("_")
    return f"{split} {METRIC_LABELS.get(base, base)}" if split in ("val", "test") else METRIC_LABELS.get(name, name)


def _key_name(key: str) -> str:
    """Column and axis name of a searched key: loss, miner, margin, dim, or the key's last part (lr)."""
    return {"loss.name": "loss", "miner.name": "miner", "loss.margin": "margin", "embedding.dim": "dim"}.get(
        key, key.split(".")[-1])


def _numeric(values: pd.Series) -> Optional[np.ndarray]:
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return x if np.isfinite(x).all() else None


def trials_slide(search: Search) -> Slide:
    t = search.table.head(TOP_TRIALS)
    disp = pd.DataFrame({"trial": [str(x) for x in t["trial"]],
                         **{_key_name(k): [short_value(k, v) for v in t[k]] for k in search.keys},
                         metric_label(search.metric): [f"{v:.3f}" for v in t[search.metric]],
                         "test kNN-1": [f"{v:.3f}" for v in t.get("test_knn1", [np.nan] * len(t))],
                         "epochs": t["epochs"].astype(int), "status": t["status"]})
    best, n = search.best, len(search.table)
    answer = (f"Best of {n} trials: " + " · ".join(label_part(k, best[k]) for k in search.keys)
              + f" ({metric_label(search.metric)} {best[search.metric]:.3f})")
    return Slide(f"Search {search.name}: the best trials by {metric_label(search.metric)}", "trials",
                 lambda fig: table_figure(fig, disp, fontsize=15, bold_rows=[0]), answer,
                 notes=f"All {n} trials in tune/{search.name}/results.csv; the best trial's config in best.yaml. "
                       "Trials are ranked on the validation split; the test split is not used to choose.")


def _trend(x: np.ndarray, y: np.ndarray) -> str:
    ok = np.isfinite(y)
    if ok.sum() < 4 or np.unique(x[ok]).size < 3:
        return ""
    rho, p = stats.spearmanr(x[ok], y[ok])
    return f"ρ = {rho:+.2f}" + (" (p < 0.05)" if p < 0.05 else "")


def hyperparameter_slide(search: Search) -> Slide:
    t, m = search.table, search.metric
    keys = search.keys
    trends = {}

    def draw(fig):
        cols = min(4, max(1, len(keys)))
        rows = -(-len(keys) // cols) or 1
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat[len(keys):]:
            ax.axis("off")
        for ax, key in zip(axes.flat, keys):
            x = _numeric(t[key])
            labels = None
            if x is None:  # a choice of names: one position per value
                labels = sorted(t[key].astype(str).unique())
                x = t[key].astype(str).map({v: i for i, v in enumerate(labels)}).to_numpy(dtype=float)
            for status, g in t.groupby("status"):
                ax.scatter(x[g.index], g[m], s=45, label=status, color=STATUS_COLOURS.get(status, "grey"), alpha=0.85)
            ax.scatter([x[0]], [t[m].iloc[0]], s=260, marker="*", color="gold", edgecolor="k", zorder=3, label="best")
            if labels is not None:
                ax.set_xticks(range(len(labels)), [short_value(key, v) for v in labels], rotation=20)
            elif x.min() > 0 and x.max() / x.min() >= 20:
                ax.set_xscale("log")
            ax.set_xlabel(_key_name(key))
            ax.set_ylabel(metric_label(m))
            ax.grid(alpha=0.3)
        axes.flat[0].legend(fontsize="x-small", loc="lower right")
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.95, wspace=0.3, hspace=0.45)

    done = t[t["status"] == "completed"]
    for key in keys:
        x = _numeric(done[key])
        if x is not None:
            trends[key] = _trend(x, done[m].to_numpy(dtype=float))
    said = [f"{_key_name(k)} {v}" for k, v in trends.items() if v]
    answer = ("Rank correlation with " + metric_label(m) + " over completed trials: " + ", ".join(said)) if said else \
        f"{len(done)} completed trials: too few to read a trend per key"
    return Slide(f"{metric_label(m)} against each searched hyperparameter", "hyperparameters", draw, answer,
                 notes="Orange: trials ASHA stopped early (their metric is at the epoch they reached). Star: the best trial.")


def asha_slide(search: Search, max_epochs: int) -> Slide:
    t = search.table
    stopped = t[t["status"] == "stopped"]

    def draw(fig):
        ax = fig.subplots()
        colours = [STATUS_COLOURS.get(s, "grey") for s in t["status"]]
        ax.bar(range(len(t)), t["epochs"], color=colours)
        ax.axhline(max_epochs, ls="--", color="k", lw=1)
        ax.text(-0.5, max_epochs, f" max {max_epochs} epochs", ha="left", va="bottom", fontsize="small")
        ax.set_ylim(0, max_epochs * 1.2)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"trials, best first by {metric_label(search.metric)}")
        ax.set_ylabel("epochs reached")
        ax.set_xticks(range(len(t)), [str(x)[-5:] for x in t["trial"]], rotation=90, fontsize="x-small")
        for status, colour in STATUS_COLOURS.items():
            ax.bar([0], [0], color=colour, label=status)
        ax.legend(fontsize="small", loc="upper right", ncol=2)
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.2, top=0.95)

    run, full = int(t["epochs"].sum()), len(t) * max_epochs
    where = ", ".join(f"{n} at epoch {e}" for e, n in stopped["epochs"].value_counts().sort_index().items())
    answer = (f"ASHA stopped {len(stopped)} of {len(t)} trials" + (f" ({where})" if where else "")
              + f"; {run} epochs run of {full} without early stopping ({1 - run / full:.0%} saved)" if full else "")
    return Slide("Where ASHA stopped trials", "asha", draw, answer)


def best_test_slide(search: Search, runs_table: pd.DataFrame) -> Slide:
    best = search.best
    row = runs_table[runs_table["run_id"] == best["run_id"]]
    values = {k: float(row[k].iloc[0]) for k in TEST_METRICS if len(row) and k in row}
    if not values and np.isfinite(best.get("test_knn1", np.nan)):
        values = {"knn1": float(best["test_knn1"])}
    disp = pd.DataFrame({"": [metric_label(search.metric)] + [f"test {METRIC_LABELS[k]}" for k in values],
                         "chosen trial": [f"{best[search.metric]:.3f}"] + [f"{v:.3f}" for v in values.values()],
                         "role": ["chose the trial"] + ["measured once, after choosing"] * len(values)})
    head = next(iter(values.items()), None)
    answer = (f"Chosen on validation ({metric_label(search.metric)} {best[search.metric]:.3f}); its test "
              + (f"{METRIC_LABELS[head[0]]} is {head[1]:.3f}" if head else "metrics are not stored")
              + " (the test split played no part in the choice)")
    return Slide("The chosen configuration on the test split (chosen on validation)", "best_test",
                 lambda fig: table_figure(fig, disp, fontsize=16), answer,
                 notes="Validation: the split runner.tune holds out of training (data.val_fraction). "
                       "Other trials' test metrics are in tables/runs.csv; choosing among them would be a test-set choice.")


def summary_bullets(search: Search, runs_table: pd.DataFrame, skipped: int) -> list[str]:
    t = search.table
    counts = t["status"].value_counts()
    data = ", ".join(sorted(runs_table["data.name"].astype(str).unique())) if "data.name" in runs_table else "?"
    return [f"Search {search.name} on {data}: {len(t)} trials ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
            f"{len(runs_table)} trial runs loaded, {skipped} files skipped",
            "Searched: " + ", ".join(_key_name(k) for k in search.keys) + f"; ranked on {metric_label(search.metric)}"]
