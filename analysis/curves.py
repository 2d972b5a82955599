"""Loss evolution, loss-independent diagnostics and sweeps (accuracy vs margin / dim).

Every figure function draws into a given matplotlib Figure or SubFigure, so the same
code makes the stand-alone PNG (figures/) and the slide page (report.pdf).
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd

from analysis.load import METRIC_LABELS, Runs, label_part, load_history, short_loss_name

LOSS_NOTE = ("Raw loss values of different losses are not comparable (different formulas and margins): "
             "compare each loss with itself; the active fraction and distances are loss-independent.")
MAX_CURVES = 8


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Moving average that keeps the length (edges use the available points)."""
    y = np.asarray(y, dtype=float)
    if window <= 1 or len(y) < 3:
        return y
    ok = np.isfinite(y)
    kernel = np.ones(window)
    num = np.convolve(np.where(ok, y, 0.0), kernel, mode="same")
    den = np.convolve(ok.astype(float), kernel, mode="same")
    return num / np.maximum(den, 1)


def pick_curve_configs(runs: Runs, dim=None, max_configs: int = MAX_CURVES) -> pd.DataFrame:
    """Runs (completed and stopped) of up to max_configs configurations at one embedding dim.

    The dim is that of the best configuration by MAP@R unless given; every loss family
    keeps at least its best configuration when there are more than max_configs.
    """
    t = runs.table
    if "embedding.dim" in t and t["embedding.dim"].nunique() > 1:
        if dim is None:
            done = t[t["status"] == "completed"]
            scores = done.groupby("config_id")["map_at_r"].mean()
            dim = done.loc[done["config_id"] == scores.idxmax(), "embedding.dim"].iloc[0] if len(scores) else t["embedding.dim"].iloc[0]
        t = t[t["embedding.dim"] == dim]
    score = t.groupby("config_id")["map_at_r"].mean().sort_values(ascending=False)
    best_per_family = t.loc[t.groupby("loss_family")["map_at_r"].idxmax(), "config_id"].tolist() if len(t) else []
    chosen = list(dict.fromkeys(best_per_family + score.index.tolist()))[:max_configs]
    return t[t["config_id"].isin(chosen)]


def _config_colours(labels: list[str]) -> dict:
    cmap = matplotlib.colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(sorted(labels))}


def loss_figure(fig, runs: Runs, dim=None, histories: dict | None = None):
    """Loss per step (one panel per loss family) + active fraction + positive/negative distances."""
    sel = pick_curve_configs(runs, dim)
    histories = histories if histories is not None else {p: load_history(p) for p in sel["path"]}
    families = sorted(sel["loss_family"].unique())
    axes = fig.subplots(1, len(families) + 2, squeeze=False)[0]
    colours = _config_colours(sel["config_label"].unique().tolist())
    widths = {lab: 4.0 - 2.5 * i / max(1, len(colours) - 1) for i, lab in enumerate(sorted(colours))}
    for (label, status), group in sel.groupby(["config_label", "status"]):
        hs = [histories[p] for p in group["path"] if p in histories and len(histories[p])]
        if not hs:
            continue
        colour, family = colours[label], group["loss_family"].iloc[0]
        # later lines thinner, so identical curves (e.g. a miner that picks the loss's own pairs) stay visible
        style = dict(color=colour, lw=widths[label]) if status == "completed" else dict(color=colour, lw=1.0, ls="--")
        n = min(len(h) for h in hs) if status == "completed" else max(len(h) for h in hs)
        window = max(1, n // 40)
        name = label + ("" if status == "completed" else " (stopped)")
        for h in (hs if status != "completed" else [None]):
            steps_df = pd.concat([x.iloc[:n] for x in hs]).groupby(level=0).mean() if h is None else h
            x = steps_df["step"] if "step" in steps_df else np.arange(len(steps_df))
            axes[families.index(family)].plot(x, smooth(steps_df["loss"], window), label=name, **style)
            if "active_fraction" in steps_df:
                axes[-2].plot(x, smooth(steps_df["active_fraction"], window), **style)
            for key, ls in (("pos_distance", "-"), ("neg_distance", ":")):
                if key in steps_df:
                    axes[-1].plot(x, smooth(steps_df[key], window), **{**style, "ls": ls if status == "completed" else "--"})
            name = None
    for ax, fam in zip(axes, families):
        ax.set_title(f"{fam} loss (own scale)")
        ax.set_ylabel("loss")
    axes[-2].set_title("active pairs/triplets")
    axes[-2].set_ylabel("fraction with non-zero loss")
    axes[-1].set_title("distance: pos. — neg. ···")
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    handles = [h for ax in axes[:len(families)] for h in ax.get_legend_handles_labels()[0]]
    labels = [lab for ax in axes[:len(families)] for lab in ax.get_legend_handles_labels()[1]]
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize="small", frameon=False)
    dims = sel["embedding.dim"].unique() if "embedding.dim" in sel else []
    fig.suptitle(LOSS_NOTE + (f"  (d={dims[0]}; mean over seeds; dashed: stopped runs)" if len(dims) == 1 else ""),
                 fontsize="small", color="darkred", wrap=True)
    fig.subplots_adjust(bottom=0.3, top=0.8, wspace=0.4, left=0.06, right=0.98)
    return axes


