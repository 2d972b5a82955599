"""`python -m analysis.table RESULTS --by loss.name,embedding.dim --metric map_at_r`: mean ± 95% CI per group.

Reads the catalog (analysis.results.load_results; RESULTS/index.sqlite, created or brought up
to date from the run.h5 files first), never the HDF5 files themselves. Only completed runs
with the metric enter a group (as in analysis.tables: a stopped run is a shorter experiment);
n is the number of runs in each group (its seeds and repeats) and the CI is Student's t
half-width over them (none for n = 1).

    python -m analysis.table results --by loss.name,embedding.dim --metric map_at_r
    python -m analysis.table results --by loss.name --where embedding.dim=32 --md
    python -m analysis.table results --metric recall_at_1 --csv > table.csv   # groups: the keys that vary
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional

import pandas as pd
from scipy.special import stdtrit  # Student t's quantile; scipy.stats costs ~1 s more to import

from analysis.results import load_results
from runner.config import ConfigError

RUN_SPECIFIC = ("seed", "train.device", "train.num_threads", "train.deterministic")
"""Config keys that do not define a group by default: runs differing only here are repeats."""
LEVEL = 0.95


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m analysis.table", description=__doc__.splitlines()[0])
    p.add_argument("results", help="results directory (runs/<run_id>/run.h5, index.sqlite)")
    p.add_argument("--by", default="", help="group keys, comma-separated (default: the config keys that vary)")
    p.add_argument("--metric", default="map_at_r", help="metric to average (default map_at_r)")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE", help="only runs with this setting")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout: keys, n, mean, ci95 (half-width)")
    fmt.add_argument("--md", action="store_true", help="a Markdown table on stdout")
    args = p.parse_args(argv)
    args.by = [k.strip() for k in args.by.split(",") if k.strip()]
    args.where = [tuple(w.split("=", 1)) for w in args.where]
    if any(len(w) != 2 for w in args.where):
        raise ConfigError("--where", args.where, "KEY=VALUE, e.g. loss.name=TripletMarginLoss")
    return args


def check_key(option: str, key: str, known: list[str], what: str) -> None:
    """A ConfigError naming the option, the key and the closest known keys, when key is unknown."""
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(option, key, f"{what}{hint}")


def text(value) -> str:
    """A cell as --where compares it and as the table shows it: strings as they are, others as JSON."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value.item() if hasattr(value, "item") else value)


def select(frame: pd.DataFrame, where: list[tuple[str, str]]) -> pd.DataFrame:
    """Rows matching every KEY=VALUE (compared as text: embedding.dim=32, miner.name=null)."""
    for key, value in where:
        check_key("--where", key, list(frame.columns), "a config key or result column")
        frame = frame[frame[key].map(text) == value]
    return frame


def varying_keys(frame: pd.DataFrame) -> list[str]:
    """Config keys (seed and other run-specific keys excluded) that take more than one value."""
    return [k for k in frame.attrs.get("config_columns", []) if k not in RUN_SPECIFIC
            and frame[k].map(text).nunique() > 1]


def mean_ci(values: pd.Series, level: float = LEVEL) -> tuple[int, float, float]:
    """(n, mean, Student's t half-width) of the finite values; half-width NaN for n < 2."""
    x = values.dropna().astype(float)
    n = len(x)
    if n < 2:
        return n, float(x.mean()) if n else math.nan, math.nan
    return n, float(x.mean()), float(stdtrit(n - 1, 0.5 + level / 2) * x.std(ddof=1) / math.sqrt(n))


def group_table(frame: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """One row per group of the completed runs with the metric: the keys (as text), n, mean, ci95."""
    done = frame[(frame["status"] == "completed") & frame[metric].notna()]
    if done.empty:
        return pd.DataFrame(columns=[*by, "n", "mean", "ci95"])
    keys = done[by].apply(lambda col: col.map(text)) if by else pd.DataFrame(index=done.index)
    rows = []
    for key, part in (done.groupby([keys[k] for k in by], sort=True) if by else [((), done)]):
        n, mean, half = mean_ci(part[metric])
        if n:
            values = key if isinstance(key, tuple) else (key,)
            rows.append({**dict(zip(by, values)), "n": n, "mean": mean, "ci95": half})
    table = pd.DataFrame(rows, columns=[*by, "n", "mean", "ci95"])
    return table.sort_values(by, key=numeric_first, kind="stable", ignore_index=True) if by else table


def numeric_first(column: pd.Series) -> pd.Series:
    """Sort key of a key column: numbers by value (8 before 16) when every cell is one, else the text."""
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else column


def format_rows(table: pd.DataFrame, metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells as printed: `mean ± ci95` with four decimals (no ± for n = 1)."""
    header = [c for c in table.columns if c not in ("n", "mean", "ci95")] + ["n", f"{metric} (mean ± 95% CI)"]
    cells = []
    for row in table.itertuples(index=False):
        values = dict(zip(table.columns, row))
        shown = f"{values['mean']:.4f}" + (f" ± {values['ci95']:.4f}" if math.isfinite(values["ci95"]) else "")
        cells.append([str(values[c]) for c in header[:-2]] + [str(values["n"]), shown])
    return header, cells


def render(table: pd.DataFrame, metric: str, markdown: bool) -> str:
    header, cells = format_rows(table, metric)
    if markdown:
        lines = [header, ["---"] * len(header), *cells]
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines)
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    numeric = {len(header) - 2, len(header) - 1}
    return "\n".join("  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     .rstrip() for line in [header, *cells])


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse_args(argv)
        frame, table = build(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.csv:
            table.to_csv(sys.stdout, index=False)
        else:
            print(render(table, args.metric, args.md))
        if not (args.csv or args.md):
            print(f"{int(table['n'].sum())} completed runs with {args.metric} in {len(table)} groups, "
                  f"of {len(frame)} finished runs")
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: end quietly; stdout to /dev/null so the final flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


def build(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the selected runs, their table); a ConfigError for a bad directory, --by, --metric or --where key."""
    if not Path(args.results, "runs").is_dir():
        raise ConfigError("results", args.results, "a results directory with runs/<run_id>/run.h5")
    frame = select(load_results(args.results), args.where)
    metrics = frame.attrs.get("metric_columns", [])
    check_key("--metric", args.metric, metrics, "a metric the runs stored")
    by = args.by or varying_keys(frame)
    for key in by:
        check_key("--by", key, [c for c in frame.columns if c not in metrics], "a config key or result column")
    return frame, group_table(frame, by, args.metric)


if __name__ == "__main__":
    sys.exit(main())
