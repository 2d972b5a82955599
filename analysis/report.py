"""`python -m analysis.report RESULTS --out REPORT`: tables, figures and slides from run.h5 files.

Writes REPORT/report.pdf (16:9, at most 10 slides), REPORT/report.md (Marp) with
REPORT/figures/*.png, REPORT/tables/*.{csv,md,tex}, REPORT/tensorboard/ (HParams for the
grid, projector for the chosen runs) and REPORT/timings.json. Reads only HDF5 (and the
data sets named in the runs' configs, for baselines and galleries); trains nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
from threadpoolctl import threadpool_limits

from analysis import baselines, hierarchy, openset, questions, render, search, tables
from analysis.background import Worker, project_and_log
from analysis.embeddings import warm_up
from analysis.cache import StampedCache
from runner.store import file_stamp
from analysis.load import METRIC_LABELS, Runs, load_runs
from runner.store import METRIC_NAMES, atomic_write


@dataclass
class Options:
    metric: str = "map_at_r"
    """Metric that ranks configurations and picks the runs shown (any of METRIC_NAMES)."""
    methods: tuple = ("tsne", "umap")
    """2-D projections drawn (slides 6 and 7)."""
    baselines: bool = True
    tensorboard: bool = True
    max_points: int = 2000
    """Points per t-SNE/UMAP projection (train + test, subsampled per class)."""
    k: int = 5
    """Neighbours per query in the retrieval gallery."""
    n_queries: int = 4
    threads: int = 1
    """BLAS/OpenMP threads: the analysis is many small problems, where extra threads only spin
    (3× the CPU time for the same wall time on a busy 2-core machine)."""
    recompute_max: Optional[int] = 60
    """Runs whose metrics are recomputed from their embeddings as a check of the stored values
    (spread over the grid; all of a 60-run exercise); None: every run. The others are read as stored."""
    cache_dir: Optional[Path] = None
    """Where per-run rows, fitted baselines and projections are cached; None: RESULTS/report_cache
    (REPORT/cache when the results directory is read-only)."""


@dataclass
class Results:
    """Everything the slides show, computed once."""
    runs: Runs
    configs: pd.DataFrame
    baselines: pd.DataFrame
    paired: pd.DataFrame
    hierarchy: pd.DataFrame
    openset: pd.DataFrame
    chosen: dict
    """role -> table row of a run: best, dim2, best_<loss family>."""
    projections: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    search: Optional[search.Search] = None
    """The runner.tune search the results directory holds (the search deck), or None (the grid deck)."""
    cache_dir: Optional[Path] = None
    """Where this report's caches are (cache_location)."""


@contextmanager
def timed(timings: dict, name: str):
    """Wall seconds of the block in timings[name], CPU seconds of this process in timings['cpu'][name]."""
    t0, c0 = time.perf_counter(), time.process_time()
    yield
    timings[name] = round(time.perf_counter() - t0, 2)
    timings.setdefault("cpu", {})[name] = round(time.process_time() - c0, 2)


def choose_runs(runs: Runs, configs: pd.DataFrame, metric: str) -> dict:
    """Representative runs (lowest seed of a configuration): the best, the best d=2, the best per loss."""
    t = runs.table[(runs.table["status"] == "completed") & runs.table["has_final"].astype(bool)]
    ranked = configs[configs["kind"] == "run"].sort_values(f"{metric}_mean", ascending=False)
    ranked = ranked[ranked["config_id"].isin(t["config_id"])]

    def first_run(config_id):
        return t[t["config_id"] == config_id].sort_values("seed").iloc[0]

    if ranked.empty:
        return {}
    chosen = {"best": first_run(ranked["config_id"].iloc[0])}
    if "embedding.dim" in ranked and (ranked["embedding.dim"] == 2).any() and chosen["best"].get("embedding.dim") != 2:
        chosen["dim2"] = first_run(ranked.loc[ranked["embedding.dim"] == 2, "config_id"].iloc[0])
    for cid in ranked["config_id"]:
        fam = t.loc[t["config_id"] == cid, "loss_family"].iloc[0]
        chosen.setdefault(f"best_{fam}", first_run(cid))
    return chosen


def cache_location(results_dir: str | Path, out: Path, opts: Options) -> Path:
    """opts.cache_dir, else RESULTS/report_cache (next to what it caches), else REPORT/cache."""
    if opts.cache_dir is not None:
        return Path(opts.cache_dir)
    results = Path(results_dir)
    results = results if results.is_dir() else results.parent
    return results / "report_cache" if os.access(results, os.W_OK) else out / "cache"