def sweep_lines(table: pd.DataFrame, x: str) -> dict:
    """Configuration table rows grouped into lines along x: label -> rows sorted by x."""
    t = table[table["kind"] == "run"] if "kind" in table else table
    others = [c for c in ("loss.name", "miner.name", "loss.margin", "embedding.dim") if c in t and c != x]
    lines = {}
    for key, g in t.groupby([t[c].map(str) for c in others], sort=True):
        label = " · ".join(label_part(c, v) for c, v in zip(others, key if isinstance(key, tuple) else (key,))
                           if t[c].map(str).nunique() > 1 or c == "loss.name")
        lines[label] = g.sort_values(x)
    return lines


def is_swept(t: pd.DataFrame, x: str) -> bool:
    """x takes several values within one line (same loss, miner and the other key columns)."""
    return x in t and any(len(g) > 1 for g in sweep_lines(t, x).values())


def sweep_figure(fig, table: pd.DataFrame, baselines: pd.DataFrame | None = None, metrics=("knn1", "map_at_r")):
    """Rows: metrics; columns: accuracy vs embedding dim and/or vs margin; one line per loss (+miner)."""
    t = table[table["kind"] == "run"] if "kind" in table else table
    xs = [x for x in ("embedding.dim", "loss.margin") if is_swept(t, x)] or ["embedding.dim"]
    axes = fig.subplots(len(metrics), len(xs), squeeze=False)
    colours = {}
    for col, x in enumerate(xs):
        swept = is_swept(t, x)
        lines = sweep_lines(t, x) if swept else {}
        colours.update({k: v for k, v in _config_colours(list(lines)).items() if k not in colours})
        for row, m in enumerate(metrics):
            ax = axes[row, col]
            for label, g in lines.items():
                ax.errorbar(g[x].astype(float), g[f"{m}_mean"], yerr=g[f"{m}_ci"].fillna(0), marker="o", capsize=4,
                            lw=2, label=label, color=colours.get(label))
            if swept and x == "embedding.dim" and baselines is not None and not baselines.empty:
                for method, g in baselines[baselines["method"] != "raw"].groupby("label"):
                    ax.plot(g["dim"], g[m], ls="--", color="grey", alpha=0.7, marker=".")
                    ax.annotate(method, (g["dim"].iloc[-1], g[m].iloc[-1]), fontsize="x-small", color="dimgrey")
            if not swept:
                ax.text(0.5, 0.5, "neither the dim nor the margin is swept in this grid", ha="center", va="center",
                        transform=ax.transAxes, fontsize="small", color="dimgrey")
                ax.set_xticks([])
            if x == "embedding.dim" and swept:
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted(t[x].unique()), [str(v) for v in sorted(t[x].unique())])
            ax.set_ylabel(METRIC_LABELS[m])
            ax.set_xlabel("embedding dim" if x == "embedding.dim" else "margin")
            ax.grid(alpha=0.3)
        if lines:
            axes[0, col].legend(fontsize="x-small", loc="lower right")
    fixed = [x for x in ("embedding.dim", "loss.margin") if x not in xs and x in t]
    note = "".join(f"; {x} not swept: " + ", ".join(f"{short_loss_name(str(n))} {v}" for n, v in
                                                      t.groupby("loss.name")[x].agg(lambda s: "/".join(map(str, sorted(set(s))))).items())
                   for x in fixed if "loss.name" in t)
    fig.suptitle("mean ± 95% CI over seeds (grey dashed: baselines at the same dims)" + note, fontsize="small")
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.1, top=0.9, hspace=0.35, wspace=0.2)
    return axes
