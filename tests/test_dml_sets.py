"""Official splits (data.split: official) of the sets that define one: MNIST's files, LFW's View 1."""

import pytest

from runner.config import ConfigError, DataConfig, RunConfig
from runner.data import check_data, load_dataset, split_dataset
from tests.test_datasets import LFW_PEOPLE, make_lfw, make_mnist


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
