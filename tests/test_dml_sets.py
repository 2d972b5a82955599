"""CUB-200-2011, Cars196, SOP and In-Shop loaders on files written in each set's own layout, and
the official splits of every set that has one (MNIST, LFW, the four benchmarks, packed files)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from runner.config import ConfigError, DataConfig, RunConfig
from runner.data import check_data, load_dataset, split_dataset
from runner.data.__main__ import pack
from runner.data.packed import read_pack
from tests.test_datasets import LFW_PEOPLE, make_lfw, make_mnist

REPO = Path(__file__).resolve().parents[1]
SIZES = [(20, 14), (9, 11), (33, 25)]  # any size: every image is squashed to image_size


def colour(image_id: int) -> tuple[int, int, int]:
    """A solid colour that codes an image's 1-based id, so a test can tell which file a row came from."""
    return (image_id * 37) % 256, (image_id * 91) % 256, 128


def save_jpg(path: Path, image_id: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", SIZES[image_id % len(SIZES)], colour(image_id)).save(path, quality=95)


def assert_pixels_match_ids(ds, first_id: int = 1) -> None:
    """Each row's mean colour is the colour of the file with id index + first_id (JPEG: within a few levels)."""
    target = torch.tensor([colour(int(i) + first_id) for i in ds.index], dtype=torch.float)
    assert (ds.images.float().mean((2, 3)) - target).abs().max() < 8


# ---------------------------------------------------------------- writers of the distributed layouts

CUB_CLASSES = (1, 2, 101, 200)


def make_cub(root: Path, per_class: int = 3) -> Path:
    """CUB_200_2011/ under root: the 200-line classes.txt, images.txt, image_class_labels.txt, images/."""
    cub = root / "CUB_200_2011"
    (cub / "images").mkdir(parents=True)
    folders = {c: f"{c:03d}.Bird_{c}" for c in range(1, 201)}
    (cub / "classes.txt").write_text("".join(f"{c} {folders[c]}\n" for c in range(1, 201)))
    images, labels = [], []
    for c in CUB_CLASSES:
        for k in range(per_class):
            image_id = len(images) + 1
            path = f"{folders[c]}/Bird_{c}_{k:04d}_{900 + image_id}.jpg"
            save_jpg(cub / "images" / path, image_id)
            images.append(f"{image_id} {path}\n")
            labels.append(f"{image_id} {c}\n")
    (cub / "images.txt").write_text("".join(images))
    # listed in another order than images.txt: the loader matches ids, it does not zip lines
    (cub / "image_class_labels.txt").write_text("".join(reversed(labels)))
    (cub / "train_test_split.txt").write_text("".join(f"{i + 1} {i % 2}\n" for i in range(len(images))))
    return cub


CARS_CLASSES = (1, 2, 98, 99, 150, 196)


def make_cars(root: Path, per_class: int = 2) -> list[int]:
    """cars_annos.mat (as scipy.io.loadmat reads the real one) + car_ims/NNNNNN.jpg; returns class per image."""
    classes = [c for c in CARS_CLASSES for _ in range(per_class)]
    classes = [classes[i] for i in np.random.default_rng(0).permutation(len(classes))]
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "relative_im_path", "class", "test"]
    ann = np.zeros((1, len(classes)), dtype=[(f, "O") for f in fields])
    for i, c in enumerate(classes):
        path = f"car_ims/{i + 1:06d}.jpg"
        save_jpg(root / path, i + 1)
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 1, 8, 8)]
        ann[0, i] = (*box, np.array([path]), np.array([[c]], dtype=np.uint8), np.array([[i % 2]], dtype=np.uint8))
    names = np.empty((1, 196), dtype=object)
    names[0, :] = [f"Make{c} Model {2000 + c}" for c in range(1, 197)]
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": ann, "class_names": names})
    return classes


SOP_SUPER = {1: "bicycle", 2: "cabinet", 3: "chair"}
# class_id -> super_class_id; 1-3 in Ebay_train.txt, 4-6 in Ebay_test.txt
SOP_CLASSES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}