def analyse(results_dir: str | Path, out: Path, opts: Options) -> Results:
    """Tables, baselines, hierarchy and the chosen runs; the projections are _build's (beside TensorBoard)."""
    timings: dict = {}
    found = search.find_search(results_dir)  # a runner.tune results directory: the search deck
    root = found.runs_root if found else results_dir
    cache_dir = cache_location(root, out, opts)
    with timed(timings, "load_s"):
        runs = load_runs(root, cache_dir=cache_dir, run_ids=set(found.table["run_id"].astype(str)) if found else None,
                         recompute_max=opts.recompute_max)
    if runs.table.empty or not (runs.table["status"] == "completed").any():
        raise SystemExit(f"no completed runs under {results_dir}")
    if found:
        return analyse_search(runs, found, opts, cache_dir, timings)
    with timed(timings, "baselines_s"):
        base = baselines.baseline_table(runs, cache_dir=cache_dir) if opts.baselines else pd.DataFrame()
    with timed(timings, "tables_s"):
        configs = tables.with_baselines(tables.config_table(runs), base)
        paired = tables.paired_comparisons(runs, metrics=tuple(dict.fromkeys(("knn1", opts.metric))))
        chosen = choose_runs(runs, configs, opts.metric)
    with timed(timings, "hierarchy_s"):
        hier = agreement_table(runs.table, cache_dir)
    with timed(timings, "openset_s"):
        picks = pd.DataFrame([r for k, r in chosen.items() if k.startswith("best_")]).drop_duplicates("run_id")
        open_table, open_detail = openset.openset_table(picks)
    res = Results(runs, configs, base, paired, hier, open_table, chosen, timings=timings, cache_dir=cache_dir)
    res.details["openset"] = open_detail
    res.details["hierarchy_best"] = hierarchy.run_hierarchy(chosen["best"]["path"])
    res.details["hierarchy_pixels"] = hierarchy.pixel_agreement(chosen["best"]["path"]) if opts.baselines else None
    return res


def analyse_search(runs: Runs, found: search.Search, opts: Options, cache_dir: Path, timings: dict) -> Results:
    """A search's deck: the trial chosen on validation is the `best` run; no paired tests, hierarchy or open set."""
    with timed(timings, "tables_s"):
        configs = tables.config_table(runs)
        chosen = choose_runs(runs, configs, opts.metric)
        best = runs.table[(runs.table["run_id"] == str(found.best["run_id"])) & runs.table["has_final"].astype(bool)]
        if len(best):
            chosen = {"best": best.iloc[0]}  # chosen on validation, never on the test metrics of the table
    return Results(runs, configs, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), chosen,
                   timings=timings, search=found, cache_dir=cache_dir)


HIERARCHY_KEYS = ("cophenetic_r", "hierarchy_r", "hierarchy_p", "within_between")


def agreement_table(table: pd.DataFrame, cache_dir: Path) -> pd.DataFrame:
    """hierarchy.agreement_table, each run's values kept in cache_dir/hierarchy.json under its run.h5's stamp."""
    cache, rows = StampedCache(cache_dir / "hierarchy.json", 1), []
    for _, run in table[(table["status"] == "completed") & table["has_final"].astype(bool)].iterrows():
        values = cache.get(run["path"])
        if values is None:
            h = hierarchy.run_hierarchy(run["path"], 0)
            values = cache.put(run["path"], {k: float(h[k]) for k in HIERARCHY_KEYS})
        rows.append({"run_id": run["run_id"], "config_id": run["config_id"], "config": run["config_label"],
                     "seed": run["seed"], **values})
    cache.save()
    return pd.DataFrame(rows)


def write_tables(res: Results, out: Path, metric: str) -> list[Path]:
    """tables/accuracy, paired, hierarchy, openset, baselines, runs, skipped as CSV (+ md, tex)."""
    tdir = out / "tables"
    paths = tables.write_table(res.configs, tables.display_table(res.configs), tdir, "accuracy",
                               f"Test metrics per configuration, mean ± 95% CI over seeds (runs ranked by {METRIC_LABELS[metric]}); "
                               "baselines on the same split")
    if not res.paired.empty:
        paths += tables.write_table(res.paired, tables.display_paired(res.paired), tdir, "paired",
                                    "Paired comparisons over matched seeds (b − a)")
    if not res.hierarchy.empty:
        paths += tables.write_table(res.hierarchy, res.hierarchy.round(3), tdir, "hierarchy", "Class hierarchy agreement per run")
    if not res.openset.empty:
        paths += tables.write_table(res.openset, res.openset.round(3), tdir, "openset",
                                    "Softmax on frozen embeddings and open-set rejection (Gini threshold)")
    cols = ["run_id", "status", "config_label", "seed", *METRIC_NAMES, "metrics_diff", "n_steps", "path"]
    res.runs.table[[c for c in cols if c in res.runs.table]].to_csv(tdir / "runs.csv", index=False)
    pd.DataFrame(res.runs.skipped, columns=["path", "reason"]).to_csv(tdir / "skipped.csv", index=False)
    return paths + [tdir / "runs.csv", tdir / "skipped.csv"]


