"""Accuracy tables: mean ± 95% CI over seeds per configuration, baselines, paired tests.

Only completed runs enter the tables: a run stopped early by a scheduler (ASHA) is a
different experiment (fewer epochs), so stopped runs are counted in `n_stopped` and shown
in the loss curves, never averaged with completed ones. The CI is Student's t over seeds
(half-width; n=1 has none). Paired comparisons match runs that differ only in the factor
(same seed, same everything else) and test the per-pair differences (paired t-test and
Wilcoxon signed-rank).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.load import METRIC_LABELS, RUN_SPECIFIC, Runs, config_label
from runner.store import METRIC_NAMES

KEY_COLUMNS = ("loss.name", "miner.name", "loss.margin", "embedding.dim")
"""Shown in every table (when present), varying or not."""


def mean_ci(values, level: float = 0.95) -> tuple[float, float, int]:
    """(mean, CI half-width, n) with Student's t; half-width NaN for n < 2."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), 0
    if len(x) < 2:
        return float(x.mean()), float("nan"), 1
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half), len(x)


def shown_columns(runs: Runs) -> list[str]:
    keys = [c for c in KEY_COLUMNS if c in runs.table]
    return keys + [c for c in runs.varying if c not in keys and c not in ("miner.params", "miner.margin")]


def config_table(runs: Runs, metrics=METRIC_NAMES) -> pd.DataFrame:
    """One row per configuration: its columns, n_seeds, n_stopped, <metric>_mean and <metric>_ci."""
    t = runs.table
    cols = shown_columns(runs)
    rows = []
    for cid, group in t.groupby("config_id", sort=True):
        done = group[group["status"] == "completed"]
        row = {"kind": "run", "config": group["config_label"].iloc[0], "config_id": cid,
               "eval_protocol": group["eval_protocol"].iloc[0] if "eval_protocol" in group else "stratified",
               **{c: group[c].iloc[0] for c in cols}, "n_seeds": len(done),
               "n_stopped": int((group["status"] == "stopped").sum())}
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_ci"], _ = mean_ci(done[m])
        rows.append(row)
    out = pd.DataFrame(rows)
    rank = "map_at_r" if "map_at_r" in metrics else metrics[-1]  # METRIC_NAMES now ends with ami
    return out.sort_values(f"{rank}_mean", ascending=False, kind="stable").reset_index(drop=True)


def with_baselines(table: pd.DataFrame, baselines: pd.DataFrame, metrics=METRIC_NAMES) -> pd.DataFrame:
    """Runs and baselines (same queries, same protocol) in one table; a baseline is one deterministic fit (no CI)."""
    if baselines is None or baselines.empty:
        return table
    rows = []
    for _, b in baselines.iterrows():
        label = f"{b['label']} d={b['dim']}" + (f" ({b['dim_note']})" if b.get("dim_note") else "")
        rows.append({"kind": "baseline", "config": label, "loss.name": b["label"], "embedding.dim": b["dim"],
                     "eval_protocol": b.get("eval_protocol", "stratified"),
                     "n_seeds": 1, "n_stopped": 0, **{f"{m}_mean": b[m] for m in metrics},
                     **{f"{m}_ci": float("nan") for m in metrics}})
    return pd.concat([table, pd.DataFrame(rows)], ignore_index=True)


# ---------------------------------------------------------------- paired comparisons

COMPARISONS = {
    # name: (factor column, level a, level b, config prefixes that change with the factor)
    "mining vs none": ("mining", "none", "mined", ("miner.",)),
    "triplet vs contrastive": ("loss_family", "contrastive", "triplet", ("loss.", "miner.")),
}


def matched_pairs(runs: Runs, factor: str, a: str, b: str, free: tuple, metric: str) -> pd.DataFrame:
    """Pairs of completed runs of level a and level b that differ only in the factor.

    Both runs of a pair agree on the seed and every config column outside `free` (the
    columns the factor sets, e.g. loss.* for the loss family). When a level holds several
    settings of the free columns (margins swept, two miners), each (setting a, setting b)
    is its own comparison, labelled in `recipe_a` / `recipe_b`: a contrastive margin is
    never paired with an arbitrary triplet margin. When every run has exactly one partner
    (the settings are determined by the rest, as contrastive+pair miner vs contrastive),
    all pairs form one comparison and the recipe columns are empty.
    """
    t = runs.table[runs.table["status"] == "completed"]
    key = [c for c in runs.config_columns if c not in RUN_SPECIFIC and not c.startswith(free)] + ["seed"]
    if factor == "loss_family":
        key.append("mining")  # contrastive+miner is matched with triplet+miner
    free_cols = [c for c in runs.config_columns if c.startswith(free) and t[c].map(str).nunique() > 1]
    t = t.assign(_key=t[key].map(str).agg("|".join, axis=1),
                 _recipe=[config_label(row, free_cols) for _, row in t.iterrows()] if free_cols else "")
    dim = "embedding.dim" if "embedding.dim" in t else "seed"
    left = t[t[factor] == a][["_key", "_recipe", metric, dim]].rename(columns={"_recipe": "recipe_a"})
    right = t[t[factor] == b][["_key", "_recipe", metric]].rename(columns={"_recipe": "recipe_b"})
    pairs = left.merge(right, on="_key", suffixes=("_a", "_b"))
    # one run per side and key: repeats (same settings, another run_id) would pair twice
    pairs = pairs.drop_duplicates(["_key", "recipe_a", "recipe_b"])
    if not pairs["_key"].duplicated().any():  # every run has one partner: one comparison, whatever the settings
        pairs = pairs.assign(recipe_a="", recipe_b="")
    return pairs