def make_sop(root: Path, per_class: int = 2) -> Path:
    """Stanford_Online_Products/ under root: Ebay_train.txt, Ebay_test.txt and <super>_final/ folders."""
    sop = root / "Stanford_Online_Products"
    sop.mkdir(parents=True)
    position = 0
    for part, classes in (("train", (1, 2, 3)), ("test", (4, 5, 6))):
        lines = ["image_id class_id super_class_id path\n"]
        for c in classes:
            for k in range(per_class):
                position += 1
                path = f"{SOP_SUPER[SOP_CLASSES[c]]}_final/{111085122870 + c}_{k}.JPG"
                save_jpg(sop / path, position)
                lines.append(f"{len(lines)} {c} {SOP_CLASSES[c]} {path}\n")  # ids restart at 1 in each file
        (sop / f"Ebay_{part}.txt").write_text("".join(lines))
    return sop


INSHOP_ITEMS = {"id_00000002": "train", "id_00000007": "train", "id_00000011": "train",
                "id_00000003": "test", "id_00000016": "test", "id_00000021": "test"}


def make_inshop(root: Path, eval_folder: bool = False) -> list[str]:
    """list_eval_partition.txt (count, header, rows) + img/; test items get 1 query and 2 gallery images."""
    rows = []
    for item, part in INSHOP_ITEMS.items():
        statuses = ["train", "train"] if part == "train" else ["query", "gallery", "gallery"]
        for k, status in enumerate(statuses):
            name = f"img/WOMEN/Dresses/{item}/{k + 1:02d}_{k + 1}_front.jpg"
            save_jpg(root / name, len(rows) + 1)
            rows.append((name, item, status))
    listing = root / "Eval" / "list_eval_partition.txt" if eval_folder else root / "list_eval_partition.txt"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text(f"{len(rows)}\nimage_name item_id evaluation_status\n"
                       + "".join(f"{n}   {i}      {s}\n" for n, i, s in rows))  # the real file pads with spaces
    return [s for _, _, s in rows]


def cfg_for(name: str, root: Path, **kw) -> DataConfig:
    return DataConfig(name=name, root=str(root), image_size=16, **kw)


# ---------------------------------------------------------------- CUB-200-2011

def test_cub_reads_the_archive_layout(tmp_path):
    cub = make_cub(tmp_path)
    for root in (tmp_path, cub):  # data.root may be the unpacked folder or the folder holding it
        ds = load_dataset(cfg_for("cub", root))
        assert ds.images.shape == (12, 3, 16, 16) and ds.images.dtype == torch.uint8
        assert ds.class_names == [f"{c:03d}.Bird_{c}" for c in CUB_CLASSES]
        assert ds.index.tolist() == list(range(12))  # 1-based image ids - 1
        for k in range(len(ds)):  # each file is labelled with the class of its own id
            assert ds.files[k].split("/")[1] == ds.class_names[ds.labels[k]]
        assert_pixels_match_ids(ds)
        assert ds.partition.tolist() == ["train"] * 6 + ["test"] * 6
        assert ds.meta["family"] == "birds" and ds.meta["root"] == str(cub)


def test_cub_official_split_is_classes_1_to_100(tmp_path):
    make_cub(tmp_path)
    s = split_dataset(load_dataset(cfg_for("cub", tmp_path)), cfg_for("cub", tmp_path, split="official"))
    assert {s.train.class_names[c] for c in s.train.labels.tolist()} == {"001.Bird_1", "002.Bird_2"}
    assert {s.test.class_names[c] for c in s.test.labels.tolist()} == {"101.Bird_101", "200.Bird_200"}
    assert s.query is None and s.gallery is None
    assert s.train.meta["split"]["official"] == "classes 1-100 train, 101-200 test"
    assert s.test.meta["split"]["sizes"] == {"train": 6, "test": 6}


