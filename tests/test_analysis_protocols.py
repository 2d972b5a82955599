"""analysis by the recorded protocol: leave-one-out recomputation, NMI/AMI, a class-disjoint run end to end."""

import json

import h5py
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier

from analysis import metrics
from runner.store import METRIC_NAMES


def blobs(n_classes=6, per_class=15, dim=5, spread=1.5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 2
    y = np.repeat(np.arange(n_classes), per_class)
    return (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


def loo_reference(x, y, recall_at=(1, 2, 4, 8)):
    """Leave-one-out metrics straight from the definitions: scikit-learn neighbours, the query itself removed."""
    x = x.astype(np.float64)
    nn = KNeighborsClassifier(n_neighbors=1).fit(x, y).kneighbors(x, n_neighbors=len(x), return_distance=False)
    nn = np.stack([row[row != i] for i, row in enumerate(nn)])  # every other test image, nearest first
    labels = y[nn]
    out = {"knn1": np.mean(labels[:, 0] == y)}
    votes = [np.bincount(row[:5], minlength=y.max() + 1).argmax() for row in labels]  # ties: smallest label
    out["knn5"] = np.mean(np.asarray(votes) == y)
    ncm = []
    for i in range(len(x)):
        rest = np.arange(len(x)) != i
        classes = np.unique(y[rest])
        means = np.stack([x[rest & (y == c)].mean(0) for c in classes])
        ncm.append(classes[np.linalg.norm(means - x[i], axis=1).argmin()] == y[i])
    out["ncm"] = np.mean(ncm)
    r = np.array([(y == c).sum() - 1 for c in y])
    hit = labels == y[:, None]
    out["p_at_1"] = hit[:, 0].mean()
    out["r_precision"] = np.mean([hit[i, :r[i]].mean() for i in range(len(y))])
    out["map_at_r"] = np.mean([(np.cumsum(hit[i, :r[i]]) / np.arange(1, r[i] + 1) * hit[i, :r[i]]).sum() / r[i]
                               for i in range(len(y))])
    out.update({f"recall_at_{k}": hit[:, :k].any(1).mean() for k in recall_at})
    return out


def test_leave_one_out_metrics_match_a_direct_scikit_learn_computation():
    x, y = blobs()
    got = metrics.compute_metrics(x, y, clustering=False)
    want = loo_reference(x, y)
    assert got == pytest.approx(want, abs=1e-12)
    assert 0.2 < got["map_at_r"] < 0.95  # neither trivial nor hopeless: the comparison can fail
    # the recorded protocol picks leave-one-out within /final/test, not test against train
    final = {"test": {"embeddings": x, "labels": y, "index": np.arange(len(y))},
             "train": {"embeddings": x + 100, "labels": y + 100, "index": np.arange(len(y)) + 1000}}
    by_protocol = metrics.run_metrics(final, {"eval_protocol": "class_disjoint", "eval_query": "test",
                                              "eval_gallery": "test"})
    assert {k: by_protocol[k] for k in want} == pytest.approx(want, abs=1e-12)
    assert metrics.run_metrics(final, {})["p_at_1"] != pytest.approx(want["p_at_1"])  # old files: test vs train


def test_query_gallery_never_matches_a_query_with_its_own_image():
    x, y = blobs(seed=1)
    idx = np.arange(len(y))
    q = np.arange(0, len(y), 3)  # every third image is a query and also in the gallery
    final = {"query": {"embeddings": x[q], "labels": y[q], "index": idx[q]},
             "gallery": {"embeddings": x, "labels": y, "index": idx}}
    got = metrics.run_metrics(final, {"eval_protocol": "query_gallery", "eval_query": "query",
                                      "eval_gallery": "gallery", "eval_exclude": "same_index"})
    assert got["p_at_1"] < 1.0  # a query matched with itself would score 1
    nn = KNeighborsClassifier(n_neighbors=2).fit(x.astype(np.float64), y).kneighbors(x[q].astype(np.float64),
                                                                                      return_distance=False)
    first_other = np.where(nn[:, 0] == q, nn[:, 1], nn[:, 0])
    assert got["knn1"] == pytest.approx(np.mean(y[first_other] == y[q]), abs=1e-12)
    assert set(METRIC_NAMES) <= set(got)


def test_nmi_and_ami_are_those_of_scikit_learn_on_a_kmeans_run_here():
    x, y = blobs(n_classes=5, per_class=30, spread=2.0, seed=3)
    clusters = KMeans(n_clusters=5, n_init=3, random_state=0).fit_predict(x)
    got = metrics.compute_metrics(x, y)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(y, clusters), abs=1e-12)
    assert got["ami"] == pytest.approx(adjusted_mutual_info_score(y, clusters), abs=1e-12)
    assert 0.1 < got["ami"] < got["nmi"] < 1.0
    shuffled = metrics.cluster_scores(x, np.random.default_rng(0).permutation(y))
    assert shuffled["ami"] < 0.1  # labels unrelated to the clusters: AMI near zero


def test_class_disjoint_run_end_to_end(tmp_path, capsys):
    """Real training with data.split=class_disjoint -> run.h5 -> analysis.load, baselines and the report."""
    from analysis import baselines, report
    from analysis.load import load_runs, load_split_images
    from analysis.render import count_pdf_pages
    from runner.launch.run import run_one
    from runner.spec import resolve
    from tests.conftest import tiny_layer
    cfg = resolve(tiny_layer(epochs=1), {"data": {"split": "class_disjoint"}})
    result = run_one(cfg, tmp_path, progress=False)
    assert result["status"] == "completed"
    path = next(tmp_path.rglob("run.h5"))
    with h5py.File(path, "r") as f:
        assert f.attrs["eval_protocol"] == "class_disjoint" and f.attrs["eval_gallery"] == "test"
        x, y = f["final/test/embeddings"][()], f["final/test/labels"][()]
        ytr = f["final/train/labels"][()]
        stored = json.loads(f.attrs["metrics"])
    assert not set(y) & set(ytr)  # unseen classes
    want = loo_reference(x, y)
    for key, value in want.items():
        assert stored[key] == pytest.approx(value, abs=1e-4), key
    assert stored["p_at_1"] > 0.2 and np.isfinite(stored["nmi"])
    clusters = KMeans(n_clusters=len(np.unique(y)), n_init=3, random_state=0).fit_predict(x)
    assert stored["nmi"] == pytest.approx(normalized_mutual_info_score(y, clusters), abs=1e-6)

    runs = load_runs(tmp_path)
    row = runs.table.iloc[0]
    assert row["eval_protocol"] == "class_disjoint" and row["metrics_diff"] < 1e-4
    assert row["map_at_r"] == pytest.approx(want["map_at_r"], abs=1e-9)

    base = baselines.baseline_table(runs, methods=("raw", "pca"))
    assert set(base["method"]) == {"raw", "pca"} and (base["eval_protocol"] == "class_disjoint").all()
    cfg_data = json.loads(row["config_json"])["data"]
    index = h5py.File(path, "r")["final/test/index"][()]
    raw = load_split_images(cfg_data, index).reshape(len(index), -1) / 255.0
    raw_want = loo_reference(raw, y)  # raw pixels of the same queries, leave-one-out among them
    got_raw = base[base["method"] == "raw"].iloc[0]
    # raw 8-bit pixels have exactly tied distances, which the two neighbour searches may order differently
    assert got_raw["map_at_r"] == pytest.approx(raw_want["map_at_r"], abs=1e-3) and got_raw["map_at_r"] > 0.1
    assert got_raw["p_at_1"] == pytest.approx(raw_want["p_at_1"], abs=1e-2)

    # retrieval searches the other test images, never the query itself nor the training classes
    from analysis import openset, retrieve
    from analysis.metrics import protocol_of
    from runner.store import read_attrs, read_final
    final, protocol = read_final(path), protocol_of(read_attrs(path))
    for q in (0, 7):
        r = retrieve.neighbours(final, q, 5, protocol=protocol)
        d = np.linalg.norm(x.astype(np.float64) - x[q], axis=1)
        d[q] = np.inf
        assert r["gallery"] == "test" and q not in r["rows"] and set(r["labels"]) <= set(y)
        np.testing.assert_allclose(r["distances"], np.sort(d)[:5], atol=1e-6)
    assert all(q < len(y) for q in retrieve.pick_queries(final, 4, protocol=protocol))
    assert retrieve.main([str(path.parent), "--query", "7", "--k", "3", "--out", str(tmp_path / "q7.png")]) == 0
    assert (tmp_path / "q7.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "gallery: test, class_disjoint" in printed and " train #" not in printed
    # open-set: the unseen test classes are the unknowns (a stratified-only check would give nan)
    o = openset.open_set(final)
    assert o["unknown_classes"] == "unseen test classes" and 0.0 <= o["auroc_gini"] <= 1.0
    assert len(o["gini_unknown"]) == len(y) and np.isfinite(o["softmax_acc"])

    out = report.build_report(tmp_path, tmp_path / "report", report.Options(
        methods=(), baselines=True, tensorboard=True, max_points=300))
    assert out["slides"] == 10 and count_pdf_pages(out["pdf"]) == 10
    slides = out["markdown"].read_text() if hasattr(out["markdown"], "read_text") else open(out["markdown"]).read()
    assert "class-disjoint: leave-one-out among unseen classes" in slides
    assert "nearest other test images" in slides and "Unknowns: the unseen test classes" in slides


def test_fake_class_disjoint_grid_is_recomputed_leave_one_out(tmp_path):
    """tests.fixtures.fake_runs writes class-disjoint grids with the runner's protocol attrs and every metric."""
    from analysis import tables
    from analysis.load import load_runs
    from tests.fixtures.fake_runs import grid_configs, write_grid
    configs = grid_configs("jobs/exercise.yaml", ("data.split=class_disjoint",))[:2]
    write_grid(tmp_path, configs)
    runs = load_runs(tmp_path)
    assert (runs.table["eval_protocol"] == "class_disjoint").all() and (runs.table["metrics_diff"] < 1e-9).all()
    for _, run in runs.table.iterrows():
        with h5py.File(run["path"], "r") as f:
            x, y = f["final/test/embeddings"][()], f["final/test/labels"][()]
            assert not set(y) & set(f["final/train/labels"][()])
        want = loo_reference(x, y)
        assert {k: run[k] for k in want} == pytest.approx(want, abs=1e-9)
        assert np.isfinite(run["nmi"]) and np.isfinite(run["ami"])
    assert tables.config_table(runs)["n_seeds"].tolist() == [2]  # the first two configs are two seeds of one


def test_baselines_score_the_protocols_queries_against_its_gallery():
    """raw pixels: leave-one-out ("self") and an explicit gallery holding the queries (own image excluded)
    both equal the scikit-learn leave-one-out computation; against the training split they differ."""
    from analysis.baselines import baselines_for_split
    rng = np.random.default_rng(5)
    centres = rng.integers(40, 200, size=(4, 1, 5, 5))
    def images(n):
        y = np.repeat(np.arange(4), n)
        return np.clip(centres[y] + rng.normal(0, 45, size=(len(y), 1, 5, 5)), 0, 255).astype(np.uint8), y
    (im_tr, y_tr), (im_q, y_q) = images(10), images(12)
    want = loo_reference(im_q.reshape(len(y_q), -1) / 255.0, y_q)
    loo = baselines_for_split(im_tr, y_tr, im_q, y_q, [2], ("raw",), gallery="self").iloc[0]
    explicit = baselines_for_split(im_tr, y_tr, im_q, y_q, [2], ("raw",),
                                   gallery=(im_q, y_q, np.arange(len(y_q)))).iloc[0]
    stratified = baselines_for_split(im_tr, y_tr, im_q, y_q, [2], ("raw",)).iloc[0]
    for key in ("knn1", "ncm", "map_at_r", "recall_at_2"):
        assert loo[key] == pytest.approx(want[key], abs=1e-9) and explicit[key] == pytest.approx(want[key], abs=1e-9)
    assert stratified["map_at_r"] != pytest.approx(want["map_at_r"], abs=1e-6)
