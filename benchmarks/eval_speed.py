"""Time and peak memory of runner.training.evaluate.compute_metrics against PML's AccuracyCalculator.

    python benchmarks/eval_speed.py [--n 200000 --dim 64 --classes 100 --seed 0]

Both run on the same seeded Gaussian blobs with the queries as their own references, each in a
fresh subprocess so that its peak RSS (ru_maxrss) is its own. PML computes P@1, R-precision and
MAP@R with k="max_bin_count" (its faiss IndexFlatL2 kNN included); compute_metrics does that plus
kNN-1/5, NCM and Recall@K, without its k-means (NMI/AMI: clustering=False), which PML's run
leaves out too.

PML holds [queries, max R] neighbour tables in int64/float64, ~PML_BYTES_PER_NEIGHBOUR bytes per
entry: ~25 GB at the default size, more than this 24 GB machine has. When the whole run does not
fit in half the free memory, PML gets only the first --pml-queries queries (all n samples stay
its references, ref_includes_query=True) and its time is scaled by n / pml_queries; its cost is
linear in the number of queries, but its metrics are then means over that subset.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = ("p_at_1", "r_precision", "map_at_r")
PML_NAMES = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
PML_BYTES_PER_NEIGHBOUR = 70
"""Peak RSS of PML per (query, neighbour) pair, measured with this script at n = 25k and 50k."""


def make_data(n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced Gaussian blobs (R = n / n_classes - 1) overlapping enough that MAP@R is mid-range."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % n_classes)
    centers = rng.normal(scale=0.75, size=(n_classes, dim))
    x = centers[labels] + rng.normal(size=(n, dim))
    return x.astype(np.float32), labels.astype(np.int64)


def run_ours(x: np.ndarray, y: np.ndarray, n_queries: int) -> dict[str, float]:
    """compute_metrics with the queries as references (always all of them)."""
    from runner.training.evaluate import compute_metrics

    return compute_metrics(x, y, ks=(1, 5), clustering=False)


def run_pml(x: np.ndarray, y: np.ndarray, n_queries: int) -> dict[str, float]:
    """AccuracyCalculator for the first n_queries samples against all of them (ref_includes_query)."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=PML_NAMES, k="max_bin_count", device=torch.device("cpu"))
    acc = calc.get_accuracy(x[:n_queries], y[:n_queries], x, y, ref_includes_query=True)
    return {ours: acc[theirs] for ours, theirs in zip(SHARED, PML_NAMES)}


def worker(method: str, data_path: str, n_queries: int) -> None:
    """Run one method on the saved data and print time, peak RSS and metrics as one JSON line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `runner`
    import torch  # imported before the clock starts, like the data load

    data = np.load(data_path)
    x, y = data["x"], data["y"]
    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    metrics = (run_ours if method == "ours" else run_pml)(x, y, n_queries)
    time_s = (time.perf_counter() - start) * len(x) / n_queries  # scaled to all n queries
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    info = dict(time_s=time_s, peak_mb=peak_mb, rss_before_mb=rss_before_mb, threads=torch.get_num_threads())
    info.update(queries=n_queries, load=os.getloadavg()[0])  # a busy machine skews the ratio
    print(json.dumps(dict(info, metrics=metrics)))


def spawn(method: str, data_path: str, n_queries: int) -> dict:
    """Run worker() in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, __file__, "--worker", method, "--data", data_path, "--queries", str(n_queries)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def free_memory_mb() -> float:
    """MemAvailable from /proc/meminfo, in MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def pml_queries(n: int, n_classes: int, requested: int) -> int:
    """Queries PML gets: requested, else all n when its tables fit in half the free memory."""
    if requested:
        return min(requested, n)
    per_query_mb = PML_BYTES_PER_NEIGHBOUR * (n // n_classes) / 2**20
    fit = int(0.5 * free_memory_mb() / per_query_mb)
    return n if fit >= n else max(1000, fit // 1000 * 1000)


def print_table(results: dict[str, dict], n: int) -> None:
    """One row per method, then the time ratio and the largest metric difference."""
    head = f"{'method':<16}{'queries':>8}{'time_s':>9}{'peak_MB':>9}{'load':>6}  "
    print(head + "".join(f"{m:>13}" for m in SHARED))
    for name, res in results.items():
        values = "".join(f"{res['metrics'][m]:>13.6f}" for m in SHARED)
        row = f"{name:<16}{res['queries']:>8}{res['time_s']:>9.1f}{res['peak_mb']:>9.0f}{res['load']:>6.1f}  "
        print(row + values)
    ours = results["compute_metrics"]
    print("all metrics of compute_metrics:", {k: round(v, 6) for k, v in ours["metrics"].items()})
    if "pml" not in results:
        return
    pml = results["pml"]
    diff = max(abs(ours["metrics"][m] - pml["metrics"][m]) for m in SHARED)
    scaled = f" (PML timed on {pml['queries']} queries, scaled x{n / pml['queries']:.2f})" if pml["queries"] < n else ""
    print(f"speed-up (pml / ours): {pml['time_s'] / ours['time_s']:.2f}x{scaled}")
    what = "PML's subset means vs the full means" if pml["queries"] < n else "should be ~1e-7"
    print(f"max |metric difference|: {diff:.2e} ({what})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="samples (queries = references)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pml-queries", type=int, default=0, help="queries given to PML (0: as memory allows)")
    parser.add_argument("--skip-pml", action="store_true", help="time compute_metrics only")
    parser.add_argument("--worker", choices=["ours", "pml"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.data, args.queries)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = str(Path(tmp) / "data.npz")
        x, y = make_data(args.n, args.dim, args.classes, args.seed)
        np.savez(data_path, x=x, y=y)
        print(f"n={args.n} dim={args.dim} classes={args.classes} R={args.n // args.classes - 1}", flush=True)
        results = {"compute_metrics": spawn("ours", data_path, args.n)}
        if not args.skip_pml:
            results["pml"] = spawn("pml", data_path, pml_queries(args.n, args.classes, args.pml_queries))
    print_table(results, args.n)


if __name__ == "__main__":
    main()
