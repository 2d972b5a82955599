"""Stream mode (data.storage: stream | auto): lazy image sets, the DataLoader path, its seeds, packs, auto.

Real files in tmp_path and real DataLoader workers (no mocks); memory mode is the reference.
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from runner import store

from runner.config import ConfigError, DataConfig, RunConfig, build, run_id
from runner.data import load_dataset, split_dataset
from runner.data import streaming
from runner.data.__main__ import pack
from runner.data.augment import policy_for
from runner.data.packed import read_pack
from runner.data.streaming import LazyImages, PackSource, StreamDataset, choose_storage, is_lazy
from runner.dist import DistEnv
from runner.launch.run import prepare_data, run_one
from runner.training.batches import StreamBatches
from runner.training.models import build_model
from runner.training.parts import Parts
from tests.conftest import tiny_layer
from tests.test_ddp import free_port
from tests.test_dml_sets import make_sop


def make_classes(root: Path, n_classes: int = 4, per_class: int = 8, side: int = 40) -> Path:
    """A folder set of textured JPEGs (a class is a colour, each image its own noise), so crops differ."""
    rng = np.random.default_rng(0)
    for c in range(n_classes):
        (root / f"c{c}").mkdir(parents=True)
        base = np.array([(c * 70) % 256, (c * 130) % 256, 90], dtype=np.int16)
        for k in range(per_class):
            noise = rng.integers(-60, 60, (side, side + 8, 3))
            img = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{k:03d}.jpg", quality=90)
    return root


def run_cfg(root: Path, **data) -> RunConfig:
    d = tiny_layer()
    d["data"] = {"name": "folder", "root": str(root), "image_size": 16, "split": "stratified", **data}
    return build(RunConfig, d)


def test_storage_is_checked_and_num_workers_leaves_the_run_id_alone():
    with pytest.raises(ConfigError, match="data.storage"):
        RunConfig(data=DataConfig(storage="disk"))
    with pytest.raises(ConfigError, match="data.num_workers"):
        RunConfig(data=DataConfig(num_workers=-1))
    base = RunConfig()
    assert run_id(RunConfig(data=DataConfig(num_workers=7))) == run_id(base)
    assert run_id(RunConfig(data=DataConfig(storage="memory"))) == run_id(base)  # the default is not hashed
    assert run_id(RunConfig(data=DataConfig(storage="stream"))) != run_id(base)


def test_stream_and_memory_runs_both_finish_with_finite_metrics(tmp_path):
    root = make_classes(tmp_path / "set")
    results = {}
    for storage in ("memory", "stream"):
        cfg = run_cfg(root, storage=storage, num_workers=1)
        r = run_one(cfg, tmp_path / storage, progress=False)
        assert r["status"] == "completed", r
        results[storage] = r["metrics"]
        assert all(math.isfinite(v) for v in r["metrics"].values()), r["metrics"]
        assert 0.0 <= r["metrics"]["recall_at_1"] <= 1.0
    assert set(results["memory"]) == set(results["stream"])  # the same metrics, whichever path


def _epoch_batches(splits, policy, workers: int, epoch: int, seed: int = 3) -> list:
    parts = Parts(None, None, None, None, None, _Sampler(splits.train.labels), policy, torch.device("cpu"), False)
    source = StreamBatches(splits, policy, seed, workers, torch.device("cpu"))
    return [(x.clone(), y.clone()) for x, y in source.train_batches(parts, epoch, torch.Generator())]


class _Sampler:
    """A fixed batch plan with a repeated index (sampling with replacement): the same image twice in a batch."""

    def __init__(self, labels):
        n = len(labels)
        self.plan = [np.array([0, 1, 2, 0, 5, 6]), np.arange(n)[::-1][:6]]

    def batches(self, epoch):
        return self.plan

    def __len__(self):
        return len(self.plan)


def test_zero_and_two_workers_give_identical_batches_and_crops(tmp_path):
    cfg = DataConfig(name="folder", root=str(make_classes(tmp_path / "set")), image_size=16, storage="stream",
                     augment="strong", hflip=True)
    ds = load_dataset(cfg)
    assert is_lazy(ds.images) and ds.images.shape == (32, 3, 16, 16)
    splits = split_dataset(ds, cfg)
    policy = policy_for(cfg, "folder")
    a = _epoch_batches(splits, policy, 0, epoch=1)
    b = _epoch_batches(splits, policy, 2, epoch=1)
    assert len(a) == len(b) == 2
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == torch.float32 and xa.shape == (6, 3, 16, 16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x0 = a[0][0]
    assert not torch.equal(x0[0], x0[3])  # the same image at two positions: two different crops
    other = _epoch_batches(splits, policy, 0, epoch=2)
    assert not torch.equal(other[0][0], x0)  # a new epoch draws new crops
    assert torch.equal(a[0][1], splits.train.labels[[0, 1, 2, 0, 5, 6]])


def test_a_pack_is_read_in_stream_mode_row_by_row(tmp_path):
    root = make_classes(tmp_path / "set", per_class=6)
    ds, out = pack("folder", str(root), tmp_path / "set.h5", image_size=20)
    lazy = load_dataset(DataConfig(name="h5", root=str(out), storage="stream"))
    assert isinstance(lazy.images, LazyImages) and isinstance(lazy.images.source, PackSource)
    assert lazy.images.shape == (24, 3, 20, 20) and torch.equal(lazy.labels, ds.labels)
    stored = read_pack(str(out)).images
    reader = StreamDataset(lazy.images.source, 20, policy_for(DataConfig(), "folder"))
    for row in (0, 7, 23):
        assert torch.equal(reader.read(row), stored[row])
    decoded = lazy.images[[3, 4]].numpy()  # the evaluation transform: resize to 23, centre 20×20
    assert decoded.shape == (2, 3, 20, 20) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(float).mean((2, 3)) - stored[[3, 4]].float().mean((2, 3)).numpy()).max() < 10
    cfg = build(RunConfig, {**tiny_layer(), "data": {"name": "h5", "root": str(out), "storage": "stream",
                                                     "num_workers": 2}})
    r = run_one(cfg, tmp_path / "runs", progress=False)  # the file opened in each of two workers
    assert r["status"] == "completed" and all(math.isfinite(v) for v in r["metrics"].values()), r


def test_auto_streams_when_the_decoded_set_exceeds_the_budget(tmp_path, monkeypatch):
    root = make_classes(tmp_path / "set")
    cfg = DataConfig(name="folder", root=str(root), image_size=16, storage="auto")
    need = 32 * 3 * 16 * 16
    monkeypatch.setattr(streaming, "available_memory", lambda: need)  # half of it is the budget: too small
    ds = load_dataset(cfg)
    assert is_lazy(ds.images) and ds.meta["storage"] == "stream"
    assert "auto -> stream" in ds.meta["storage_reason"]
    monkeypatch.setattr(streaming, "available_memory", lambda: 4 * need)
    ds = load_dataset(cfg)
    assert isinstance(ds.images, torch.Tensor) and ds.meta["storage"] == "memory"
    assert choose_storage(cfg, 32, 3, 16, ranks=4, available=4 * need)[0] == "stream"  # shared by 4 ranks
    assert choose_storage(DataConfig(storage="stream"), 32, 3, 16, available=10**12)[0] == "stream"


def test_official_splits_of_a_streamed_set_keep_their_rows(tmp_path):
    make_sop(tmp_path, per_class=3)
    cfg = DataConfig(name="sop", root=str(tmp_path), image_size=16, split="official", storage="stream")
    memory = split_dataset(load_dataset(DataConfig(**{**cfg.__dict__, "storage": "memory"})), cfg)
    stream = split_dataset(load_dataset(cfg), cfg)
    for part in ("train", "test"):
        m, s = getattr(memory, part), getattr(stream, part)
        assert torch.equal(m.labels, s.labels) and s.files.tolist() == m.files.tolist()
        assert s.images.shape == m.images.shape and s.parents == m.parents
        assert [str(p) for p in s.images.source.paths[s.images.rows]] == s.files.tolist()


def test_streamed_evaluation_gathers_every_row_in_order(tmp_path):
    cfg = DataConfig(name="folder", root=str(make_classes(tmp_path / "set")), image_size=16, storage="stream")
    splits = split_dataset(load_dataset(cfg), cfg)
    source = StreamBatches(splits, policy_for(cfg, "folder"), 0, 0, torch.device("cpu"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 5))
    emb = source.embed_split(model, "test", DistEnv())
    direct = model(torch.from_numpy(splits.test.images.numpy()).float().div(255.0))
    assert emb.shape == (len(splits.test), 5)
    torch.testing.assert_close(emb, direct.detach())


def _stream_rank(rank: int, cfg: RunConfig, out: str, port: int) -> None:
    result = run_one(cfg, out, DistEnv(rank, rank, 2, "127.0.0.1", port, "test"), progress=False)
    assert result["status"] == "completed", result


def test_two_gloo_ranks_stream_and_gather_every_split_in_row_order(tmp_path):
    cfg = build(RunConfig, {**tiny_layer(epochs=1), "data": {"storage": "stream", "num_workers": 0}})
    mp.spawn(_stream_rank, args=(cfg, str(tmp_path), free_port()), nprocs=2, join=True)
    path = store.run_path(tmp_path, run_id(cfg))
    final = store.read_run(path)["final"]
    splits, policy = prepare_data(cfg.data)
    state = torch.load(path.with_name("model.pt"), weights_only=True)["model"]
    model = build_model(cfg.model, cfg.embedding, 1, 8, state["mean"].flatten(), state["std"].flatten())
    model.load_state_dict(state)
    source = StreamBatches(splits, policy, cfg.seed, 0, torch.device("cpu"))
    for split in ("train", "test"):  # each rank embedded every other row; gathered back in order
        assert len(final[split]["embeddings"]) == len(getattr(splits, split))
        np.testing.assert_allclose(final[split]["embeddings"], source.embed_split(model, split, DistEnv()).numpy(),
                                   atol=1e-5)
