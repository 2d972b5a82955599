"""Find your doppelganger: runner.embed and analysis.retrieve --image on images that are in no data set."""

import subprocess

import h5py
import numpy as np
import pytest
from PIL import Image

from runner import store
from runner.config import run_id
from runner.data import load_dataset, split_dataset
from runner.launch.run import run_one
from runner.spec import resolve
from tests.conftest import PYTHON, tiny_layer


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dopp")
    cfg = resolve(tiny_layer(epochs=2))
    assert run_one(cfg, out, progress=False)["status"] == "completed"
    return cfg, store.run_dir(out, run_id(cfg))


def test_embed_reproduces_the_stored_embeddings_of_the_runs_own_images(digits_run, tmp_path, subprocess_env):
    """Test images written to PNG at their own size come back with the embeddings run.h5 stores for them."""
    cfg, rdir = digits_run
    test = split_dataset(load_dataset(cfg.data), cfg.data).test
    folder = tmp_path / "photos"
    folder.mkdir()
    for j in range(5):
        Image.fromarray(test.images[j, 0].numpy()).save(folder / f"img{j}.png")
    r = subprocess.run([PYTHON, "-m", "runner.embed", str(rdir), str(folder), "--out", str(tmp_path / "emb.h5")],
                       env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "emb.h5") as f:
        emb, files = f["embeddings"][()], f["files"].asstr()[()]
        assert f.attrs["run_id"] == run_id(cfg)
    assert [f.rsplit("/", 1)[-1] for f in files] == [f"img{j}.png" for j in range(5)]
    stored = store.read_final(rdir / "run.h5")["test"]["embeddings"][:5]
    np.testing.assert_allclose(emb, stored, atol=1e-5)


def test_retrieve_image_lists_the_nearest_gallery_images(digits_run, tmp_path, subprocess_env):
    """A photo in no data set (a drawn, larger digit): k neighbours, distances sorted and equal to a direct computation."""
    cfg, rdir = digits_run
    photo = np.zeros((32, 32), np.uint8)
    photo[6:26, 14:18] = 255  # a "1", drawn by hand
    Image.fromarray(photo).save(tmp_path / "me.png")
    png = tmp_path / "gallery.png"
    r = subprocess.run([PYTHON, "-m", "analysis.retrieve", str(rdir), "--image", str(tmp_path / "me.png"), "--k", "4",
                        "--gallery", "all", "--out", str(png)], env=subprocess_env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if line.strip()[:2].rstrip(".").isdigit()]
    assert len(rows) == 4 and png.stat().st_size > 0
    dists = [float(line.split("d=")[1].split()[0]) for line in rows]
    assert dists == sorted(dists)
    r2 = subprocess.run([PYTHON, "-m", "runner.embed", str(rdir), str(tmp_path / "me.png"), "--out", str(tmp_path / "me.h5")],
                        env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0, r2.stderr
    with h5py.File(tmp_path / "me.h5") as f:
        q = f["embeddings"][0].astype(np.float64)
    final = store.read_final(rdir / "run.h5")
    gallery = np.concatenate([final["train"]["embeddings"], final["test"]["embeddings"]]).astype(np.float64)
    direct = np.sort(np.sqrt(((gallery - q) ** 2).sum(1)))[:4]
    np.testing.assert_allclose(dists, direct, atol=1e-4)


def test_bad_inputs_are_one_line_and_exit_2(digits_run, tmp_path, subprocess_env):
    cfg, rdir = digits_run
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    cases = [
        (["runner.embed", str(rdir), str(tmp_path / "broken.jpg")], "image"),
        (["runner.embed", str(tmp_path), str(tmp_path / "broken.jpg")], "run"),  # no run.h5 / model.pt
        (["analysis.retrieve", str(rdir), "--image", str(tmp_path / "nothing-here")], "images"),
    ]
    for args, key in cases:
        r = subprocess.run([PYTHON, "-m", *args], env=subprocess_env, capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {key}:"), (args, r.stderr)
    model = rdir / "model.pt"
    model.rename(tmp_path / "model.pt")
    try:
        r = subprocess.run([PYTHON, "-m", "runner.embed", str(rdir), str(tmp_path / "broken.jpg")],
                           env=subprocess_env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "model.pt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        (tmp_path / "model.pt").rename(model)


def test_a_grey_photo_for_a_colour_model_is_refused(tmp_path, subprocess_env):
    cfg = resolve({"data": {"name": "signs", "image_size": 16}, **tiny_layer(epochs=1)})
    run_one(cfg, tmp_path, progress=False)
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(tmp_path / "grey.png")
    r = subprocess.run([PYTHON, "-m", "runner.embed", str(store.run_dir(tmp_path, run_id(cfg))), str(tmp_path / "grey.png")],
                       env=subprocess_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "grey" in r.stderr and len(r.stderr.strip().splitlines()) == 1
