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
