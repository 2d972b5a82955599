"""A real query/gallery folder end to end: train/, query/, gallery/ class folders -> runner.train -> run.h5."""

import re
import subprocess

import numpy as np
import pytest
from PIL import Image
from sklearn.neighbors import NearestNeighbors

from runner import store
from runner.config import DataConfig
from runner.data import load_dataset, split_dataset
from tests.conftest import PYTHON, ROOT

TRAIN = ("a", "b", "c", "d")
QUERY = ("e", "f", "g")
DISTRACTOR = "h"  # in the gallery only: never a right answer, often a near one
SETS = ["data.name=folder", "data.split=official", "data.image_size=16", "model.width=8", "embedding.dim=8",
        "train.epochs=2", "train.batch_size=16", "train.num_threads=1", "eval.recall_at=[1,2,4]"]


def draw(rng: np.random.Generator, cls: int) -> Image.Image:
    """A 16×16 RGB image: the class's colour and bar position, plus noise."""
    img = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
    img[:, :, cls % 3] += np.uint8(80 + 20 * (cls // 3))
    img[2 * (cls % 6):2 * (cls % 6) + 3, :, :] = 230
    return Image.fromarray(img)


def make_folder(root, per_part: dict) -> None:
    rng = np.random.default_rng(0)
    names = sorted({c for classes in per_part.values() for c in classes})
    for part, classes in per_part.items():
        for c in classes:
            (root / part / c).mkdir(parents=True)
            for i in range(6 if part != "query" else 3):
                draw(rng, names.index(c)).save(root / part / c / f"{i:03d}.png")


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "qg"
    make_folder(root, {"train": TRAIN, "query": QUERY, "gallery": QUERY + (DISTRACTOR,)})
    return root


def test_folder_parts_become_the_sets_own_query_gallery_split(folder):
    cfg = DataConfig(name="folder", root=str(folder), split="official", image_size=16)
    ds = load_dataset(cfg)
    assert ds.class_names == sorted(TRAIN + QUERY + (DISTRACTOR,))
    s = split_dataset(ds, cfg)
    names = lambda part: {ds.class_names[i] for i in part.labels.tolist()}  # noqa: E731
    assert names(s.train) == set(TRAIN) and names(s.query) == set(QUERY)
    assert names(s.gallery) == set(QUERY) | {DISTRACTOR}
    assert (len(s.train), len(s.query), len(s.gallery), len(s.test)) == (24, 9, 24, 33)
    assert not set(s.query.index.tolist()) & set(s.gallery.index.tolist())


def test_query_gallery_folder_run_matches_sklearn(folder, tmp_path, subprocess_env):
    args = [PYTHON, "-m", "runner.train", "--out", str(tmp_path / "runs"), "--set", f"data.root={folder}"]
    r = subprocess.run(args + [x for s in SETS for x in ("--set", s)], cwd=ROOT, env=subprocess_env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = store.read_run(re.search(r"\((\S+run\.h5)\)", r.stdout).group(1))
    a, m = data["attrs"], data["attrs"]["metrics"]
    assert (a["eval_protocol"], a["eval_query"], a["eval_gallery"]) == ("query_gallery", "query", "gallery")
    q, g = data["final"]["query"], data["final"]["gallery"]
    assert len(q["labels"]) == 9 and len(g["labels"]) == 24
    assert not set(q["index"].tolist()) & set(g["index"].tolist())  # distinct files: nothing to exclude
    # scikit-learn: every gallery image ranked for each query; the query itself is never in the gallery
    nn = NearestNeighbors(n_neighbors=len(g["labels"])).fit(g["embeddings"])
    order = nn.kneighbors(q["embeddings"], return_distance=False)
    same = g["labels"][order] == q["labels"][:, None]
    big_r = np.array([(g["labels"] == y).sum() for y in q["labels"]])
    assert (big_r == 6).all()
    hits = same & (np.arange(1, same.shape[1] + 1) <= big_r[:, None])
    precision = np.cumsum(hits, 1) / np.arange(1, hits.shape[1] + 1)
    assert m["p_at_1"] == pytest.approx(same[:, 0].mean(), abs=1e-6)
    assert m["map_at_r"] == pytest.approx(np.mean((precision * hits).sum(1) / big_r), abs=1e-6)
    assert m["r_precision"] == pytest.approx(np.mean(hits.sum(1) / big_r), abs=1e-6)
    for k in (1, 2, 4):
        assert m[f"recall_at_{k}"] == pytest.approx(same[:, :k].any(1).mean(), abs=1e-6)
    # the gallery-only class is stored with the gallery and ranked, never a query's right answer
    distractor = sorted(TRAIN + QUERY + (DISTRACTOR,)).index(DISTRACTOR)
    assert (g["labels"] == distractor).sum() == 6 and distractor not in q["labels"]


def test_a_folder_without_gallery_images_is_one_line_exit_2(tmp_path, subprocess_env):
    root = tmp_path / "qg"
    make_folder(root, {"train": TRAIN, "query": QUERY})
    (root / "gallery").mkdir()
    args = [PYTHON, "-m", "runner.train", "--out", str(tmp_path / "runs"), "--set", f"data.root={root}"]
    r = subprocess.run(args + [x for s in SETS for x in ("--set", s)], cwd=ROOT, env=subprocess_env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "data.root" in lines[0] and "gallery/ holds no images" in lines[0], r.stderr


def test_official_split_of_a_plain_class_folder_is_refused_before_loading(tmp_path):
    from runner.config import ConfigError
    from runner.data.registry import check_data
    make_folder(tmp_path / "plain", {".": TRAIN})
    with pytest.raises(ConfigError, match="data.split.*train/, query/ and gallery/"):
        check_data(DataConfig(name="folder", root=str(tmp_path / "plain"), split="official"))
    check_data(DataConfig(name="folder", root=str(tmp_path / "plain")))  # stratified: fine