@pytest.mark.parametrize("missing", ["images.txt", "image_class_labels.txt", "classes.txt", "images"])
def test_cub_missing_file_names_it_and_the_layout(tmp_path, missing):
    cub = make_cub(tmp_path)
    target = cub / missing
    if target.is_dir():
        for f in sorted(target.rglob("*"), reverse=True):
            f.rmdir() if f.is_dir() else f.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(ConfigError) as err:
        load_dataset(cfg_for("cub", tmp_path))
    text = str(err.value)
    assert err.value.key == "data.root" and "\n" not in text
    assert f"missing {missing} " in text and "image_class_labels.txt (<image_id> <class_id>)" in text
    assert "docs/datasets.md" in text


def test_cub_missing_image_and_bad_line(tmp_path):
    cub = make_cub(tmp_path)
    victim = next((cub / "images" / "101.Bird_101").iterdir())
    victim.unlink()
    with pytest.raises(ConfigError, match=victim.name) as err:
        load_dataset(cfg_for("cub", tmp_path))
    assert "images.txt" in str(err.value) and "\n" not in str(err.value)  # the layout comes along
    (cub / "images.txt").write_text("1 a.jpg extra\n")
    with pytest.raises(ConfigError, match=r"line 1: '1 a.jpg extra'"):
        load_dataset(cfg_for("cub", tmp_path))


# ---------------------------------------------------------------- Cars196

def test_cars_reads_cars_annos_mat(tmp_path):
    classes = make_cars(tmp_path)
    ds = load_dataset(cfg_for("cars", tmp_path))
    assert len(ds) == len(classes) and ds.index.tolist() == list(range(len(classes)))
    assert ds.class_names == [f"Make{c} Model {2000 + c}" for c in CARS_CLASSES]  # names from class_names
    assert [CARS_CLASSES[c] for c in ds.labels.tolist()] == classes
    assert ds.files[0] == "car_ims/000001.jpg" and ds.meta["family"] == "cars"
    assert_pixels_match_ids(ds)
    s = split_dataset(ds, cfg_for("cars", tmp_path, split="official"))
    assert sorted({CARS_CLASSES[c] for c in s.train.labels.tolist()}) == [1, 2, 98]
    assert sorted({CARS_CLASSES[c] for c in s.test.labels.tolist()}) == [99, 150, 196]


@pytest.mark.parametrize("missing", ["cars_annos.mat", "car_ims"])
def test_cars_missing_file_names_it_and_the_layout(tmp_path, missing):
    make_cars(tmp_path)
    if missing == "car_ims":
        for f in (tmp_path / "car_ims").iterdir():
            f.unlink()
        (tmp_path / "car_ims").rmdir()
    else:
        (tmp_path / missing).unlink()
    with pytest.raises(ConfigError) as err:
        load_dataset(cfg_for("cars", tmp_path))
    text = str(err.value)
    assert f"missing {missing} " in text and "relative_im_path, class, test" in text and "\n" not in text


def test_cars_mat_without_the_fields_is_refused(tmp_path):
    make_cars(tmp_path)
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"annotations": np.zeros((1, 2), dtype=[("fname", "O")])})
    with pytest.raises(ConfigError, match="annotations lacks relative_im_path, class, test"):
        load_dataset(cfg_for("cars", tmp_path))
    (tmp_path / "cars_annos.mat").write_text("not a MATLAB file")
    with pytest.raises(ConfigError, match="scipy.io.loadmat"):
        load_dataset(cfg_for("cars", tmp_path))


# ---------------------------------------------------------------- Stanford Online Products

def test_sop_reads_ebay_lists_and_keeps_super_classes(tmp_path):
    sop = make_sop(tmp_path)
    ds = load_dataset(cfg_for("sop", tmp_path))
    assert ds.class_names == ["1", "2", "3", "4", "5", "6"] and len(ds) == 12
    assert ds.parents == [SOP_SUPER[SOP_CLASSES[c]] for c in range(1, 7)]
    assert ds.index.tolist() == list(range(12))  # Ebay_train.txt rows, then Ebay_test.txt rows
    assert_pixels_match_ids(ds)
    assert ds.partition.tolist() == ["train"] * 6 + ["test"] * 6 and ds.meta["root"] == str(sop)
    s = split_dataset(ds, cfg_for("sop", tmp_path, split="official"))
    assert s.train.class_names == ds.class_names and set(s.test.labels.tolist()) == {3, 4, 5}
    assert s.test.parents == ds.parents  # the hierarchy reaches the test split, whose classes it describes


