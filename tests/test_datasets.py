"""Loaders of runner.datasets on real files written to tmp_path (no mocks), packing and the CLI."""

import gzip
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from runner.config import ConfigError, DataConfig
from runner.data import describe_data, load_dataset, n_train_classes, split_dataset
from runner.data.lfw import LFW_PAIR_FILES
from runner.data.mnist import read_idx
from runner.data.__main__ import main as pack_main
from runner.data.__main__ import pack
from runner.data.packed import read_pack
from runner.data.synthetic_signs import FAMILIES, IMAGES_PER_CLASS, generate_signs

REPO = Path(__file__).resolve().parents[1]
MNIST_10K = REPO / "tests" / "assets" / "mnist-10k"
COLOURS = {"a_red": (220, 30, 30), "b_green": (30, 200, 40), "c_blue": (30, 40, 210)}


# ---------------------------------------------------------------- writers of the real on-disk formats

def write_idx(path: Path, array: np.ndarray) -> None:
    """idx: two zero bytes, type 0x08 (ubyte), ndim, big-endian dims, then the data (gzip if .gz)."""
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def make_mnist(root: Path, gz_train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """train (gzip) + t10k (plain) idx files of 28×28 images; returns all images and labels, train first."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    y = np.tile(np.arange(10, dtype=np.uint8), 5)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz_train else ""
    write_idx(root / f"train-images-idx3-ubyte{ext}", x[:30])
    write_idx(root / f"train-labels-idx1-ubyte{ext}", y[:30])
    write_idx(root / "t10k-images-idx3-ubyte", x[30:])
    write_idx(root / "t10k-labels-idx1-ubyte", y[30:])
    return x, y


def make_folder(root: Path, grey: bool = False) -> list[tuple[str, int]]:
    """Three classes of solid-colour PNG and JPG files of mixed sizes; returns (class, colour id) per file."""
    sizes = [(40, 30), (64, 64), (300, 200), (17, 23)]
    files = []
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            img = Image.new("RGB", (w, h), rgb)
            img = img.convert("L") if grey else img
            img.save(root / name / f"{i:03d}.{'png' if i % 2 else 'jpg'}", quality=95)
            files.append((name, i))
    (root / "a_red" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    (root / "empty_class").mkdir()  # ignored: no images
    return files


def make_lfw(data_home: Path, counts: dict[str, int]) -> dict[tuple[int, int], str]:
    """The layout fetch_lfw_people reads: lfw_home/lfw_funneled/<Name>/<Name>_0001.jpg + pairs*.txt.

    Each 250×250 face is a solid colour coding (person, file); returns colour code -> file name.
    """
    home = data_home / "lfw_home"
    codes = {}
    for p, (person, n) in enumerate(sorted(counts.items())):
        (home / "lfw_funneled" / person).mkdir(parents=True)
        for i in range(n):
            name = f"{person}_{i + 1:04d}.jpg"
            Image.new("RGB", (250, 250), (40 + 40 * p, 30 + 50 * i, 128)).save(home / "lfw_funneled" / person / name,
                                                                                quality=95)
            codes[(p, i)] = f"{person}/{name}"
    for pairs in LFW_PAIR_FILES:  # read by fetch_lfw_pairs only, but fetch_lfw_people checks they exist
        (home / pairs).write_text("1\t1\nAda_Lovelace\t1\t2\n")
    return codes


LFW_PEOPLE = {"Ada_Lovelace": 4, "Alan_Turing": 3, "Grace_Hopper": 3, "Kurt_Goedel": 2, "Emmy_Noether": 5}


@pytest.fixture(scope="module")
def signs():
    return generate_signs()


@pytest.fixture
def dataset_cfg(request, tmp_path):
    """A DataConfig per loader, over files written to tmp_path."""
    name = request.param
    if name == "mnist":
        make_mnist(tmp_path / "mnist")
        return DataConfig(name="mnist", root=str(tmp_path / "mnist"))
    if name == "folder":
        make_folder(tmp_path / "crops")
        return DataConfig(name="folder", root=str(tmp_path / "crops"), image_size=16)
    if name == "lfw":
        make_lfw(tmp_path, LFW_PEOPLE)
        return DataConfig(name="lfw", root=str(tmp_path), image_size=24, min_images_per_class=3)
    if name == "h5":
        make_folder(tmp_path / "crops")
        pack("folder", str(tmp_path / "crops"), tmp_path / "crops.h5", image_size=16)
        return DataConfig(name="h5", root=str(tmp_path / "crops.h5"))
    return DataConfig(name=name)


# ---------------------------------------------------------------- MNIST

def test_idx_round_trip_gzip_and_plain(tmp_path):
    x, y = make_mnist(tmp_path)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), x[:30])
    assert np.array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte"), y[30:])
    ds = load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert ds.images.shape == (50, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert np.array_equal(ds.images[:, 0].numpy(), x) and np.array_equal(ds.labels.numpy(), y)
    assert ds.index.tolist() == list(range(50)) and ds.meta["family"] == "mnist"
    assert ds.meta["splits"] == "train+t10k"


def test_mnist_reads_whichever_split_is_present(tmp_path):
    x, y = make_mnist(tmp_path, gz_train=False)
    for f in tmp_path.glob("train-*"):
        f.unlink()
    ds = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))
    assert np.array_equal(ds.images[:, 0].numpy(), x[30:]) and ds.class_names[9] == "Ankle boot"


def test_mnist_missing_labels_and_bad_magic(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ConfigError, match="magic 2051"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))


def test_real_mnist_test_set():
    ds = load_dataset(DataConfig(name="mnist", root=str(MNIST_10K)))
    assert ds.images.shape == (10_000, 1, 28, 28) and len(ds.class_names) == 10
    assert torch.bincount(ds.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------- class folders

def test_folder_labels_names_and_resize(tmp_path):
    files = make_folder(tmp_path)
    ds = load_dataset(DataConfig(name="folder", root=str(tmp_path), image_size=32))
    assert ds.class_names == list(COLOURS) and ds.images.shape == (len(files), 3, 32, 32)
    assert ds.labels.tolist() == [list(COLOURS).index(name) for name, _ in files]
    mean_rgb = ds.images.float().mean((2, 3))
    target = torch.tensor([COLOURS[name] for name, _ in files], dtype=torch.float)
    assert (mean_rgb - target).abs().max() < 6  # JPEG is lossy, resizing a solid colour is not
    assert load_dataset(DataConfig(name="folder", root=str(tmp_path))).images.shape[-1] == 64


def test_folder_all_grey_keeps_one_channel(tmp_path):
    make_folder(tmp_path, grey=True)
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=8)
    assert load_dataset(cfg).images.shape[1] == 1 == describe_data(cfg).channels


def test_folder_broken_image_names_the_file(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "b_green" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ConfigError) as err:
        load_dataset(DataConfig(name="folder", root=str(tmp_path)))
    assert "broken.png" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- LFW through scikit-learn

def test_lfw_reads_the_sklearn_layout(tmp_path):
    codes = make_lfw(tmp_path, LFW_PEOPLE)
    ds = load_dataset(DataConfig(name="lfw", root=str(tmp_path), image_size=32, min_images_per_class=3))
    assert ds.class_names == ["Ada Lovelace", "Alan Turing", "Emmy Noether", "Grace Hopper"]
    assert ds.images.shape == (15, 3, 32, 32) and ds.meta["family"] == "faces"
    files = sorted(codes.values())  # index = position in the sorted list of all LFW files
    rgb = ds.images.float().mean((2, 3))
    for k in range(len(ds)):
        person, i = int(round((rgb[k, 0].item() - 40) / 40)), int(round((rgb[k, 1].item() - 30) / 50))
        assert files[ds.index[k]] == codes[(person, i)]
        assert ds.class_names[ds.labels[k]].replace(" ", "_") == codes[(person, i)].split("/")[0]


def test_lfw_without_pairs_files_says_what_to_put_where(tmp_path):
    make_lfw(tmp_path, LFW_PEOPLE)
    (tmp_path / "lfw_home" / "pairs.txt").unlink()
    with pytest.raises(ConfigError, match="lfw_home/lfw_funneled/<Person_Name>") as err:
        load_dataset(DataConfig(name="lfw", root=str(tmp_path)))
    assert err.value.key == "data.root"


def test_lfw_unwritable_cache_is_a_config_error(tmp_path):
    make_lfw(tmp_path, LFW_PEOPLE)
    (tmp_path / "lfw_home" / "joblib").write_text("a file where sklearn wants its cache folder")
    with pytest.raises(ConfigError, match="lfw_home/joblib"):
        load_dataset(DataConfig(name="lfw", root=str(tmp_path), min_images_per_class=3))


# ---------------------------------------------------------------- missing roots

@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "folder", "lfw", "h5"])
@pytest.mark.parametrize("root", [None, "does/not/exist"])
def test_missing_root_is_a_one_line_config_error(name, root, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_dataset(DataConfig(name=name, root=root if root is None else str(tmp_path / root)))
    assert err.value.key == "data.root" and isinstance(err.value, ValueError)
    assert "docs/datasets.md" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "does").exists()  # nothing created (sklearn would create lfw_home)


# ---------------------------------------------------------------- synthetic signs

def test_signs_shape_and_hierarchy(signs):
    n_classes = sum(len(f[-1]) for f in FAMILIES.values())
    assert n_classes == 43 and signs.images.shape == (43 * IMAGES_PER_CLASS, 3, 64, 64)
    assert signs.images.dtype == torch.uint8 and torch.bincount(signs.labels).tolist() == [IMAGES_PER_CLASS] * 43
    assert len(signs.parents) == len(signs.class_names) and set(signs.parents) == set(FAMILIES)
    for name, parent in zip(signs.class_names, signs.parents):
        assert name.split("/")[0] == parent  # the parent is a property of the class, so of all its images
    assert signs.meta["family"] == "signs" and signs.images.float().std() > 30


def test_signs_are_deterministic():
    a, b = generate_signs(32, per_class=3), generate_signs(32, per_class=3)
    assert torch.equal(a.images, b.images) and a.class_names == b.class_names and a.parents == b.parents
    assert a.images.shape == (43 * 3, 3, 32, 32)
    assert not torch.equal(a.images[0], a.images[1])  # jitter: two images of a class differ


# ---------------------------------------------------------------- packing

def assert_same(a, b):
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.index, b.index)
    assert a.class_names == b.class_names and a.parents == b.parents and a.meta["family"] == b.meta["family"]


def test_pack_round_trip_folder(tmp_path):
    make_folder(tmp_path / "crops")
    ds, out = pack("folder", str(tmp_path / "crops"), tmp_path / "crops.h5", image_size=24, compression="lzf")
    assert_same(ds, read_pack(str(out)))
    assert_same(load_dataset(DataConfig(name="folder", root=str(tmp_path / "crops"), image_size=24)),
                load_dataset(DataConfig(name="h5", root=str(out))))
    assert read_pack(str(out)).meta["source_root"] == str((tmp_path / "crops").resolve())
    assert list(tmp_path.glob("*.tmp")) == [] and list(tmp_path.glob(".*.tmp")) == []


def test_pack_round_trip_signs(tmp_path, signs):
    _, out = pack("signs", "-", tmp_path / "signs.h5", compression="gzip")
    assert_same(signs, load_dataset(DataConfig(name="h5", root=str(out))))


def test_per_image_arrays_survive_subset_drop_and_pack(tmp_path):
    from runner.data import ImageSet, drop_rare_classes
    from runner.data.packed import write_pack
    n = 7
    ds = ImageSet(torch.arange(n * 12, dtype=torch.uint8).reshape(n, 1, 3, 4), torch.tensor([0, 0, 1, 2, 2, 2, 0]),
                  ["a", "b", "c"], torch.arange(10, 10 + n), partition=np.array(["train"] * 4 + ["test"] * 3),
                  files=np.array([f"x/{i}_{i % 2}.png" for i in range(n)]), groups=np.array(list("pqrstuv")))
    kept = drop_rare_classes(ds, 2)  # class b has one image: row 2 goes, labels are renumbered
    assert kept.index.tolist() == [10, 11, 13, 14, 15, 16]
    assert kept.partition.tolist() == ["train", "train", "train", "test", "test", "test"]
    assert kept.files[2] == "x/3_1.png" and kept.groups.tolist() == list("pqstuv")
    back = read_pack(str(write_pack(kept, tmp_path / "x.h5", {"name": "test"})))
    for key in ("partition", "files", "groups"):
        assert getattr(back, key).tolist() == getattr(kept, key).tolist()
    assert torch.equal(back.images, kept.images) and back.labels.tolist() == [0, 0, 1, 1, 1, 0]
    plain = read_pack(str(write_pack(ImageSet(ds.images, ds.labels, ds.class_names, ds.index), tmp_path / "y.h5", {})))
    assert plain.partition is None and plain.files is None and plain.groups is None


def test_pack_cli(tmp_path, subprocess_env):
    make_folder(tmp_path / "crops")
    out = tmp_path / "packed.h5"
    cmd = [sys.executable, "-m", "runner.data", "pack", str(tmp_path / "crops"), str(out), "--image-size", "20"]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "packed 12 images of 3 classes" in done.stdout
    assert_same(load_dataset(DataConfig(name="folder", root=str(tmp_path / "crops"), image_size=20)),
                load_dataset(DataConfig(name="h5", root=str(out))))


def test_pack_cli_missing_source_exits_2(tmp_path, capsys):
    assert pack_main(["pack", str(tmp_path / "missing"), str(tmp_path / "out.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data.root:") and err.count("\n") == 1 and not (tmp_path / "out.h5").exists()


# ---------------------------------------------------------------- splits on every loader

@pytest.mark.parametrize("dataset_cfg", ["mnist", "folder", "lfw", "signs", "h5", "digits"], indirect=True)
def test_load_and_split(dataset_cfg):
    """Every loader loads and splits; describe_data (headers and listings only) says what it loads."""
    shape = describe_data(dataset_cfg)
    ds = load_dataset(dataset_cfg)
    assert ds.images.dtype == torch.uint8 and ds.images.ndim == 4 and ds.meta["family"]
    assert (shape.channels, shape.height, shape.width) == tuple(ds.images.shape[1:])
    assert shape.class_counts == tuple(torch.bincount(ds.labels).tolist())
    for split in ("stratified", "class_disjoint"):
        cfg = replace(dataset_cfg, split=split, test_fraction=0.34)
        splits = split_dataset(ds, cfg)
        train, test = set(splits.train.index.tolist()), set(splits.test.index.tolist())
        assert len(splits.train) + len(splits.test) == len(ds) and not train & test
        train_classes, test_classes = set(splits.train.labels.tolist()), set(splits.test.labels.tolist())
        assert n_train_classes(len(shape.class_counts), cfg) == len(train_classes)
        if split == "stratified":
            assert train_classes == test_classes == set(range(len(ds.class_names)))
        else:
            assert test_classes and not train_classes & test_classes
