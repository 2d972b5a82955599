"""Time and peak memory of runner.evaluate.compute_metrics against PML's AccuracyCalculator.

    python benchmarks/eval_speed.py [--n 200000 --dim 64 --classes 100 --seed 0]

Both run on the same seeded Gaussian blobs with the queries as their own references, each in a
fresh subprocess so that its peak RSS (ru_maxrss) is its own. PML computes P@1, R-precision and
MAP@R with k="max_bin_count" (its faiss IndexFlatL2 kNN included); compute_metrics does that plus
kNN-1/5 and NCM. PML holds [n, max R] neighbour tables in int64/float64 (~20 GB at the default
size), so it is skipped when that estimate exceeds the free memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = ("p_at_1", "r_precision", "map_at_r")
PML_NAMES = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
PML_BYTES_PER_NEIGHBOUR = 56
"""Peak RSS of PML per (query, neighbour) pair, measured with this script at n = 25k-100k."""


def make_data(n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced Gaussian blobs (R = n / n_classes - 1) overlapping enough that MAP@R is mid-range."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % n_classes)
    centers = rng.normal(scale=0.5, size=(n_classes, dim))
    x = centers[labels] + rng.normal(size=(n, dim))
    return x.astype(np.float32), labels.astype(np.int64)


def run_ours(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """compute_metrics with the queries as references."""
    from runner.evaluate import compute_metrics

    return compute_metrics(x, y, ks=(1, 5))


def run_pml(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """AccuracyCalculator with the queries as references (ref_includes_query)."""
    import torch
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=PML_NAMES, k="max_bin_count", device=torch.device("cpu"))
    acc = calc.get_accuracy(x, y)
    return {ours: acc[theirs] for ours, theirs in zip(SHARED, PML_NAMES)}


def worker(method: str, data_path: str) -> None:
    """Run one method on the saved data and print time, peak RSS and metrics as one JSON line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for `runner`
    import torch  # imported before the clock starts, like the data load

    data = np.load(data_path)
    x, y = data["x"], data["y"]
    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    metrics = (run_ours if method == "ours" else run_pml)(x, y)
    time_s = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    info = dict(time_s=time_s, peak_mb=peak_mb, rss_before_mb=rss_before_mb, threads=torch.get_num_threads())
    print(json.dumps(dict(info, metrics=metrics)))


def spawn(method: str, data_path: str) -> dict:
    """Run worker() in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, __file__, "--worker", method, "--data", data_path]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def free_memory_mb() -> float:
    """MemAvailable from /proc/meminfo, in MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def print_table(results: dict[str, dict]) -> None:
    """One row per method, then the time ratio and the largest metric difference."""
    print(f"{'method':<16}{'time_s':>9}{'peak_MB':>9}{'before':>8}  " + "".join(f"{m:>13}" for m in SHARED))
    for name, res in results.items():
        values = "".join(f"{res['metrics'][m]:>13.6f}" for m in SHARED)
        print(f"{name:<16}{res['time_s']:>9.1f}{res['peak_mb']:>9.0f}{res['rss_before_mb']:>8.0f}  {values}")
    print("extra metrics of compute_metrics:", {k: round(v, 6) for k, v in results["compute_metrics"]["metrics"].items()})
    if "pml" in results:
        ours, pml = results["compute_metrics"], results["pml"]
        diff = max(abs(ours["metrics"][m] - pml["metrics"][m]) for m in SHARED)
        print(f"speed-up (pml / ours): {pml['time_s'] / ours['time_s']:.2f}x   max |metric difference|: {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="samples (queries = references)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-pml", action="store_true", help="time compute_metrics only")
    parser.add_argument("--worker", choices=["ours", "pml"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.data)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = str(Path(tmp) / "data.npz")
        x, y = make_data(args.n, args.dim, args.classes, args.seed)
        np.savez(data_path, x=x, y=y)
        print(f"n={args.n} dim={args.dim} classes={args.classes} R={args.n // args.classes - 1}", flush=True)
        results = {"compute_metrics": spawn("ours", data_path)}
        pml_mb = PML_BYTES_PER_NEIGHBOUR * args.n * (args.n // args.classes) / 2**20
        if args.skip_pml or pml_mb > 0.8 * free_memory_mb():
            print(f"skipping PML: it needs ~{pml_mb:.0f} MB, {free_memory_mb():.0f} MB free")
        else:
            results["pml"] = spawn("pml", data_path)
    print_table(results)


if __name__ == "__main__":
    main()