def test_sop_missing_test_list_names_it(tmp_path):
    (make_sop(tmp_path) / "Ebay_test.txt").unlink()
    with pytest.raises(ConfigError) as err:
        load_dataset(cfg_for("sop", tmp_path))
    assert "missing Ebay_test.txt " in str(err.value) and "<super_class_id> <path>" in str(err.value)


def test_sop_product_in_two_super_classes_is_refused(tmp_path):
    sop = make_sop(tmp_path)
    lines = (sop / "Ebay_test.txt").read_text().splitlines()
    lines[-1] = lines[-1].replace("chair_final", "bicycle_final")
    (sop / "Ebay_test.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="class_id 6 is in chair and bicycle"):
        load_dataset(cfg_for("sop", tmp_path))


# ---------------------------------------------------------------- In-Shop

@pytest.mark.parametrize("eval_folder", [False, True])
def test_inshop_official_split_has_query_and_gallery(tmp_path, eval_folder):
    statuses = make_inshop(tmp_path, eval_folder)
    ds = load_dataset(cfg_for("inshop", tmp_path))
    assert ds.partition.tolist() == statuses and ds.class_names == sorted(INSHOP_ITEMS)
    assert_pixels_match_ids(ds)
    s = split_dataset(ds, cfg_for("inshop", tmp_path, split="official"))
    assert set(s.query.partition.tolist()) == {"query"} and set(s.gallery.partition.tolist()) == {"gallery"}
    assert sorted(s.query.index.tolist() + s.gallery.index.tolist()) == s.test.index.tolist()
    test_items = {i for i, p in INSHOP_ITEMS.items() if p == "test"}
    assert {ds.class_names[c] for c in s.query.labels.tolist()} == test_items
    assert {ds.class_names[c] for c in s.gallery.labels.tolist()} == test_items
    assert set(s.train.labels.tolist()).isdisjoint(s.test.labels.tolist())
    assert s.train.meta["split"]["sizes"] == {"train": 6, "test": 9, "query": 3, "gallery": 6}


def test_inshop_missing_and_truncated_list(tmp_path):
    make_inshop(tmp_path)
    listing = tmp_path / "list_eval_partition.txt"
    listing.write_text(listing.read_text().replace("15\n", "16\n", 1))
    with pytest.raises(ConfigError, match="16 images as its first line says, got 15"):
        load_dataset(cfg_for("inshop", tmp_path))
    listing.unlink()
    with pytest.raises(ConfigError) as err:
        load_dataset(cfg_for("inshop", tmp_path))
    assert "missing list_eval_partition.txt " in str(err.value) and "query or gallery" in str(err.value)


# ---------------------------------------------------------------- every loader's root, packing, the pack CLI

@pytest.mark.parametrize("name", ["cub", "cars", "sop", "inshop"])
def test_missing_root_names_the_layout(name, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_dataset(DataConfig(name=name, root=str(tmp_path / "nowhere")))
    assert err.value.key == "data.root" and "docs/datasets.md" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="an existing directory"):
        check_data(DataConfig(name=name, root=str(tmp_path / "nowhere")))


def test_pack_keeps_partition_files_and_groups(tmp_path):
    make_inshop(tmp_path / "shop")
    ds, out = pack("inshop", str(tmp_path / "shop"), tmp_path / "shop.h5", image_size=16, group_by=r"^(\d+)_")
    back = read_pack(str(out))
    for key in ("partition", "files", "groups"):
        assert getattr(back, key).tolist() == getattr(ds, key).tolist()
    assert back.groups.tolist()[:3] == ["01", "02", "01"]
    # a run's own group_by is applied to the packed file names
    regrouped = load_dataset(DataConfig(name="h5", root=str(out), group_by=r"_\d+_(\w+)\.jpg$"))
    assert set(regrouped.groups.tolist()) == {"front"}
    h5 = DataConfig(name="h5", root=str(out), split="official")
    a = split_dataset(load_dataset(h5), h5)
    b = split_dataset(ds, cfg_for("inshop", tmp_path / "shop", split="official"))
    for part in ("train", "test", "query", "gallery"):
        assert torch.equal(getattr(a, part).index, getattr(b, part).index)
        assert torch.equal(getattr(a, part).images, getattr(b, part).images)


def test_pack_cli_shows_progress_on_stderr(tmp_path, subprocess_env):
    make_cub(tmp_path / "birds")
    out = tmp_path / "cub.h5"
    cmd = [sys.executable, "-m", "runner.data", "pack", str(tmp_path / "birds"), str(out), "--name", "cub",
           "--image-size", "12"]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "decoding birds" in done.stderr and "12/12" in done.stderr and "100%" in done.stderr
    assert "packed 12 images of 4 classes (own split: test 6, train 6)" in done.stdout
    assert read_pack(str(out)).images.shape == (12, 3, 12, 12)


# ---------------------------------------------------------------- official splits of the older sets

def test_mnist_official_split_is_train_vs_t10k(tmp_path):
    make_mnist(tmp_path)
    cfg = DataConfig(name="mnist", root=str(tmp_path), split="official")
    s = split_dataset(load_dataset(cfg), cfg)
    assert s.train.index.tolist() == list(range(30)) and s.test.index.tolist() == list(range(30, 50))
    for f in tmp_path.glob("train-*"):
        f.unlink()
    with pytest.raises(ConfigError, match="mnist has only test") as err:
        split_dataset(load_dataset(cfg), cfg)
    assert err.value.key == "data.split"


def test_official_split_of_a_set_without_one_names_it(tmp_path):
    cfg = DataConfig(name="digits", split="official")
    with pytest.raises(ConfigError, match="digits has none") as err:
        split_dataset(load_dataset(cfg), cfg)
    assert err.value.key == "data.split" and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="signs has none"):
        check_data(DataConfig(name="signs", split="official"))  # before submission, without loading


