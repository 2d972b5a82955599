"""Splits and samplers: the properties the training loop relies on."""

import numpy as np
import pytest
import torch

from runner.config import ConfigError, DataConfig
from runner.data import load_dataset, split_dataset
from runner.data.samplers import PKSampler, RandomBatchSampler


def test_digits_loads_as_uint8_images():
    ds = load_dataset(DataConfig())
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.uint8
    assert int(ds.images.max()) == 255 and len(ds.class_names) == 10


def test_stratified_split_is_seeded_disjoint_and_per_class():
    ds = load_dataset(DataConfig())
    a, b = split_dataset(ds, DataConfig()), split_dataset(ds, DataConfig())
    assert torch.equal(a.train.index, b.train.index)
    assert set(a.train.index.tolist()).isdisjoint(a.test.index.tolist())
    assert len(a.train) + len(a.test) == len(ds)
    for c in range(10):
        n = int((ds.labels == c).sum())
        assert int((a.test.labels == c).sum()) == round(0.2 * n)
    other = split_dataset(ds, DataConfig(split_seed=1))
    assert not torch.equal(other.test.index, a.test.index)


def test_class_disjoint_split_and_val_and_cap():
    ds = load_dataset(DataConfig())
    s = split_dataset(ds, DataConfig(split="class_disjoint", val_fraction=0.25, n_per_class=20))
    assert set(s.train.labels.tolist()).isdisjoint(s.test.labels.tolist())
    assert s.val is not None and set(s.val.index.tolist()).isdisjoint(s.train.index.tolist())
    # the cap applies before the val split: at most 20 per class in train + val together
    counts = torch.bincount(torch.cat([s.train.labels, s.val.labels]))
    assert int(counts.max()) <= 20


def test_pk_sampler_shapes_and_seeding():
    labels = np.repeat(np.arange(12), 10)
    s = PKSampler(labels, batch_size=16, samples_per_class=4, seed=3)
    batches = s.batches(1)
    assert len(batches) == len(s) == 120 // 16
    for b in batches:
        assert len(b) == 16
        _, counts = np.unique(labels[b], return_counts=True)
        assert len(counts) == 4 and set(counts) == {4}
    again = PKSampler(labels, 16, 4, seed=3).batches(1)
    assert all(np.array_equal(x, y) for x, y in zip(batches, again))
    assert not all(np.array_equal(x, y) for x, y in zip(batches, s.batches(2)))


def test_pk_sampler_shards_are_disjoint_classes_and_union_is_global_batch():
    labels = np.repeat(np.arange(12), 10)
    full = PKSampler(labels, 32, 4, seed=0).batches(5)
    r0 = PKSampler(labels, 16, 4, seed=0, rank=0, world_size=2).batches(5)
    r1 = PKSampler(labels, 16, 4, seed=0, rank=1, world_size=2).batches(5)
    assert len(r0) == len(r1) == len(full)
    for f, a, b in zip(full, r0, r1):
        assert set(labels[a]).isdisjoint(labels[b])
        assert sorted(np.concatenate([a, b])) == sorted(f)


