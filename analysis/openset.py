"""Beyond kNN: a softmax classifier on frozen embeddings and open-set rejection.

The classifier is multinomial logistic regression (a linear softmax layer) trained on
the stored train embeddings. For open-set rejection, a share of the classes is held out
as "unknown": the classifier is fitted on the other classes only, and each test sample
gets an uncertainty score from its class probabilities, the Gini impurity 1 - Σp²
(as in the Keras MNIST study) or the entropy. A threshold that keeps 95% of known test
samples decides what is rejected. Caveat: with a stratified split the embedding network
did see the "unknown" classes in training; only class-disjoint runs test truly unseen ones.

For a class-disjoint run (no test class is a training class) the unknowns are the unseen
test classes themselves: the softmax is fitted on a class-stratified share of the training
images, and the known samples it is scored on are the rest of the training images (closed-set
accuracy is measured on them too).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from runner.store import read_final

UNKNOWN_FRACTION = 0.3
KEEP_KNOWN = 0.95
KNOWN_HOLDOUT = 0.3
"""Class-disjoint runs: share of each training class held out of the softmax as the known samples."""


def _softmax_fit(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notices on tiny synthetic sets
        return LogisticRegression(max_iter=500, C=10.0).fit(x, y)


def gini(p: np.ndarray) -> np.ndarray:
    return 1.0 - (p ** 2).sum(axis=1)


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1)


def open_set(final: dict, unknown_fraction: float = UNKNOWN_FRACTION, seed: int = 0) -> dict:
    """Closed-set softmax/kNN accuracy and open-set scores of one run's final embeddings."""
    x_tr, y_tr = final["train"]["embeddings"], final["train"]["labels"]
    x_te, y_te = final["test"]["embeddings"], final["test"]["labels"]
    out = {"softmax_acc": np.nan, "knn1_acc": np.nan}
    shared = np.isin(y_te, np.unique(y_tr))
    if not shared.any() and len(np.unique(y_tr)) >= 2:
        return _unseen_classes(x_tr, y_tr, x_te, seed)
    if shared.any():
        out["softmax_acc"] = float(_softmax_fit(x_tr, y_tr).score(x_te[shared], y_te[shared]))
        out["knn1_acc"] = float(KNeighborsClassifier(1).fit(x_tr, y_tr).score(x_te[shared], y_te[shared]))
    classes = np.unique(y_tr)
    if not shared.all() or len(classes) < 3:
        return {**out, "auroc_gini": np.nan, "auroc_entropy": np.nan, "unknown_rejected": np.nan}
    rng = np.random.default_rng(seed)
    unknown = rng.choice(classes, size=max(1, int(round(unknown_fraction * len(classes)))), replace=False)
    known_tr = ~np.isin(y_tr, unknown)
    clf = _softmax_fit(x_tr[known_tr], y_tr[known_tr])
    prob = clf.predict_proba(x_te)
    is_unknown = np.isin(y_te, unknown)
    g, h = gini(prob), entropy(prob)
    threshold = float(np.quantile(g[~is_unknown], KEEP_KNOWN))
    kept = g <= threshold
    known_ok = (clf.classes_[prob.argmax(1)] == y_te)[~is_unknown & kept]
    return {**out, "auroc_gini": float(roc_auc_score(is_unknown, g)), "auroc_entropy": float(roc_auc_score(is_unknown, h)),
            "threshold": threshold, "unknown_rejected": float((~kept[is_unknown]).mean()),
            "known_kept_acc": float(known_ok.mean()) if len(known_ok) else np.nan,
            "unknown_classes": unknown.tolist(), "gini_known": g[~is_unknown], "gini_unknown": g[is_unknown]}


def _unseen_classes(x_tr, y_tr, x_te, seed: int) -> dict:
    """Class-disjoint: knowns are held-out training images, unknowns every (unseen-class) test image."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y_tr), bool)
    for c in np.unique(y_tr):
        members = rng.permutation(np.flatnonzero(y_tr == c))
        held[members[:int(round(KNOWN_HOLDOUT * len(members)))]] = True
    fit = ~held
    clf = _softmax_fit(x_tr[fit], y_tr[fit])
    x_known, y_known = x_tr[held], y_tr[held]
    prob_known, prob_unknown = clf.predict_proba(x_known), clf.predict_proba(x_te)
    g_k, g_u = gini(prob_known), gini(prob_unknown)
    is_unknown = np.r_[np.zeros(len(g_k), bool), np.ones(len(g_u), bool)]
    threshold = float(np.quantile(g_k, KEEP_KNOWN))
    kept = g_k <= threshold
    known_ok = (clf.classes_[prob_known.argmax(1)] == y_known)
    return {"softmax_acc": float(known_ok.mean()),
            "knn1_acc": float(KNeighborsClassifier(1).fit(x_tr[fit], y_tr[fit]).score(x_known, y_known)),
            "auroc_gini": float(roc_auc_score(is_unknown, np.r_[g_k, g_u])),
            "auroc_entropy": float(roc_auc_score(is_unknown, np.r_[entropy(prob_known), entropy(prob_unknown)])),
            "threshold": threshold, "unknown_rejected": float((g_u > threshold).mean()),
            "known_kept_acc": float(known_ok[kept].mean()) if kept.any() else np.nan,
            "unknown_classes": "unseen test classes", "gini_known": g_k, "gini_unknown": g_u}


def openset_table(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Scores of each run (row) of `table`, and per run_id the raw scores for the histogram."""
    rows, detail = [], {}
    for _, run in table.iterrows():
        res = open_set(read_final(run["path"]))
        detail[run["run_id"]] = res
        rows.append({"config": run["config_label"], "run_id": run["run_id"], "seed": run["seed"],
                     **{k: res.get(k, np.nan) for k in ("softmax_acc", "knn1_acc", "auroc_gini", "auroc_entropy",
                                                        "unknown_rejected", "known_kept_acc")}})
    return pd.DataFrame(rows), detail


def openset_figure(fig, detail: dict, label: str):
    """Histogram of the Gini score of known vs unknown test samples with the rejection threshold."""
    ax = fig.subplots(1, 1)
    if "gini_known" not in detail:
        ax.text(0.5, 0.5, "open-set evaluation needs shared train/test classes", ha="center", transform=ax.transAxes)
        return ax
    bins = np.linspace(0, max(detail["gini_unknown"].max(), detail["gini_known"].max(), 1e-3), 30)
    ax.hist(detail["gini_known"], bins=bins, alpha=0.6, density=True, label="known classes", color="tab:blue")
    ax.hist(detail["gini_unknown"], bins=bins, alpha=0.6, density=True, label="held-out (unknown) classes", color="tab:red")
    ax.axvline(detail["threshold"], color="k", ls="--", lw=2, label=f"reject above (keeps {KEEP_KNOWN:.0%} known)")
    ax.set_xlabel("Gini impurity of softmax probabilities  1 − Σp²")
    ax.set_ylabel("density")
    ax.set_title(f"{label}\nAUROC {detail['auroc_gini']:.2f}, unknown rejected {detail['unknown_rejected']:.0%}",
                 fontsize="medium")
    ax.legend(fontsize="small")
    return ax
