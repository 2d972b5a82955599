"""runner.training.evaluate against scikit-learn, pytorch-metric-learning and numpy on small seeded data."""

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

from runner.training import evaluate, knn
from runner.training.evaluate import compute_metrics, knn_predict, nearest_class_mean

PML_NAMES = {"p_at_1": "precision_at_1", "r_precision": "r_precision", "map_at_r": "mean_average_precision_at_r"}
PML_CLUSTER_NAMES = {"nmi": "NMI", "ami": "AMI"}
KS = (1, 4, 5)  # an even k makes vote ties common


def clustered(n, n_classes, dim=8, seed=0):
    """Gaussian blobs that overlap enough for every metric to sit well inside (0, 1)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n) * 3 - 7  # non-contiguous, negative labels too
    centers = rng.normal(size=(n_classes, dim))
    x = centers[(labels + 7) // 3] + rng.normal(size=(n, dim))
    return x.astype(np.float32), labels


def split(x, y, n_query):
    """First n_query samples as queries, the rest as references; drops two classes from the references."""
    ref_mask = ~np.isin(y[n_query:], np.unique(y)[:2])  # those queries have no reference: PML's lone queries
    return x[:n_query], y[:n_query], x[n_query:][ref_mask], y[n_query:][ref_mask]


def pml_metrics(query, q_labels, ref=None, r_labels=None, names=PML_NAMES):
    """PML's P@1, R-precision and MAP@R (NMI, AMI), the references holding every relevant item (k='max_bin_count').

    ref=None is PML's same-source setting: the queries are the references, each query not its own neighbour.
    """
    calc = AccuracyCalculator(include=tuple(names.values()), k="max_bin_count", device=torch.device("cpu"),
                              kmeans_func=sklearn_kmeans)
    acc = calc.get_accuracy(query, q_labels, ref, r_labels, ref_includes_query=ref is None)
    return {ours: acc[theirs] for ours, theirs in names.items()}


def sklearn_kmeans(x, n_clusters):
    """PML's kmeans_func (faiss by default) as scikit-learn's KMeans with compute_metrics' settings."""
    x = x.cpu().numpy() if torch.is_tensor(x) else x
    return KMeans(n_clusters, n_init=evaluate.KMEANS_N_INIT, random_state=evaluate.KMEANS_SEED).fit_predict(x)


@pytest.fixture(scope="module", params=[(600, 13), (3001, 40)], ids=["direct", "filtered"])
def data(request):
    """A small problem (full-row topk) and one big enough for the threshold-filtered search."""
    n, n_classes = request.param
    return clustered(n, n_classes, seed=n)


def test_sizes_cover_both_search_paths(data):
    x, _ = data
    assert (len(x) >= knn.MIN_REFS_TO_FILTER) == (len(x) == 3001)


def test_query_is_reference_matches_sklearn_and_pml(data):
    x, y = data
    got = compute_metrics(x, y, ks=KS)
    for k in KS:  # predict(None): every sample is a query and is not its own neighbour
        assert got[f"knn{k}"] == pytest.approx(np.mean(KNeighborsClassifier(k).fit(x, y).predict(None) == y), abs=1e-12)
    assert got["ncm"] == pytest.approx(NearestCentroid().fit(x, y).score(x, y), abs=1e-12)
    expected = pml_metrics(x, y)
    assert {name: got[name] for name in PML_NAMES} == pytest.approx(expected, abs=1e-6)