def test_pk_sampler_small_classes_use_replacement():
    labels = np.array([0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    for b in PKSampler(labels, 8, 4, seed=0).batches(0):
        assert len(b) == 8


def test_pk_sampler_with_few_classes_raises_k():
    labels = np.repeat(np.arange(10), 20)
    s = PKSampler(labels, 128, 4, seed=0)
    assert (s.p, s.k) == (10, 12)
    _, counts = np.unique(labels[s.batches(0)[0]], return_counts=True)
    assert len(counts) == 10 and set(counts) == {12}


def test_pk_sampler_needs_two_classes_per_rank():
    with pytest.raises(ConfigError, match="train.batch_size"):
        PKSampler(np.repeat(np.arange(3), 5), 16, 4, seed=0, world_size=2)


def test_random_sampler_covers_each_sample_at_most_once():
    s = RandomBatchSampler(np.zeros(100), 10, seed=0)
    flat = np.concatenate(s.batches(0))
    assert len(flat) == 100 and len(set(flat)) == 100


# ---------------------------------------------------------------- grouped splits (data.group_by)

TRACK = r"^(\d+)_"


def make_tracks(root, tracks=(4, 4, 5), frames=3):
    """GTSRB-style class folders of <track>_<frame>.png; track numbers restart in every class folder."""
    from PIL import Image
    for c, n_tracks in enumerate(tracks):
        (root / f"class_{c}").mkdir(parents=True)
        for t in range(n_tracks):
            for f in range(frames):
                Image.new("L", (6, 6), 20 * t + f).save(root / f"class_{c}" / f"{t:05d}_{f:05d}.png")


def group_sides(splits):
    """(class, track) -> the set of split parts holding its images."""
    sides = {}
    for part in ("train", "test", "val"):
        ds = getattr(splits, part)
        for label, group in zip(ds.labels.tolist(), ds.groups.tolist()):
            sides.setdefault((label, group), set()).add(part)
    return sides


def test_grouped_split_keeps_each_track_on_one_side(tmp_path):
    make_tracks(tmp_path)
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=8, group_by=TRACK, test_fraction=0.25,
                     val_fraction=0.34)
    ds = load_dataset(cfg)
    assert ds.groups.tolist()[:4] == ["00000", "00000", "00000", "00001"]
    s = split_dataset(ds, cfg)
    sides = group_sides(s)
    assert len(sides) == 13 and all(len(v) == 1 for v in sides.values())  # 4 + 4 + 5 tracks, none cut
    for part in (s.train, s.test, s.val):  # every class on every side, with whole tracks
        assert set(part.labels.tolist()) == {0, 1, 2}
    assert len(s.train) + len(s.test) + len(s.val) == len(ds)
    record = s.train.meta["split"]
    assert record["group_by"] == TRACK and record["groups"] == {"train": 7, "test": 3, "val": 3}
    again = split_dataset(ds, cfg)
    assert torch.equal(again.test.index, s.test.index)
    other = split_dataset(ds, DataConfig(name="folder", group_by=TRACK, test_fraction=0.25, split_seed=5))
    assert not torch.equal(other.test.index, s.test.index)
    # image by image, the same settings cut tracks (the case grouping exists for)
    plain = split_dataset(ds, DataConfig(name="folder", test_fraction=0.25, val_fraction=0.34))
    assert any(len(v) > 1 for v in group_sides(plain).values())


def test_grouped_split_class_with_one_track_is_an_error(tmp_path):
    make_tracks(tmp_path, tracks=(3, 1, 3))
    cfg = DataConfig(name="folder", root=str(tmp_path), image_size=8, group_by=TRACK)
    with pytest.raises(ConfigError, match="class 'class_1' has one: '00000'") as err:
        split_dataset(load_dataset(cfg), cfg)
    assert err.value.key == "data.group_by" and "\n" not in str(err.value)


def test_group_by_needs_file_names_that_match(tmp_path):
    make_tracks(tmp_path)
    from PIL import Image
    Image.new("L", (6, 6)).save(tmp_path / "class_0" / "stray.png")
    with pytest.raises(ConfigError, match="not 'stray.png'"):
        load_dataset(DataConfig(name="folder", root=str(tmp_path), group_by=TRACK))
    with pytest.raises(ConfigError, match="digits has none") as err:
        load_dataset(DataConfig(group_by=TRACK))
    assert err.value.key == "data.group_by"


@pytest.mark.parametrize("pattern,expected", [("^\\d+_", "has 0"), ("(\\d+)_(\\d+)", "has 2"),
                                              ("(\\d+", "a regular expression")])
def test_group_by_is_validated(pattern, expected):
    from runner.config import RunConfig
    with pytest.raises(ConfigError, match=expected) as err:
        RunConfig(data=DataConfig(group_by=pattern))
    assert err.value.key == "data.group_by"


def test_ungrouped_splits_are_those_of_before():
    """Index sets pinned from the code before official and grouped splits existed: same seeds, same splits.

    One change on purpose: a class-disjoint run's validation split now holds out whole training
    classes (unseen classes are evaluated on unseen classes), so its pin is of the new split, and its val
    classes are checked to be unseen in train."""
    import hashlib
    import json
    ds = load_dataset(DataConfig())
    pinned = {("stratified", 0, 0.25, None): "5ddbf45ac3a9b004", ("stratified", 7, 0.2, 10): "4be434b9a67e21d5",
              ("class_disjoint", 0, 0.0, None): "90f228f1c0a81479", ("class_disjoint", 1, 0.2, 10): "85e570c16b798dfe"}
    for (split, seed, val, cap), digest in pinned.items():
        s = split_dataset(ds, DataConfig(split=split, split_seed=seed, val_fraction=val, n_per_class=cap,
                                         test_fraction=0.3))
        parts = [s.train.index.tolist(), s.test.index.tolist(), None if s.val is None else s.val.index.tolist()]
        assert hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16] == digest
        if split == "class_disjoint" and s.val is not None:
            assert not set(s.val.labels.tolist()) & set(s.train.labels.tolist())


def test_digits_shape_without_loading_matches_the_set():
    """describe_data knows the digits' class counts without importing scikit-learn; they are the set's."""
    from sklearn.datasets import load_digits
    from runner.config import DataConfig
    from runner.data import describe_data
    shape = describe_data(DataConfig(name="digits"))
    assert shape.class_counts == tuple(np.bincount(load_digits().target).tolist())
