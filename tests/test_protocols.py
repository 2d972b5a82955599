"""Evaluation protocols: which split is scored against which, end to end through run.h5."""

import dataclasses
import math
import re
import subprocess

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from runner import store
from runner.config import DataConfig, run_id
from runner.data import Splits, load_dataset, split_dataset
from runner.launch import run as launch_run
from runner.launch.run import run_one
from runner.spec import resolve
from runner.training.evaluate import compute_metrics
from runner.training.protocols import evaluate_splits, protocol_for, same_image_columns
from tests.conftest import PYTHON, ROOT, tiny_layer
from tests.test_evaluate import numpy_retrieval

TINY_SETS = ["model.width=8", "embedding.dim=8", "train.epochs=2", "train.batch_size=32", "train.num_threads=1"]


def digits_splits(**data):
    cfg = DataConfig(**data)
    return cfg, split_dataset(load_dataset(cfg), cfg)


def with_query_gallery(splits: Splits) -> Splits:
    """Test images split into query (even rows) and gallery (odd rows plus the first 30 queries)."""
    rows = np.arange(len(splits.test))
    query, gallery = rows[::2], np.concatenate([rows[1::2], rows[::2][:30]])
    out = dataclasses.replace(splits)
    out.query, out.gallery = splits.test.subset(query), splits.test.subset(gallery)
    return out


def test_protocol_follows_the_split():
    cfg, s = digits_splits()
    p = protocol_for(cfg, s)
    assert (p.name, p.query, p.gallery, p.val_gallery) == ("stratified", "test", "train", None)
    cfg, s = digits_splits(val_fraction=0.25)
    assert protocol_for(cfg, s).val_gallery == "train"
    cd, s = digits_splits(split="class_disjoint", val_fraction=0.25)
    p = protocol_for(cd, s)
    assert (p.name, p.query, p.gallery, p.val_gallery) == ("class_disjoint", "test", "test", "val")
    assert set(s.val.labels.tolist()).isdisjoint(s.train.labels.tolist())  # tune validates on unseen classes
    assert set(s.test.labels.tolist()).isdisjoint(s.val.labels.tolist())
    # a split named otherwise (a data set's official lists): the classes decide
    assert protocol_for(dataclasses.replace(cd, split="official"), s).name == "class_disjoint"
    assert protocol_for(dataclasses.replace(cfg, split="official"), digits_splits()[1]).name == "stratified"
    qg = protocol_for(cd, with_query_gallery(s))
    assert (qg.name, qg.query, qg.gallery, qg.stored_splits) == (
        "query_gallery", "query", "gallery", ("train", "test", "query", "gallery"))
    assert qg.attrs()["eval_exclude"] == "same_index" and p.attrs()["eval_exclude"] == "self"


def test_stratified_val_split_is_unchanged_by_protocols():
    _, s = digits_splits(val_fraction=0.25)
    assert set(s.val.labels.tolist()) == set(s.train.labels.tolist())


def test_evaluate_splits_scores_each_protocol_on_its_splits():
    cfg, strat = digits_splits(val_fraction=0.25)
    cd, disjoint = digits_splits(split="class_disjoint", val_fraction=0.25)
    qg = with_query_gallery(disjoint)
    gen = torch.Generator().manual_seed(0)

    def emb(s, names=("train", "test", "val")):
        return {n: torch.randn(len(getattr(s, n)), 4, generator=gen) + 0.3 * getattr(s, n).labels[:, None]
                for n in names}

    e = emb(strat)
    got = evaluate_splits(protocol_for(cfg, strat), strat, e)
    assert got == compute_metrics(e["test"], strat.test.labels, e["train"], strat.train.labels) | {
        f"val_{k}": v for k, v in compute_metrics(e["val"], strat.val.labels, e["train"], strat.train.labels).items()}
    e = emb(disjoint)
    got = evaluate_splits(protocol_for(cd, disjoint), disjoint, e)
    assert got == compute_metrics(e["test"], disjoint.test.labels, ncm_leave_out=True) | {
        f"val_{k}": v for k, v in compute_metrics(e["val"], disjoint.val.labels, ncm_leave_out=True).items()}
    e = emb(qg, ("train", "test", "val", "query", "gallery"))
    got = evaluate_splits(protocol_for(cd, qg), qg, e)
    exclude = same_image_columns(qg.query.index, qg.gallery.index)
    assert int((exclude >= 0).sum()) == 30
    assert {k: v for k, v in got.items() if not k.startswith("val_")} == compute_metrics(
        e["query"], qg.query.labels, e["gallery"], qg.gallery.labels, exclude=exclude, ncm_leave_out=True)


def parse_printed(text: str) -> dict:
    """The metric rows of format_result: a line of names, then a line of values."""
    lines = [ln.split() for ln in text.splitlines() if ln.startswith("  ") and not ln.strip().startswith("train")]
    out = {}
    for names, values in zip(lines[::2], lines[1::2]):
        out.update(zip(names, map(float, values)))
    return out