def test_separate_references_match_sklearn_and_pml(data):
    xq, yq, xr, yr = split(*data, n_query=len(data[0]) // 3)
    got = compute_metrics(xq, yq, xr, yr, ks=KS)
    for k in KS:
        assert got[f"knn{k}"] == pytest.approx(KNeighborsClassifier(k).fit(xr, yr).score(xq, yq), abs=1e-12)
    assert got["ncm"] == pytest.approx(NearestCentroid().fit(xr, yr).score(xq, yq), abs=1e-12)
    assert {name: got[name] for name in PML_NAMES} == pytest.approx(pml_metrics(xq, yq, xr, yr), abs=1e-6)


@pytest.mark.parametrize("query_is_ref", [True, False])
def test_blocked_equals_unblocked(data, query_is_ref):
    x, y = data
    args = (x, y) if query_is_ref else split(x, y, len(x) // 3)
    whole = compute_metrics(*args, ks=KS, block_size=len(x))
    block_size = 7 if len(x) < 1000 else 301  # uneven last block either way
    assert compute_metrics(*args, ks=KS, block_size=block_size) == pytest.approx(whole, abs=1e-12)


def test_single_sample_class_when_query_is_reference():
    x, y = clustered(300, 6, seed=1)
    y[0] = 100  # alone in its class: no R for PML, and never its own neighbour
    got = compute_metrics(x, y, ks=(1, 5))
    assert {name: got[name] for name in PML_NAMES} == pytest.approx(pml_metrics(x, y), abs=1e-6)
    assert got["knn1"] == pytest.approx(np.mean(KNeighborsClassifier(1).fit(x, y).predict(None) == y), abs=1e-12)
    assert got["ncm"] == pytest.approx(NearestCentroid().fit(x, y).score(x, y), abs=1e-12)


def test_numpy_and_torch_inputs_agree():
    x, y = clustered(200, 5, seed=2)
    assert compute_metrics(x, y) == compute_metrics(torch.from_numpy(x), torch.from_numpy(y))
    assert compute_metrics(x, y) == compute_metrics(x.astype(np.float64), y.tolist())


def test_no_reference_for_any_query_gives_nan_retrieval():
    x, y = clustered(50, 3, seed=3)
    got = compute_metrics(x[y == y[0]], y[y == y[0]], x[y != y[0]], y[y != y[0]])
    assert got["knn1"] == 0.0 and all(math.isnan(got[name]) for name in PML_NAMES)


def test_too_few_references_raises():
    x, y = clustered(5, 2, seed=4)
    with pytest.raises(ValueError, match="ks="):
        compute_metrics(x, y, ks=(1, 5))  # 4 references once each query's own entry is excluded


def test_knn_predict_breaks_ties_towards_smallest_label():
    neighbours = torch.tensor([[3, 1, 1, 3, 2], [5, 5, -2, -2, 9], [7, 8, 9, 9, 8]])
    assert knn_predict(neighbours, 1).tolist() == [3, 5, 7]
    assert knn_predict(neighbours, 4).tolist() == [1, -2, 9]
    assert knn_predict(neighbours, 5).tolist() == [1, -2, 8]


def test_nearest_class_mean_matches_sklearn():
    x, y = clustered(500, 7, seed=5)
    assert nearest_class_mean(x[:100], x[100:], y[100:]).numpy().tolist() == (
        NearestCentroid().fit(x[100:], y[100:]).predict(x[:100]).tolist()
    )


@pytest.mark.parametrize("case", ["random", "collapsed", "biased_sample"])
def test_filtered_search_equals_full_rows(case):
    """Same neighbour distances as a full topk, including rows the filter must redo."""
    x = torch.from_numpy(clustered(2999, 20, seed=6)[0])
    if case == "collapsed":  # a third of the embeddings on one point: too many ties under the threshold
        x[::3] = x[0]
    if case == "biased_sample":  # the few sampled refs near x[0] set a threshold too few refs are under
        x[: 12 * knn.SAMPLE_STRIDE : knn.SAMPLE_STRIDE] = x[0] + 1e-3 * torch.randn(12, x.shape[1])
    refs = knn.Refs.build(x)
    q = refs.lift(x[:64])
    self_cols = torch.arange(64)
    filtered = knn.topk_filtered(q, refs, 40, self_cols)
    direct = knn.topk_direct(q, refs, 40, self_cols)
    assert not (filtered == self_cols[:, None]).any()
    dist = torch.cdist(x[:64].double(), x.double())
    assert torch.equal(dist.gather(1, filtered).sort().values, dist.gather(1, direct).sort().values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu(data):
    x, y = data
    assert compute_metrics(x, y, device="cuda") == pytest.approx(compute_metrics(x, y), abs=1e-6)


def test_small_reference_sets_rank_near_ties_exactly():
    """Neighbours 1e-3 apart at distance ~30: float32's |r|² - 2 q.r swaps them, float64 does not."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        centres = rng.normal(scale=30, size=(40, 2))
        x = (centres[rng.integers(0, 40, 359)] + rng.normal(scale=3e-3, size=(359, 2))).astype(np.float32)
        y = rng.integers(0, 5, 359)
        expected = np.mean(KNeighborsClassifier(1).fit(x.astype(np.float64), y).predict(None) == y)
        assert compute_metrics(x, y, ks=(1,))["knn1"] == expected


def numpy_retrieval(q, ql, r, rl, exclude, recall_at=evaluate.RECALL_AT):
    """P@1, R-precision, MAP@R and Recall@K, one query at a time from a full argsort (float64).

    exclude[i] is a reference column query i never sees (-1: none). Queries with no relevant
    reference left are out of every mean.
    """
    rows = {name: [] for name in ("p_at_1", "r_precision", "map_at_r", *(f"recall_at_{k}" for k in recall_at))}
    d = ((q[:, None, :].astype(np.float64) - r[None, :, :]) ** 2).sum(-1)
    for i in range(len(q)):
        keep = np.arange(len(r)) != exclude[i]
        same = rl[keep][np.argsort(d[i, keep], kind="stable")] == ql[i]
        big_r = int(same.sum())
        if big_r == 0:
            continue
        hits = same[:big_r]
        rows["p_at_1"].append(same[0])
        rows["r_precision"].append(hits.mean())
        rows["map_at_r"].append((np.cumsum(hits) / np.arange(1, big_r + 1) * hits).sum() / big_r)
        for k in recall_at:
            rows[f"recall_at_{k}"].append(same[:k].any())
    return {name: float(np.mean(v)) for name, v in rows.items()}


def test_recall_at_k_matches_numpy_and_recall_at_1_is_p_at_1(data):
    x, y = data
    x, y = x[:900], y[:900]  # a full argsort per query: keep it small
    loo = compute_metrics(x, y, clustering=False)
    expected = numpy_retrieval(x, y, x, y, np.arange(len(x)))
    assert {k: loo[k] for k in expected} == pytest.approx(expected, abs=1e-9)
    assert loo["recall_at_1"] == loo["p_at_1"]
    xq, yq, xr, yr = split(x, y, n_query=300)
    got = compute_metrics(xq, yq, xr, yr, recall_at=(1, 3, 10), clustering=False)
    expected = numpy_retrieval(xq, yq, xr, yr, np.full(len(xq), -1), recall_at=(1, 3, 10))
    assert {k: got[k] for k in expected} == pytest.approx(expected, abs=1e-9)
    assert 0 < got["recall_at_1"] < got["recall_at_3"] < got["recall_at_10"] < 1


def test_nmi_ami_match_pml_and_sklearn_on_both_protocols(data):
    x, y = data
    xq, yq, xr, yr = split(x, y, n_query=len(x) // 3)
    for args in ((x, y), (xq, yq, xr, yr)):  # leave-one-out (same source), then queries vs references
        got = compute_metrics(*args)
        assert {k: got[k] for k in PML_CLUSTER_NAMES} == pytest.approx(
            pml_metrics(*args, names=PML_CLUSTER_NAMES), abs=1e-12)
        clusters = sklearn_kmeans(args[0], len(np.unique(args[1])))
        assert got["nmi"] == pytest.approx(normalized_mutual_info_score(args[1], clusters), abs=1e-12)
        assert got["ami"] == pytest.approx(adjusted_mutual_info_score(args[1], clusters), abs=1e-12)
        assert 0.2 < got["ami"] < got["nmi"] < 0.95


def test_nmi_is_seeded_and_one_for_separated_classes():
    x, y = clustered(400, 6, seed=7)
    assert compute_metrics(x, y)["nmi"] == compute_metrics(x, y)["nmi"]
    far = x + 100 * ((y + 7) // 3)[:, None]  # classes 100 apart, spread 1: every k-means finds them
    got = compute_metrics(far, y)
    assert got["nmi"] == pytest.approx(1.0) and got["ami"] == pytest.approx(1.0)


def test_excluded_columns_match_numpy_and_pml():
    """A gallery that holds some of the queries themselves: those columns are never matched."""
    x, y = clustered(700, 9, seed=8)
    xq, yq = x[:200], y[:200]
    gallery = np.concatenate([np.arange(100, 700), np.arange(0, 50)])  # queries 0-49 and 100-199 are in it
    xr, yr = x[gallery], y[gallery]
    position = {int(g): j for j, g in enumerate(gallery)}
    exclude = np.array([position.get(i, -1) for i in range(200)])
    got = compute_metrics(xq, yq, xr, yr, exclude=exclude, ks=KS, clustering=False)
    expected = numpy_retrieval(xq, yq, xr, yr, exclude)
    assert {k: got[k] for k in expected} == pytest.approx(expected, abs=1e-9)
    # the same as each query against the gallery without its own copy, which PML computes query by query
    for i in (0, 49, 50, 120):
        keep = np.arange(len(gallery)) != exclude[i]
        pml = pml_metrics(xq[i:i + 1], yq[i:i + 1], xr[keep], yr[keep])
        one = compute_metrics(xq[i:i + 1], yq[i:i + 1], xr, yr, exclude=exclude[i:i + 1], ks=(1,), clustering=False)
        assert {k: one[k] for k in PML_NAMES} == pytest.approx(pml, abs=1e-6)
        knn = KNeighborsClassifier(5).fit(xr[keep], yr[keep])
        assert compute_metrics(xq[i:i + 1], yq[i:i + 1], xr, yr, exclude=exclude[i:i + 1], clustering=False)[
            "knn5"] == knn.score(xq[i:i + 1], yq[i:i + 1])


def test_leave_one_out_ncm_matches_sklearn_refitted_without_the_query():
    x, y = clustered(120, 5, seed=9)
    y[0] = 100  # alone in its class: without it the class has no mean, so it is always wrong
    got = compute_metrics(x, y, ncm_leave_out=True, clustering=False)["ncm"]
    preds = [NearestCentroid().fit(np.delete(x, i, 0), np.delete(y, i)).predict(x[i:i + 1])[0] for i in range(len(x))]
    assert got == pytest.approx(np.mean(np.array(preds) == y), abs=1e-12)
    assert got < NearestCentroid().fit(x, y).score(x, y)  # the in-sample means flatter every query


def test_recall_at_too_large_raises():
    x, y = clustered(8, 2, seed=4)
    with pytest.raises(ValueError, match="recall_at="):
        compute_metrics(x, y, ks=(1,))  # K = 8 needs 8 references besides the query
