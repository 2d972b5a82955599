"""analysis: loading, tables vs recomputation, baselines, paired tests, hierarchy, open set, retrieval."""

import json
import warnings

import h5py
import numpy as np
import pytest
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

from analysis import baselines, hierarchy, openset, tables
from analysis.load import load_runs
from runner.store import METRIC_NAMES, read_final
from tests.fixtures.fake_runs import write_grid

VARIANTS = [
    {"loss": {"name": "ContrastiveLoss", "margin": 0.5}, "miner": {"name": None}},
    {"loss": {"name": "ContrastiveLoss", "margin": 0.5},
     "miner": {"name": "PairMarginMiner", "params": {"pos_margin": 0.0, "neg_margin": 0.5}}},
    {"loss": {"name": "TripletMarginLoss", "margin": 0.2}, "miner": {"name": None}},
    {"loss": {"name": "TripletMarginLoss", "margin": 0.2},
     "miner": {"name": "TripletMarginMiner", "params": {"type_of_triplets": "semihard"}}},
]


def grid_configs(dims=(2, 8), seeds=(0, 1), data=None, epochs=4):
    from runner.spec import resolve
    base = {"data": data or {"name": "digits"}, "train": {"epochs": epochs, "save_every": 2}}
    return [resolve(base, v, {"embedding": {"dim": d}}, {"seed": s}) for v in VARIANTS for d in dims for s in seeds]


def make_grid(out, broken: bool = True):
    """16 fake runs (4 variants × dims 2, 8 × seeds 0, 1) + a stopped, a failed and two corrupt files."""
    configs = grid_configs()
    paths = write_grid(out, configs)
    if broken:
        import dataclasses
        extra = [dataclasses.replace(configs[-1], seed=7), dataclasses.replace(configs[-1], seed=8)]
        paths += write_grid(out, extra, statuses={0: "stopped", 1: "failed"})
        (out / "runs" / "truncated").mkdir(parents=True)
        (out / "runs" / "truncated" / "run.h5").write_bytes(paths[0].read_bytes()[:5000])
        (out / "runs" / "garbage").mkdir(parents=True)
        (out / "runs" / "garbage" / "run.h5").write_bytes(b"not an hdf5 file" * 100)
    return paths


def shared_grid(tmp_path_factory):
    """One fake grid per test session (both analysis test modules read it, neither writes it)."""
    out = tmp_path_factory.getbasetemp() / "analysis_grid"
    if not out.exists():
        make_grid(out)
    return out


