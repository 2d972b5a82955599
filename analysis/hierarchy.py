"""Class hierarchy: dendrogram of class-mean distances and agreement with a known hierarchy.

Class means are taken over the final train and test embeddings together. The tree is
average linkage on Euclidean distances. Two numbers:
  cophenetic_r   how faithfully the tree represents the class-mean distances (scipy cophenet);
  hierarchy_r    correlation between the tree's cophenetic distances and the known
                 hierarchy's distances (0 same parent, 1 different parents), when the
                 data set has one (/data/parents, e.g. the synthetic signs), with a
                 permutation p-value (parents shuffled over classes, sizes kept).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from scipy.cluster.hierarchy import cophenet, dendrogram, linkage
from scipy.spatial.distance import pdist

from analysis.embeddings import class_colours
from analysis.load import load_data_info, load_split_images
from runner.store import read_final

N_PERMUTATIONS = 999


def class_means(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(class ids present, C×d means) over the final train and test embeddings."""
    fin = read_final(path)
    emb = np.concatenate([fin[s]["embeddings"] for s in fin])
    labels = np.concatenate([fin[s]["labels"] for s in fin])
    classes = np.unique(labels)
    return classes, np.stack([emb[labels == c].mean(axis=0) for c in classes])


def known_distances(parents: list[str]) -> np.ndarray:
    """Condensed 0/1 distances of the known two-level hierarchy."""
    codes = pd.factorize(pd.Series(parents))[0].astype(float)[:, None]
    return (pdist(codes, lambda a, b: float(a[0] != b[0]))).astype(float)


def agreement(means: np.ndarray, parents: list[str] | None, permutations: int = N_PERMUTATIONS, seed: int = 0) -> dict:
    """cophenetic_r, and hierarchy_r / p / within-between ratio when parents are known."""
    dist = pdist(means)
    z = linkage(dist, method="average")
    coph_r, coph = cophenet(z, dist)
    out = {"cophenetic_r": float(coph_r), "hierarchy_r": np.nan, "hierarchy_p": np.nan, "within_between": np.nan}
    if parents is None or len(set(parents)) < 2 or len(set(parents)) == len(parents):
        return out
    known = known_distances(parents)
    r = float(np.corrcoef(coph, known)[0, 1])
    rng = np.random.default_rng(seed)
    null = [np.corrcoef(coph, known_distances(list(rng.permutation(parents))))[0, 1] for _ in range(permutations)]
    p = float((1 + np.sum(np.asarray(null) >= r)) / (1 + permutations)) if permutations else np.nan
    out.update(hierarchy_r=r, hierarchy_p=p,
               within_between=float(dist[known == 0].mean() / dist[known == 1].mean()))
    return out


def run_hierarchy(path: str, permutations: int = N_PERMUTATIONS) -> dict:
    """Agreement numbers of one run plus what the dendrogram needs."""
    info = load_data_info(path)
    classes, means = class_means(path)
    names = info["class_names"] or [str(c) for c in range(int(classes.max()) + 1)]
    parents = [info["parents"][c] for c in classes] if info["parents"] else None
    return {"classes": classes, "means": means, "names": [names[c] for c in classes], "parents": parents,
            **agreement(means, parents, permutations)}


def pixel_agreement(path: str) -> dict | None:
    """The same numbers for raw-pixel class means of the run's split (None when images are unavailable)."""
    info = load_data_info(path)
    fin = read_final(path)
    index = np.concatenate([fin[s]["index"] for s in fin])
    labels = np.concatenate([fin[s]["labels"] for s in fin])
    images = load_split_images(info["config"]["data"], index)
    if images is None:
        return None
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    parents = [info["parents"][c] for c in classes] if info["parents"] else None
    names = info["class_names"] or [str(c) for c in range(int(classes.max()) + 1)]
    return {"means": means, "names": [names[c] for c in classes], "parents": parents,
            **agreement(means, parents, N_PERMUTATIONS)}


def agreement_table(table: pd.DataFrame, permutations: int = 0) -> pd.DataFrame:
    """Per run: cophenetic_r, hierarchy_r, within_between (completed runs with final embeddings)."""
    rows = []
    for _, run in table[(table["status"] == "completed") & table["has_final"].astype(bool)].iterrows():
        h = run_hierarchy(run["path"], permutations)
        rows.append({"run_id": run["run_id"], "config_id": run["config_id"], "config": run["config_label"],
                     "seed": run["seed"], **{k: h[k] for k in ("cophenetic_r", "hierarchy_r", "hierarchy_p",
                                                               "within_between")}})
    return pd.DataFrame(rows)


def closest_pairs(means: np.ndarray, names: list[str], n: int = 5) -> list[tuple[str, str, float]]:
    d = pdist(means)
    iu = np.triu_indices(len(means), 1)
    order = np.argsort(d)[:n]
    return [(names[iu[0][i]], names[iu[1][i]], float(d[i])) for i in order]


def dendrogram_figure(fig, h: dict, title: str = ""):
    """Dendrogram of class means; leaf labels coloured by their known parent."""
    ax = fig.subplots(1, 1)
    z = linkage(pdist(h["means"]), method="average")
    many = len(h["names"]) > 20
    dendrogram(z, labels=h["names"], ax=ax, leaf_rotation=90 if many else 0, color_threshold=0,
               above_threshold_color="dimgrey", leaf_font_size=9 if many else 14)
    if h["parents"]:
        families = sorted(set(h["parents"]))
        colours = dict(zip(families, class_colours(len(families))))
        by_name = dict(zip(h["names"], h["parents"]))
        for label in ax.get_xmajorticklabels():
            label.set_color(colours[by_name[label.get_text()]])
        ax.legend(handles=[Patch(color=colours[f], label=f) for f in families], fontsize="x-small",
                  loc="upper right", ncol=2, title="known parent (label colour)", title_fontsize="x-small")
    ax.set_ylabel("distance between class means")
    text = f"cophenetic r = {h['cophenetic_r']:.2f}"
    if np.isfinite(h.get("hierarchy_r", np.nan)):
        text += f"   agreement with known hierarchy r = {h['hierarchy_r']:.2f} (permutation p = {h['hierarchy_p']:.3f})"
    ax.set_title((title + "\n" if title else "") + text, fontsize="medium")
    fig.subplots_adjust(bottom=0.4 if many else 0.1, top=0.85, left=0.07, right=0.99)
    return ax
