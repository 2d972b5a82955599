"""A finished search as a table: results.csv, best.yaml (for runner.train) and a terminal summary."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Optional

import yaml

from runner.launch.tune.space import TuneSettings, trial_config
from runner.store import atomic_write, run_path, run_status


def results_rows(path: str, space: dict, s: TuneSettings, out: str) -> list[dict]:
    """One row per trial: config, last validation metric, test 1-NN, epochs run, status.

    status is run.h5's (completed / stopped by ASHA) for trials Ray finished, `failed` for
    errored ones and `unfinished` for trials an interruption left running (use --resume).
    """
    from ray.tune import ExperimentAnalysis  # optional dependency: only after a search
    rows = []
    for trial in ExperimentAnalysis(path).trials:
        m = trial.last_result or {}
        rid = m.get("run_id", "")
        status = {"TERMINATED": run_status(run_path(out, rid)) if rid else "unfinished",
                  "ERROR": "failed"}.get(trial.status, "unfinished")
        sample = trial.config.get("search", {})
        rows.append({"trial": trial.trial_id, "run_id": rid, **{k: sample.get(k) for k in space},
                     s.metric: m.get(s.metric, math.nan), "test_knn1": m.get("knn1", math.nan),
                     "epochs": int(m.get("epoch", 0)), "status": status})
    sign = -1 if s.mode == "max" else 1
    return sorted(rows, key=lambda row: (math.isnan(row[s.metric]), sign * row[s.metric]
                                         if not math.isnan(row[s.metric]) else 0))


def write_results(rows: list[dict], base: dict, out: str, name: str, metric: str) -> tuple[Path, Optional[Path]]:
    """OUT/tune/<name>/results.csv and best.yaml (the best trial's full config, for runner.train)."""
    folder = Path(out, "tune", name)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "results.csv"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["trial"])
    writer.writeheader()
    writer.writerows({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()} for r in rows)
    atomic_write(csv_path, text.getvalue())
    best = next((r for r in rows if not math.isnan(r[metric])), None)
    if best is None:
        return csv_path, None
    sample = {k: v for k, v in best.items() if "." in k}
    cfg = trial_config(base, sample)
    best_path = folder / "best.yaml"
    header = (f"# best trial {best['trial']} (run {best['run_id']}): {metric}={best[metric]:.4f}, "
              f"test knn1={best['test_knn1']:.4f}, {best['epochs']} epochs\n"
              f"# python -m runner.train {best_path} --out OUT\n")
    atomic_write(best_path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return csv_path, best_path


def print_table(rows: list[dict], max_t: int) -> None:
    if not rows:
        print("no trials")
        return
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.rjust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt(r[c]).rjust(widths[c]) for c in cols))
    run = sum(r["epochs"] for r in rows)
    print(f"{len(rows)} trials, {sum(r['status'] == 'stopped' for r in rows)} stopped early by ASHA; "
          f"{run} epochs run vs {len(rows) * max_t} without early stopping "
          f"({len(rows) * max_t - run} saved)")
