"""Nearest stored images of a query by the run's recorded protocol, and the gallery figure of the report.

Query and gallery are those of the run's recorded protocol (attrs eval_query/eval_gallery):
test against train (stratified), test against the other test images (class-disjoint), query
against gallery, never the query's own image. Reads only run.h5 and the source images: the
report draws its retrieval slide without importing the model code (torchvision) that
`python -m analysis.retrieve --image` needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from analysis.load import load_data_info, load_split_images
from analysis.metrics import gallery_exclusion, protocol_of
from runner.store import read_attrs, read_final

STRATIFIED = protocol_of({})
"""Test queries against the training gallery: files written before protocols were recorded."""

def resolve_run(path: str | Path) -> Path:
    """RUN_DIR, RUN_DIR/run.h5 or a results dir's runs/<run_id>."""
    path = Path(path)
    return path if path.is_file() else path / "run.h5"

def neighbours(final: dict, query: int, k: int, split: Optional[str] = None, protocol: Optional[dict] = None) -> dict:
    """Rows of the k nearest gallery samples of query `query`, with distances and labels.

    Args:
        split: the query's split; None is the protocol's query split. A training query
            searches the training split.
        protocol: analysis.metrics.protocol_of of the run; None is stratified (test vs train).
    """
    p = protocol or STRATIFIED
    split = split or p["query"]
    gallery = "train" if split == "train" else p["gallery"]
    q = final[split]["embeddings"][query].astype(np.float64)
    ref = final[gallery]["embeddings"].astype(np.float64)
    d = np.sqrt(((ref - q) ** 2).sum(axis=1))
    if split == gallery:
        d[query] = np.inf  # a query is not its own neighbour
    else:
        own = gallery_exclusion(final[split]["index"][query:query + 1], final[gallery]["index"], False)
        if own is not None:
            d[own[0]] = np.inf  # nor is its own image in the gallery
    rows = np.argsort(d, kind="stable")[:k]
    return {"query": query, "label": int(final[split]["labels"][query]), "rows": rows, "distances": d[rows],
            "labels": final[gallery]["labels"][rows], "index": final[gallery]["index"][rows],
            "query_index": int(final[split]["index"][query]), "gallery": gallery}

def pick_queries(final: dict, n: int = 5, seed: int = 0, protocol: Optional[dict] = None) -> list[int]:
    """A few queries of the protocol: some at random and, when there are any, some whose top-1 is wrong."""
    rng = np.random.default_rng(seed)
    labels = final[(protocol or STRATIFIED)["query"]]["labels"]
    n_test = len(labels)
    wrong = [i for i in rng.permutation(n_test)[:400]
             if neighbours(final, int(i), 1, protocol=protocol)["labels"][0] != labels[i]]
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
    """Rows: queries; columns: the query and its k nearest gallery images of the run's protocol (distance, label)."""
    final, protocol = read_final(path), protocol_of(read_attrs(path))
    info = load_data_info(path)
    names = info["class_names"] or [str(i) for i in range(int(final["train"]["labels"].max()) + 1)]
    results = [neighbours(final, q, k, protocol=protocol) for q in queries]
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
