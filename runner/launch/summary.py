"""One run's summary (what run_one returns) as the few lines a launcher prints."""

from __future__ import annotations

from runner import store


def format_result(result: dict) -> str:
    """A short table of the run's test metrics and speed."""
    skipped = " (already there: skipped)" if result.get("skipped") else ""
    if result["status"] == "locked":
        skipped = " (another process is training it: skipped)"
    lines = [f"run {result['run_id']}: {result['status']}{skipped}  ({result['path']})"]
    if result.get("metrics"):
        m = result["metrics"]
        recall = [k for k in m if k.startswith("recall_at_")]  # the run's eval.recall_at
        classify = [k for k in store.METRIC_NAMES if k in ("knn1", "knn5", "ncm", "nmi", "ami")]
        retrieve = [k for k in store.METRIC_NAMES if k in ("p_at_1", "r_precision", "map_at_r")] + recall
        for row in (classify, retrieve):
            lines.append("  " + "  ".join(f"{k:>11}" for k in row))
            lines.append("  " + "  ".join(f"{m.get(k, float('nan')):11.4f}" for k in row))
    if "train_time_s" in result:
        lines.append(f"  train time {result['train_time_s']:.1f} s, {result['samples_per_s']:.0f} samples/s")
    if result.get("error"):
        lines.append(f"  error: {result['error']}")
    return "\n".join(lines)


def report_result(index: int, result: dict) -> bool:
    """Print one grid run's summary under its index; True when the run failed (the exit code counts it)."""
    print(f"[{index}] " + format_result(result), flush=True)
    return result["status"] == "failed"
