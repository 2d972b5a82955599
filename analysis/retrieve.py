"""`python -m analysis.retrieve RUN_DIR --query I | --image PHOTO [--k K] [--out PNG]`: nearest images of a query.

--query I: the k nearest gallery images (by Euclidean distance of the stored final
embeddings) of query I, with their labels and distances, and a gallery: the query, then
its neighbours, correct matches framed green, wrong ones red. Query and gallery are those
of the run's recorded protocol (attrs eval_query/eval_gallery): test against train
(stratified), test against the other test images (class-disjoint), query against gallery,
never the query's own image.

--image PHOTO ("find your doppelganger"): a photo that is in no data set, embedded
with the run's model.pt and preprocessing (runner.inference), against --gallery train,
test or all of the run's stored embeddings (default: the unseen test identities of a
class-disjoint run, the training images otherwise). Images come from the data set
named in the run's config (selected by /final/<split>/index).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.figure import Figure

from analysis.gallery import _show, gallery_figure, neighbours, pick_queries, resolve_run
from analysis.load import load_data_info, load_split_images
from analysis.metrics import protocol_of
from runner.config import ConfigError
from runner.inference import embed, image_files, load_run_model, read_images
from runner.store import read_attrs, read_final

__all__ = ["gallery_figure", "main", "nearest", "neighbours", "pick_queries", "resolve_run"]
# neighbours, pick_queries and gallery_figure live in analysis.gallery (the report needs no model code)

USAGE_ERROR = 2
"""Exit code for bad input (as the runner's commands): nothing was read or written."""


def gallery_of(final: dict, which: str) -> dict:
    """Embeddings, labels, source index and split of the rows a photo is compared with."""
    splits = ["train", "test"] if which == "all" else [which]
    return {"embeddings": np.concatenate([final[s]["embeddings"] for s in splits]).astype(np.float64),
            "labels": np.concatenate([final[s]["labels"] for s in splits]),
            "index": np.concatenate([final[s]["index"] for s in splits]),
            "split": np.concatenate([[s] * len(final[s]["labels"]) for s in splits])}


def nearest(q: np.ndarray, gallery: dict, k: int) -> dict:
    """The k gallery rows nearest to embedding q (Euclidean, ties by row), with their distances."""
    d = np.sqrt(((gallery["embeddings"] - q.astype(np.float64)) ** 2).sum(axis=1))
    rows = np.argsort(d, kind="stable")[:k]
    return {"rows": rows, "distances": d[rows], "labels": gallery["labels"][rows], "index": gallery["index"][rows],
            "split": gallery["split"][rows]}


def photo_figure(fig, photos: list, results: list[dict], images: Optional[np.ndarray], names: list, k: int) -> None:
    """Rows: photos; columns: the photo as the model saw it, then its k nearest gallery images."""
    axes = fig.subplots(len(photos), k + 1, squeeze=False)
    for i, (photo, r) in enumerate(zip(photos, results)):
        _show(axes[i, 0], photo)
        axes[i, 0].set_title("your image", fontsize="small", fontweight="bold")
        for j in range(len(r["rows"])):
            _show(axes[i, j + 1], None if images is None else images[i * k + j])
            axes[i, j + 1].set_title(f"{names[r['labels'][j]]}  d={r['distances'][j]:.2f}", fontsize="small")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, hspace=0.35, wspace=0.08)


def retrieve_photos(path: Path, photos: list[str], k: int, which: str, out: Optional[str]) -> int:
    """--image: embed each photo with the run's model, print and draw its k nearest gallery images."""
    rm = load_run_model(path.parent)
    info, final = load_data_info(path), read_final(path)
    if which == "auto":
        which = "test" if info["config"]["data"]["split"] == "class_disjoint" else "train"
    files = [f for photo in photos for f in image_files(photo)]
    pixels = read_images(files, rm.image_shape)
    gallery, names = gallery_of(final, which), info["class_names"]
    results = [nearest(q, gallery, k) for q in embed(rm, pixels)]
    for f, r in zip(files, results):
        print(f"{f}: nearest {len(r['rows'])} of {len(gallery['labels'])} {which} image(s) of run {rm.run_id}")
        for rank, (d, lab, split, src) in enumerate(zip(r["distances"], r["labels"], r["split"], r["index"]), 1):
            print(f"  {rank:2d}. {names[lab]:<24} d={d:.4f}  ({split}, data set index {src})")
    idx = np.concatenate([r["index"] for r in results])
    images = load_split_images(info["config"]["data"], idx) if all(len(r["rows"]) == k for r in results) else None
    fig = Figure(figsize=(1.9 * (k + 1), 2.1 * len(files) + 0.3))
    photo_figure(fig, [p.numpy() for p in pixels], results, images, names, k)
    target = Path(out) if out else Path(f"doppelganger_{rm.run_id}.png")
    fig.savefig(target, dpi=120)
    print(f"gallery: {target}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.retrieve", description=__doc__.splitlines()[0])
    p.add_argument("run", help="results/runs/<run_id> (or its run.h5)")
    p.add_argument("--query", type=int, action="append", help="query sample index (repeatable): a test image, or a query image for query/gallery runs")
    p.add_argument("--image", action="append", help="a photo (or folder of photos) in no data set (repeatable)")
    p.add_argument("--gallery", choices=("auto", "train", "test", "all"), default="auto",
                   help="with --image: the stored images to search (auto: test for class-disjoint runs, else train)")
    p.add_argument("--k", type=int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--out", default=None, help="gallery PNG (default ./retrieval_<run_id>_q<I>.png)")
    args = p.parse_args(argv)
    path = resolve_run(args.run)
    if bool(args.query) == bool(args.image):
        print("error: give --query I (a stored test sample) or --image PHOTO, one of the two", file=sys.stderr)
        return USAGE_ERROR
    if args.image:
        try:
            return retrieve_photos(path, args.image, args.k, args.gallery, args.out)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return USAGE_ERROR
    return retrieve_queries(path, args.query, args.k, args.out)


def retrieve_queries(path: Path, queries: list[int], k: int, out: Optional[str]) -> int:
    """--query: the k nearest gallery images of stored queries (the run's protocol), printed and drawn."""
    final, protocol = read_final(path), protocol_of(read_attrs(path))
    names = load_data_info(path)["class_names"]
    n_test = len(final[protocol["query"]]["labels"])
    if any(not 0 <= q < n_test for q in queries):
        print(f"error: --query must be in 0..{n_test - 1}", file=sys.stderr)
        return USAGE_ERROR
    for q in queries:
        r = neighbours(final, q, k, protocol=protocol)
        print(f"{protocol['query']} query {q} (data set index {r['query_index']}, "
              f"class {names[r['label']] if names else r['label']}; gallery: {r['gallery']}, {protocol['name']})")
        for rank, (row, d, lab, src) in enumerate(zip(r["rows"], r["distances"], r["labels"], r["index"]), 1):
            mark = "✓" if lab == r["label"] else "✗"
            print(f"  {rank:2d}. {r['gallery']} #{row:<5d} index {src:<6d} class {names[lab] if names else lab:<12} d={d:.4f} {mark}")
    fig = Figure(figsize=(1.9 * (k + 1), 2.1 * len(queries) + 0.3))  # no pyplot: no backend to pick
    gallery_figure(fig, path, queries, k)
    target = Path(out) if out else Path(f"retrieval_{path.parent.name}_q{'_'.join(map(str, queries))}.png")
    fig.savefig(target, dpi=120)
    print(f"gallery: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

