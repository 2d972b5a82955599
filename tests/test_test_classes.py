"""data.test_classes: a class-disjoint split with named test classes (digits 0-4 vs 5-9)."""

import pytest

from runner.config import ConfigError, DataConfig, from_dict, run_id
from runner.data import load_dataset, n_train_classes, split_dataset
from runner.spec import resolve

LATER = ["5", "6", "7", "8", "9"]


def test_named_classes_are_the_test_part_and_recorded():
    cfg = resolve({"data": {"split": "class_disjoint", "test_classes": LATER}})
    assert cfg.data.test_classes == tuple(LATER) and hash(cfg.data)  # frozen and hashable: a tuple
    assert from_dict(cfg.to_dict()) == cfg
    s = split_dataset(load_dataset(cfg.data), cfg.data)
    names = lambda part: {s.train.class_names[i] for i in part.labels.tolist()}  # noqa: E731
    assert names(s.train) == {"0", "1", "2", "3", "4"} and names(s.test) == set(LATER)
    assert s.train.meta["split"]["test_classes"] == LATER
    assert n_train_classes(10, cfg.data) == 5
    # the split seed no longer picks the classes
    other = DataConfig(split="class_disjoint", test_classes=tuple(LATER), split_seed=7)
    assert set(split_dataset(load_dataset(other), other).test.labels.tolist()) == {5, 6, 7, 8, 9}


def test_default_run_ids_are_unchanged_by_the_new_field():
    from runner.config import identity
    assert "data.test_classes" not in identity(resolve({}))
    assert run_id(resolve({})) == run_id(resolve({"data": {"test_classes": None}}))


@pytest.mark.parametrize("data, match", [
    ({"test_classes": ["5"]}, "unless data.split is class_disjoint"),
    ({"split": "class_disjoint", "test_classes": []}, "distinct class names"),
    ({"split": "class_disjoint", "test_classes": ["5", "5"]}, "distinct class names"),
    ({"split": "class_disjoint", "test_classes": [5]}, "a list of strings"),
])
def test_bad_test_classes_fail_in_one_line(data, match):
    with pytest.raises(ConfigError, match=match):
        resolve({"data": data})


def test_unknown_or_too_many_names_fail_at_the_split():
    cfg = DataConfig(split="class_disjoint", test_classes=("5", "x"))
    with pytest.raises(ConfigError, match="'x' is not one"):
        split_dataset(load_dataset(cfg), cfg)
    cfg = DataConfig(split="class_disjoint", test_classes=tuple(str(i) for i in range(9)))
    with pytest.raises(ConfigError, match="leaving 2 to train on"):
        split_dataset(load_dataset(cfg), cfg)