def build_report(results_dir: str | Path, out: str | Path, opts: Optional[Options] = None) -> dict:
    """Analyse, write tables, figures, slides and TensorBoard logs; returns paths and timings."""
    opts = opts or Options()
    with threadpool_limits(opts.threads):
        return _build(results_dir, Path(out), opts)


DECK_STAMP = "deck.sha256"
"""REPORT/deck.sha256: what report.pdf and figures/ were drawn from (deck_stamp)."""


def deck_stamp(res: Results, slides: list, opts: Options) -> str:
    """A hash of what the figures are drawn from: every run.h5's stamp, the options, the slide texts, this code."""
    h = hashlib.sha256()
    for path in sorted(res.runs.table["path"]):
        h.update(f"{path} {file_stamp(path)}\n".encode())
    h.update(repr(opts).encode())
    for s in slides:
        h.update(repr((s.title, s.name, s.answer, s.bullets, s.notes)).encode())
    for source in sorted(Path(__file__).parent.glob("*.py")):
        h.update(source.read_bytes())
    return h.hexdigest()


def _build(results_dir, out: Path, opts: Options) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    worker = Worker() if "umap" in opts.methods and Worker.possible() else None
    try:
        if worker is not None:
            worker.submit(warm_up, "umap")  # compiles while this process reads the runs
        res = analyse(results_dir, out, opts)
        return _draw(res, out, opts, worker, t0)
    finally:
        if worker is not None:
            worker.stop()


def _draw(res: Results, out: Path, opts: Options, worker: Optional[Worker], t0: float) -> dict:
    timings = res.timings
    with timed(timings, "projections_s"):
        res.projections, tensorboard = project_and_log(res, opts, out, worker)
    with timed(timings, "tables_write_s"):
        table_paths = write_tables(res, out, opts.metric)
    with timed(timings, "slides_s"):
        slides = questions.make_slides(res, opts)
        pdf, md = out / "report.pdf", out / "report.md"
        stamp, stamp_path = deck_stamp(res, slides, opts), out / DECK_STAMP
        drawn = [pdf, md, stamp_path] + [out / "figures" / f"{s.name}.png" for s in slides if s.draw is not None]
        timings["slides_redrawn"] = not (all(p.exists() for p in drawn) and stamp_path.read_text() == stamp)
        if timings["slides_redrawn"]:  # drawing is most of a warm report: only when something changed
            pdf, md = render.write_slides(slides, out)
            atomic_write(stamp_path, stamp)
    if opts.tensorboard:
        with timed(timings, "tensorboard_wait_s"):
            timings["tensorboard_s"], timings["cpu"]["tensorboard_s"] = tensorboard()
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    timings["total_cpu_s"] = round(sum(timings["cpu"].values()), 2)
    timings["n_runs"] = len(res.runs.table)
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    return {"pdf": pdf, "markdown": md, "tables": table_paths, "figures": sorted((out / "figures").glob("*.png")),
            "slides": len(slides), "timings": timings, "skipped": res.runs.skipped}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    p.add_argument("results", help="results directory (every run.h5 below it is read)")
    p.add_argument("--out", default="report", help="output directory (default: report/)")
    p.add_argument("--metric", default="map_at_r", choices=METRIC_NAMES, help="metric that ranks configurations")
    p.add_argument("--no-umap", action="store_true", help="t-SNE only (UMAP compiles for ~20 s on first use)")
    p.add_argument("--no-baselines", action="store_true", help="skip raw/PCA/LDA/NCA (they reload the data set)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write REPORT/tensorboard")
    p.add_argument("--max-points", type=int, default=2000, help="points per t-SNE/UMAP projection (default 2000)")
    p.add_argument("--k", type=int, default=5, help="neighbours per retrieval query (default 5)")
    p.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads (default 1)")
    p.add_argument("--recompute-all", action="store_true",
                   help="recompute every run's metrics from its embeddings (default: 60 runs spread over the grid)")
    args = p.parse_args(argv)
    opts = Options(metric=args.metric, methods=("tsne",) if args.no_umap else ("tsne", "umap"),
                   baselines=not args.no_baselines, tensorboard=not args.no_tensorboard,
                   max_points=min(args.max_points, 2000), k=args.k, threads=args.threads,
                   recompute_max=None if args.recompute_all else 60)
    result = build_report(args.results, args.out, opts)
    print(f"{result['slides']} slides: {result['pdf']}  (Marp: {result['markdown']})")
    print(f"{len(result['tables'])} table files under {Path(args.out) / 'tables'}, {len(result['figures'])} figures")
    if opts.tensorboard:
        print(f"tensorboard --logdir {Path(args.out) / 'tensorboard'} --host 127.0.0.1")
    print("timings (s): " + ", ".join(f"{k}={v}" for k, v in result["timings"].items() if k != "cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
