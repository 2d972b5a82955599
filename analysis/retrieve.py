"""`python -m analysis.retrieve RUN_DIR --query I --k K [--out PNG]`: nearest training images of a test query.

Prints the k nearest training images (by Euclidean distance of the stored final
embeddings) of test sample I with their labels and distances, and saves a gallery: the
query, then its neighbours, correct matches framed green, wrong ones red. Images come
from the data set named in the run's config (selected by /final/<split>/index).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.figure import Figure

from analysis.load import load_data_info, load_split_images
from runner.store import read_final


def resolve_run(path: str | Path) -> Path:
    """RUN_DIR, RUN_DIR/run.h5 or a results dir's runs/<run_id>."""
    path = Path(path)
    return path if path.is_file() else path / "run.h5"


def neighbours(final: dict, query: int, k: int, split: str = "test") -> dict:
    """Rows of the k nearest training samples of `split` sample `query`, with distances and labels."""
    q = final[split]["embeddings"][query].astype(np.float64)
    ref = final["train"]["embeddings"].astype(np.float64)
    d = np.sqrt(((ref - q) ** 2).sum(axis=1))
    if split == "train":
        d[query] = np.inf  # a training query is not its own neighbour
    rows = np.argsort(d, kind="stable")[:k]
    return {"query": query, "label": int(final[split]["labels"][query]), "rows": rows, "distances": d[rows],
            "labels": final["train"]["labels"][rows], "index": final["train"]["index"][rows],
            "query_index": int(final[split]["index"][query])}


def pick_queries(final: dict, n: int = 5, seed: int = 0) -> list[int]:
    """A few test queries: some at random and, when there are any, some whose top-1 is wrong."""
    rng = np.random.default_rng(seed)
    n_test = len(final["test"]["labels"])
    wrong = [i for i in rng.permutation(n_test)[:400] if neighbours(final, int(i), 1)["labels"][0] != final["test"]["labels"][i]]
    chosen = [int(i) for i in wrong[: n // 2]]
    chosen += [int(i) for i in rng.permutation(n_test) if int(i) not in chosen][: n - len(chosen)]
    return sorted(chosen)


def _show(ax, image: Optional[np.ndarray]) -> None:
    if image is None:
        ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize="small", transform=ax.transAxes)
    elif image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(np.transpose(image[:3], (1, 2, 0)))
    ax.set_xticks([])
    ax.set_yticks([])


def gallery_figure(fig, path: str | Path, queries: list[int], k: int = 5):
    """Rows: queries; columns: the query and its k nearest training images (distance, label)."""
    final = read_final(path)
    info = load_data_info(path)
    names = info["class_names"] or [str(i) for i in range(int(final["train"]["labels"].max()) + 1)]
    results = [neighbours(final, q, k) for q in queries]
    idx = np.concatenate([[r["query_index"] for r in results], *[r["index"] for r in results]])
    tr_imgs = load_split_images(info["config"]["data"], idx)
    axes = fig.subplots(len(queries), k + 1, squeeze=False)
    for i, r in enumerate(results):
        _show(axes[i, 0], None if tr_imgs is None else tr_imgs[i])
        axes[i, 0].set_title(f"query #{r['query']}: {names[r['label']]}", fontsize="small", fontweight="bold")
        for spine in axes[i, 0].spines.values():
            spine.set_edgecolor("#1f3b57")
            spine.set_linewidth(4)
        for j in range(k):
            ax = axes[i, j + 1]
            image = None if tr_imgs is None else tr_imgs[len(results) + i * k + j]
            _show(ax, image)
            ok = r["labels"][j] == r["label"]
            for spine in ax.spines.values():
                spine.set_edgecolor("forestgreen" if ok else "red")
                spine.set_linewidth(4)
            ax.set_title(f"{names[r['labels'][j]]}  d={r['distances'][j]:.2f}", fontsize="small",
                         color="forestgreen" if ok else "red")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, hspace=0.35, wspace=0.08)
    return results


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.retrieve", description=__doc__.splitlines()[0])
    p.add_argument("run", help="results/runs/<run_id> (or its run.h5)")
    p.add_argument("--query", type=int, action="append", required=True, help="test sample index (repeatable)")
    p.add_argument("--k", type=int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--out", default=None, help="gallery PNG (default ./retrieval_<run_id>_q<I>.png)")
    args = p.parse_args(argv)
    path = resolve_run(args.run)
    final = read_final(path)
    names = load_data_info(path)["class_names"]
    n_test = len(final["test"]["labels"])
    if any(not 0 <= q < n_test for q in args.query):
        print(f"error: --query must be in 0..{n_test - 1}", file=sys.stderr)
        return 2
    for q in args.query:
        r = neighbours(final, q, args.k)
        print(f"query {q} (data set index {r['query_index']}, class {names[r['label']] if names else r['label']})")
        for rank, (row, d, lab, src) in enumerate(zip(r["rows"], r["distances"], r["labels"], r["index"]), 1):
            mark = "✓" if lab == r["label"] else "✗"
            print(f"  {rank:2d}. train #{row:<5d} index {src:<6d} class {names[lab] if names else lab:<12} d={d:.4f} {mark}")
    fig = Figure(figsize=(1.9 * (args.k + 1), 2.1 * len(args.query) + 0.3))  # no pyplot: no backend to pick
    gallery_figure(fig, path, args.query, args.k)
    out = Path(args.out) if args.out else Path(f"retrieval_{path.parent.name}_q{'_'.join(map(str, args.query))}.png")
    fig.savefig(out, dpi=120)
    print(f"gallery: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