def test_lfw_official_split_from_view_1_lists(tmp_path):
    make_lfw(tmp_path, LFW_PEOPLE)
    cfg = DataConfig(name="lfw", root=str(tmp_path), image_size=16, min_images_per_class=3, split="official")
    with pytest.raises(ConfigError, match="share people"):  # make_lfw writes one pair into every file
        split_dataset(load_dataset(cfg), cfg)
    home = tmp_path / "lfw_home"
    (home / "pairsDevTrain.txt").write_text("2\nAda_Lovelace\t1\t2\nAda_Lovelace\t1\tAlan_Turing\t3\n")
    (home / "pairsDevTest.txt").write_text("1\nEmmy_Noether\t1\t4\n")
    s = split_dataset(load_dataset(cfg), cfg)
    names = lambda part: {part.class_names[c] for c in part.labels.tolist()}  # noqa: E731
    assert names(s.train) == {"Ada Lovelace", "Alan Turing"} and names(s.test) == {"Emmy Noether"}
    assert s.train.meta["split"]["unassigned"] == 3  # Grace Hopper is in no pair: in neither part
    # the people lists name everyone, and win over the pairs
    (home / "peopleDevTrain.txt").write_text("3\nAda_Lovelace\t4\nGrace_Hopper\t3\nKurt_Goedel\t2\n")
    (home / "peopleDevTest.txt").write_text("2\nAlan_Turing\t3\nEmmy_Noether\t5\n")
    s = split_dataset(load_dataset(cfg), cfg)
    assert names(s.train) == {"Ada Lovelace", "Grace Hopper"} and names(s.test) == {"Alan Turing", "Emmy Noether"}
    assert s.train.meta["split"]["unassigned"] == 0 and "peopleDevTrain.txt" in s.train.meta["split"]["official"]


def test_split_values_are_validated():
    with pytest.raises(ConfigError, match="expected stratified, class_disjoint or official"):
        RunConfig(data=DataConfig(split="random"))
    assert RunConfig(data=DataConfig(split="official")).data.split == "official"