def paired_test(a, b) -> dict:
    """Mean of b - a with 95% CI, paired t-test and Wilcoxon p-values, share of pairs b wins."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    mean, half, n = mean_ci(d)
    p_t = p_w = float("nan")
    if n >= 2 and np.any(d != 0):
        p_t = float(stats.ttest_rel(b, a).pvalue) if d.std(ddof=1) > 0 else 0.0
        p_w = float(stats.wilcoxon(d).pvalue) if np.count_nonzero(d) >= 1 else float("nan")
    return {"n_pairs": n, "mean_a": float(a.mean()) if n else np.nan, "mean_b": float(b.mean()) if n else np.nan,
            "diff": mean, "diff_ci": half, "p_ttest": p_t, "p_wilcoxon": p_w,
            "b_wins": float((d > 0).mean()) if n else np.nan, "identical": bool(n) and bool(np.all(d == 0))}


def paired_comparisons(runs: Runs, metrics=("knn1", "map_at_r")) -> pd.DataFrame:
    """Each comparison in COMPARISONS per pair of settings, over all its pairs and per embedding dim.

    A comparison whose levels are both in the grid but that has no pair of runs differing
    only in the factor gets one row with n_pairs 0: the question is asked and not answered.
    `identical` marks comparisons whose every pair has equal metrics (a miner that keeps
    exactly the tuples the loss would use anyway trains the same run).
    """
    rows = []
    for name, (factor, a, b, free) in COMPARISONS.items():
        if factor not in runs.table or not {a, b} <= set(runs.table[factor]):
            continue
        for metric in metrics:
            pairs = matched_pairs(runs, factor, a, b, free, metric)
            if pairs.empty:
                rows.append({"comparison": name, "a": a, "b": b, "metric": metric, "stratum": "all",
                             **paired_test([], [])})
                continue
            for (ra, rb), group in pairs.groupby(["recipe_a", "recipe_b"], sort=True):
                la, lb = (f"{a} ({ra})" if ra else a), (f"{b} ({rb})" if rb else b)
                rows.append({"comparison": name, "a": la, "b": lb, "metric": metric, "stratum": "all",
                             **paired_test(group[f"{metric}_a"], group[f"{metric}_b"])})
                if "embedding.dim" in group and group["embedding.dim"].nunique() > 1:
                    for dim, g in group.groupby("embedding.dim"):
                        rows.append({"comparison": name, "a": la, "b": lb, "metric": metric, "stratum": f"d={dim}",
                                     **paired_test(g[f"{metric}_a"], g[f"{metric}_b"])})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- formatting

def fmt_ci(mean: float, half: float, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if np.isfinite(half) else "")


def fmt_p(p: float) -> str:
    return "–" if not np.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def p_text(p: float) -> str:
    """'p < 0.001' / 'p = 0.012' for sentences."""
    return "p n/a" if not np.isfinite(p) else ("p < 0.001" if p < 0.001 else f"p = {p:.3f}")


def display_table(table: pd.DataFrame, metrics=METRIC_NAMES, columns=("config", "n_seeds")) -> pd.DataFrame:
    """Strings for Markdown/LaTeX/slides: 'mean ± CI' per metric."""
    out = table[list(columns)].copy()
    if "n_stopped" in table and table["n_stopped"].fillna(0).sum():
        out["n_stopped"] = table["n_stopped"].fillna(0).astype(int)
    for m in metrics:
        out[METRIC_LABELS[m]] = [fmt_ci(x, h) for x, h in zip(table[f"{m}_mean"], table[f"{m}_ci"])]
    return out


def display_paired(paired: pd.DataFrame) -> pd.DataFrame:
    if paired.empty:
        return paired
    return pd.DataFrame({
        "comparison": [f"{a} → {b}" for a, b in zip(paired["a"], paired["b"])],
        "metric": paired["metric"].map(METRIC_LABELS), "stratum": paired["stratum"],
        "pairs": paired["n_pairs"], "mean a → b": [f"{fmt_ci(x, float('nan'))} → {fmt_ci(y, float('nan'))}"
                                                  for x, y in zip(paired["mean_a"], paired["mean_b"])],
        "Δ (b−a) ± CI": [fmt_ci(d, h) for d, h in zip(paired["diff"], paired["diff_ci"])],
        "p (t)": paired["p_ttest"].map(fmt_p), "p (Wilcoxon)": paired["p_wilcoxon"].map(fmt_p),
        "b wins": [f"{w:.0%}" for w in paired["b_wins"]]})


def to_markdown(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [[str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join(" --- " for _ in df.columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells[1:]]) + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("→", r"$\to$"), ("Δ", r"$\Delta$"), ("−", "-"), ("–", "--"), ("·", r"$\cdot$"),
                 ("<", r"$<$")):
        text = text.replace(a, b)
    return text


def to_latex(df: pd.DataFrame, caption: str = "") -> str:
    """A booktabs tabular (no pandas Styler/jinja2 needed)."""
    lines = [r"\begin{table}[ht]", r"\centering", r"\begin{tabular}{" + "l" * len(df.columns) + "}", r"\toprule",
             " & ".join(_tex(str(c)) for c in df.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(str(v)) for v in row) + r" \\" for row in df.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"] + ([rf"\caption{{{_tex(caption)}}}"] if caption else []) + [r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, display: pd.DataFrame, out_dir: str | Path, name: str, caption: str = "") -> list[Path]:
    """name.csv (numbers), name.md and name.tex (formatted) under out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.csv", out_dir / f"{name}.md", out_dir / f"{name}.tex"]
    df.to_csv(paths[0], index=False)
    paths[1].write_text((f"{caption}\n\n" if caption else "") + to_markdown(display))
    paths[2].write_text(to_latex(display, caption))
    return paths