def test_class_disjoint_run_end_to_end_matches_sklearn_leave_one_out(tmp_path, subprocess_env):
    args = [PYTHON, "-m", "runner.train", "--set", "data.split=class_disjoint", "--out", str(tmp_path)]
    r = subprocess.run(args + [x for s in TINY_SETS for x in ("--set", s)], cwd=ROOT, env=subprocess_env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    printed = parse_printed(r.stdout)
    for name in ("p_at_1", "map_at_r", "recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8", "nmi", "ami"):
        assert math.isfinite(printed[name]), name
    path = re.search(r"\((\S+run\.h5)\)", r.stdout).group(1)
    data = store.read_run(path)
    a, m = data["attrs"], data["attrs"]["metrics"]
    assert (a["eval_protocol"], a["eval_query"], a["eval_gallery"]) == ("class_disjoint", "test", "test")
    assert printed == pytest.approx({k: m[k] for k in printed}, abs=5e-5)  # printed to 4 decimals
    x, y = data["final"]["test"]["embeddings"], data["final"]["test"]["labels"]
    assert set(y).isdisjoint(data["final"]["train"]["labels"])
    for k in (1, 5):  # predict(None): each test image against all the others
        assert m[f"knn{k}"] == pytest.approx(np.mean(KNeighborsClassifier(k).fit(x, y).predict(None) == y), abs=1e-9)
    nn = NearestNeighbors(n_neighbors=len(x) - 1).fit(x).kneighbors(None, return_distance=False)
    same = y[nn] == y[:, None]
    big_r = np.bincount(y)[y] - 1
    hits = same & (np.arange(1, same.shape[1] + 1) <= big_r[:, None])
    assert m["p_at_1"] == pytest.approx(same[:, 0].mean(), abs=1e-9)
    assert m["r_precision"] == pytest.approx(np.mean(hits.sum(1) / big_r), abs=1e-9)
    precision = np.cumsum(hits, 1) / np.arange(1, hits.shape[1] + 1)
    assert m["map_at_r"] == pytest.approx(np.mean((precision * hits).sum(1) / big_r), abs=1e-9)
    for k in a["eval_recall_at"]:
        assert m[f"recall_at_{k}"] == pytest.approx(same[:, :k].any(1).mean(), abs=1e-9)
    clusters = KMeans(len(np.unique(y)), n_init=a["eval_kmeans"]["n_init"],
                      random_state=a["eval_kmeans"]["seed"]).fit_predict(x)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(y, clusters), abs=1e-9)
    assert m["ami"] == pytest.approx(adjusted_mutual_info_score(y, clusters), abs=1e-9)


def test_class_disjoint_tune_run_validates_on_held_out_classes(tmp_path):
    # 6 training classes are left: P = 16 / 4 classes per batch
    cfg = resolve(tiny_layer(epochs=1, batch_size=16), {"data": {"split": "class_disjoint", "val_fraction": 0.25}})
    result = run_one(cfg, tmp_path, progress=False)
    assert result["status"] == "completed"
    attrs = store.read_attrs(store.run_path(tmp_path, run_id(cfg)))
    assert attrs["eval_val_gallery"] == "val"
    for name in ("val_map_at_r", "val_p_at_1", "val_recall_at_8", "val_nmi", "map_at_r"):
        assert math.isfinite(result["metrics"][name]), name


def test_query_gallery_run_stores_both_sets_and_never_matches_a_query_with_itself(tmp_path, monkeypatch):
    real = launch_run.prepare_data

    def prepare_data(cfg, **kw):  # the data helper's query/gallery loaders may not exist: build the sets here
        splits, policy = real(cfg, **kw)
        return with_query_gallery(splits), policy

    monkeypatch.setattr(launch_run, "prepare_data", prepare_data)
    cfg = resolve(tiny_layer(epochs=1), {"data": {"split": "class_disjoint"}})
    assert run_one(cfg, tmp_path, progress=False)["status"] == "completed"
    data = store.read_run(store.run_path(tmp_path, run_id(cfg)), epochs=True)
    a, m = data["attrs"], data["attrs"]["metrics"]
    assert (a["eval_protocol"], a["eval_query"], a["eval_gallery"]) == ("query_gallery", "query", "gallery")
    q, g = data["final"]["query"], data["final"]["gallery"]
    assert sorted(data["epochs"][1]) == ["gallery", "query", "test", "train"]
    column = {int(i): j for j, i in enumerate(g["index"])}
    exclude = np.array([column.get(int(i), -1) for i in q["index"]])
    assert (exclude >= 0).sum() == 30
    expected = numpy_retrieval(q["embeddings"], q["labels"], g["embeddings"], g["labels"], exclude)
    assert {k: m[k] for k in expected} == pytest.approx(expected, abs=1e-6)
    # with the 30 copies (distance 0, rank 1) counted MAP@R moves by far more than the tolerance above
    naive = numpy_retrieval(q["embeddings"], q["labels"], g["embeddings"], g["labels"], np.full(len(exclude), -1))
    assert abs(naive["map_at_r"] - m["map_at_r"]) > 1e-4