def baseline_cache(tmp_path_factory):
    """Baselines fitted once per session (NCA costs seconds)."""
    return tmp_path_factory.getbasetemp() / "analysis_baselines"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = shared_grid(tmp_path_factory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = load_runs(out)
    return out, runs


def test_load_skips_corrupt_and_failed_with_one_warning(grid):
    out, _ = grid
    with pytest.warns(UserWarning, match=r"skipped 3 run file\(s\)") as rec:
        runs = load_runs(out)
    message = str(rec[0].message)
    assert "truncated" in message and "garbage" in message and "failed" in message
    assert len(runs.table) == 17 and sorted(runs.table["status"].unique()) == ["completed", "stopped"]
    assert {"loss.name", "miner.name", "embedding.dim", "seed", "data.name"} <= set(runs.config_columns)
    assert set(runs.varying) >= {"loss.name", "miner.name", "embedding.dim"}
    assert runs.table["config_id"].nunique() == 8 + 0  # the stopped run repeats a configuration
    assert (runs.table["metrics_diff"].dropna() < 1e-5).all()


def test_tables_equal_recomputation_with_sklearn(grid):
    _, runs = grid
    t = runs.table
    for _, run in t.iterrows():
        with h5py.File(run["path"], "r") as f:
            xtr, ytr = f["final/train/embeddings"][()], f["final/train/labels"][()]
            xte, yte = f["final/test/embeddings"][()], f["final/test/labels"][()]
            stored = json.loads(f.attrs["metrics"])
        for k, key in ((1, "knn1"), (5, "knn5")):
            assert run[key] == pytest.approx(KNeighborsClassifier(n_neighbors=k).fit(xtr, ytr).score(xte, yte), abs=1e-9)
        assert run["ncm"] == pytest.approx(NearestCentroid().fit(xtr, ytr).score(xte, yte), abs=1e-9)
        assert run["eval_protocol"] == "stratified"
        nn = KNeighborsClassifier(n_neighbors=1).fit(xtr, ytr).kneighbors(xte, n_neighbors=8, return_distance=False)
        for k in (1, 2, 4, 8):  # Recall@K: a same-class training image among the first K (every class is in train)
            assert run[f"recall_at_{k}"] == pytest.approx(np.mean((ytr[nn[:, :k]] == yte[:, None]).any(1)), abs=1e-9)
        clusters = KMeans(n_clusters=len(np.unique(yte)), n_init=3, random_state=0).fit_predict(xte)
        assert run["nmi"] == pytest.approx(normalized_mutual_info_score(yte, clusters), abs=1e-9)
        assert run["ami"] == pytest.approx(adjusted_mutual_info_score(yte, clusters), abs=1e-9)
        assert all(run[m] == pytest.approx(stored[m], abs=1e-5) for m in METRIC_NAMES)
    table = tables.config_table(runs)
    for _, row in table.iterrows():
        done = t[(t["config_id"] == row["config_id"]) & (t["status"] == "completed")]
        assert row["n_seeds"] == len(done) == 2
        x = done["map_at_r"].to_numpy()
        assert row["map_at_r_mean"] == pytest.approx(x.mean())
        assert row["map_at_r_ci"] == pytest.approx(stats.t.ppf(0.975, 1) * x.std(ddof=1) / np.sqrt(2))
    assert table["n_stopped"].sum() == 1  # counted, not averaged


def test_metrics_match_runner_evaluate_away_from_near_ties(grid):
    """runner.evaluate (float32, used in training) agrees with the exact recomputation for d = 8;
    at d = 2 on the unit circle near-equal distances may rank differently in float32."""
    pytest.importorskip("runner.training.evaluate")
    from analysis.metrics import reference_metrics
    from runner.training.evaluate import compute_metrics
    t = grid[1].table
    fin = read_final(t.loc[t["embedding.dim"] == 8, "path"].iloc[0])
    args = (fin["test"]["embeddings"], fin["test"]["labels"], fin["train"]["embeddings"], fin["train"]["labels"])
    ours, theirs = reference_metrics(*args), compute_metrics(*args)
    assert all(ours[k] == pytest.approx(theirs[k], abs=1e-5) for k in METRIC_NAMES)


def test_baselines_on_the_same_split(grid, tmp_path_factory):
    from sklearn.decomposition import PCA
    from analysis.load import load_split_images
    _, runs = grid
    cache = baseline_cache(tmp_path_factory)
    b = baselines.baseline_table(runs, cache_dir=cache)
    assert set(b["method"]) == {"raw", "pca", "lda", "nca"}
    assert sorted(b.loc[b["method"] == "pca", "dim"]) == [2, 8] and sorted(b.loc[b["method"] == "lda", "dim"]) == [2, 8]
    fin = read_final(runs.table["path"].iloc[0])
    cfg = json.loads(runs.table["config_json"].iloc[0])["data"]
    xtr = load_split_images(cfg, fin["train"]["index"]).reshape(len(fin["train"]["index"]), -1) / 255.0
    xte = load_split_images(cfg, fin["test"]["index"]).reshape(len(fin["test"]["index"]), -1) / 255.0
    pca = PCA(8, random_state=0).fit(xtr)
    knn = KNeighborsClassifier(1).fit(pca.transform(xtr), fin["train"]["labels"])
    row = b[(b["method"] == "pca") & (b["dim"] == 8)].iloc[0]
    assert row["knn1"] == pytest.approx(knn.score(pca.transform(xte), fin["test"]["labels"]))
    assert list(cache.glob("baselines-*.csv"))  # cached for the next report
    again = baselines.baseline_table(runs, cache_dir=cache)
    np.testing.assert_allclose(again["map_at_r"], b["map_at_r"])


def test_lda_is_capped_at_classes_minus_one():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    imgs = (rng.integers(0, 255, size=(60, 1, 4, 4)) + 40 * y[:, None, None, None]).clip(0, 255).astype(np.uint8)
    b = baselines.baselines_for_split(imgs, y, imgs, y, dims=[8], methods=("lda",))
    assert b["dim"].tolist() == [2] and "n_classes-1" in b["dim_note"].iloc[0]


def test_paired_comparisons_match_seeds(grid):
    _, runs = grid
    p = tables.paired_comparisons(runs, metrics=("knn1",))
    overall = p[p["stratum"] == "all"].set_index("comparison")
    assert overall.loc["mining vs none", "n_pairs"] == 8  # 2 losses × 2 dims × 2 seeds
    assert overall.loc["triplet vs contrastive", "n_pairs"] == 8  # 2 minings × 2 dims × 2 seeds
    pairs = tables.matched_pairs(runs, "mining", "none", "mined", ("miner.",), "knn1")
    d = pairs["knn1_b"] - pairs["knn1_a"]
    assert overall.loc["mining vs none", "diff"] == pytest.approx(d.mean())
    assert overall.loc["mining vs none", "p_ttest"] == pytest.approx(stats.ttest_rel(pairs["knn1_b"], pairs["knn1_a"]).pvalue)
    assert set(p["stratum"]) == {"all", "d=2", "d=8"}


def test_formats():
    import pandas as pd
    df = pd.DataFrame({"config": ["a_b & c"], "kNN-1": [tables.fmt_ci(0.91234, 0.0123)]})
    assert "0.912 ± 0.012" in tables.to_markdown(df)
    tex = tables.to_latex(df, "cap")
    assert r"a\_b \& c" in tex and r"$\pm$" in tex and r"\begin{tabular}{ll}" in tex
    assert tables.fmt_ci(0.5, float("nan")) == "0.500" and tables.p_text(1e-5) == "p < 0.001"


def test_hierarchy_agreement_detects_a_known_hierarchy():
    rng = np.random.default_rng(0)
    parents = [f"f{i // 4}" for i in range(12)]
    centres = rng.normal(size=(3, 16)) * 5
    means = np.stack([centres[i // 4] + rng.normal(size=16) for i in range(12)])
    good = hierarchy.agreement(means, parents, permutations=199)
    assert good["hierarchy_r"] > 0.8 and good["hierarchy_p"] < 0.05 and good["within_between"] < 0.5
    flat = hierarchy.agreement(rng.normal(size=(12, 16)), parents, permutations=199)
    assert flat["hierarchy_r"] < good["hierarchy_r"]
    assert np.isnan(hierarchy.agreement(means, None)["hierarchy_r"])


def test_open_set_scores(grid):
    res = openset.open_set(read_final(grid[1].table.sort_values("map_at_r").iloc[-1]["path"]))
    assert 0.5 < res["softmax_acc"] <= 1 and 0.5 < res["auroc_gini"] <= 1
    assert 0 <= res["unknown_rejected"] <= 1 and len(res["gini_unknown"]) > 0
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(openset.gini(p), [0.0, 0.5])


def test_retrieve_cli(grid, tmp_path, capsys):
    from analysis import retrieve
    path = grid[1].table["path"].iloc[0]
    png = tmp_path / "gallery.png"
    assert retrieve.main([str(path).removesuffix("/run.h5"), "--query", "3", "--k", "4", "--out", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    dists = [float(line.split("d=")[1].split()[0]) for line in lines if "d=" in line]
    assert len(dists) == 4 and dists == sorted(dists) and png.stat().st_size > 1000
    fin = read_final(path)
    d = np.linalg.norm(fin["train"]["embeddings"] - fin["test"]["embeddings"][3], axis=1)
    assert dists[0] == pytest.approx(np.sort(d)[0], abs=1e-4)
    assert retrieve.main([str(path), "--query", "100000"]) == 2


def test_real_training_run_loads_and_reports(tmp_path):
    """A real (tiny) run from runner.train: stored and recomputed metrics agree; one run makes a report."""
    pytest.importorskip("runner.training.evaluate")
    from runner.spec import resolve
    from runner.launch.run import run_one
    from tests.conftest import tiny_layer
    result = run_one(resolve(tiny_layer(num_threads=1), {"train": {"epochs": 1}}), tmp_path, progress=False)
    assert result["status"] == "completed"
    runs = load_runs(tmp_path)
    assert runs.table["metrics_diff"].iloc[0] < 1e-5 and runs.table["n_steps"].iloc[0] > 0
    # and a report of that single run still has its ten slides
    from analysis import report
    from analysis.render import count_pdf_pages
    out = report.build_report(tmp_path, tmp_path / "report", report.Options(
        methods=(), baselines=False, tensorboard=False))
    assert out["slides"] == 10 and count_pdf_pages(out["pdf"]) == 10


def test_a_miner_that_keeps_every_pair_the_loss_uses_is_flagged_and_the_exercise_miner_is_not(tmp_path):
    """Real tiny runs: ContrastiveLoss(0, 0.5) with PairMarginMiner(0, 0.5) trains the unmined run again
    (the report says so); the exercise's PairMarginMiner(0.2, 0.4) changes what is trained."""
    from runner.launch.run import run_one
    from runner.spec import resolve
    from tests.conftest import tiny_layer
    loss = {"loss": {"name": "ContrastiveLoss", "margin": 0.5}}
    for seed in (0, 1):
        for miner in ({"name": None}, {"name": "PairMarginMiner", "params": {"pos_margin": 0.0, "neg_margin": 0.5}}):
            run_one(resolve(tiny_layer(epochs=1), loss, {"miner": miner, "seed": seed}), tmp_path / "same", progress=False)
        for miner in ({"name": None}, {"name": "PairMarginMiner", "params": {"pos_margin": 0.2, "neg_margin": 0.4}}):
            run_one(resolve(tiny_layer(epochs=1), loss, {"miner": miner, "seed": seed}), tmp_path / "hard", progress=False)
    same = tables.paired_comparisons(load_runs(tmp_path / "same"), metrics=("knn1", "map_at_r"))
    hard = tables.paired_comparisons(load_runs(tmp_path / "hard"), metrics=("knn1", "map_at_r"))
    mining = lambda p: p[(p["comparison"] == "mining vs none") & (p["stratum"] == "all")]  # noqa: E731
    assert mining(same)["n_pairs"].tolist() == [2, 2] and mining(same)["identical"].all()
    assert mining(hard)["n_pairs"].tolist() == [2, 2] and not mining(hard)["identical"].all()


def test_projections_are_cached_and_read_back_without_refitting(grid, tmp_path, monkeypatch):
    from analysis import embeddings
    out, runs = grid
    path = runs.table[runs.table["status"] == "completed"]["path"].iloc[0]
    first = embeddings.project_run(path, "tsne", max_points=120, cache_dir=tmp_path)
    assert len(list((tmp_path / "projections").glob("*.npz"))) == len(first)

    def no_fit(*args, **kwargs):
        raise AssertionError("the projection was fitted again")

    monkeypatch.setattr(embeddings, "project", no_fit)
    second = embeddings.project_run(path, "tsne", max_points=120, cache_dir=tmp_path)
    assert first.keys() == second.keys()
    for epoch in first:
        for split, (xy, labels) in first[epoch].items():
            np.testing.assert_array_equal(second[epoch][split][0], xy)
            np.testing.assert_array_equal(second[epoch][split][1], labels)
    with pytest.raises(AssertionError, match="fitted again"):  # another point cap is another projection
        embeddings.project_run(path, "tsne", max_points=100, cache_dir=tmp_path)
