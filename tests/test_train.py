"""End to end on digits: train -> evaluate -> run.h5 -> TensorBoard, resume, failure records."""

import signal
import subprocess

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from runner import store
from runner.config import TrainConfig, run_id
from runner.spec import resolve
from runner.launch.run import run_one
from runner.training.parts import make_optimizer
from tests.conftest import ROOT, start_train_until_checkpoint, tiny_layer


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    cfg = resolve(tiny_layer(epochs=3, save_every=2))
    result = run_one(cfg, out, progress=False)
    return cfg, out, result


def test_run_writes_complete_h5(finished):
    cfg, out, result = finished
    assert result["status"] == "completed"
    data = store.read_run(store.run_path(out, run_id(cfg)), epochs=True)
    a = data["attrs"]
    assert a["status"] == "completed" and a["run_id"] == run_id(cfg) and a["seed"] == cfg.seed
    assert a["config"] == cfg.to_dict() and "torch" in a["versions"] and a["git_rev"]
    tr, te = data["final"]["train"], data["final"]["test"]
    assert tr["embeddings"].shape == (len(tr["labels"]), 8) and tr["embeddings"].dtype == np.float32
    assert len(tr["labels"]) + len(te["labels"]) == 1797
    assert set(tr["index"]).isdisjoint(te["index"])
    assert sorted(data["epochs"]) == [0, 2, 3]  # untrained, every save_every, last
    np.testing.assert_array_equal(data["epochs"][3]["test"], te["embeddings"])
    steps = data["history"]["steps"]
    assert len(steps["loss"]) == 3 * (len(tr["labels"]) // 32)
    for key in ("active_fraction", "pos_distance", "neg_distance", "embedding_norm", "lr"):
        assert np.isfinite(steps[key]).all(), key
    assert ((steps["active_fraction"] >= 0) & (steps["active_fraction"] <= 1)).all()
    assert list(data["history"]["epochs"]["epoch"]) == [0, 2, 3]  # evaluated: the stored epochs (eval_every auto)


def test_reported_knn_matches_sklearn_on_stored_embeddings(finished):
    cfg, out, result = finished
    data = store.read_run(store.run_path(out, run_id(cfg)))
    tr, te = data["final"]["train"], data["final"]["test"]
    for k in (1, 5):
        clf = KNeighborsClassifier(n_neighbors=k).fit(tr["embeddings"], tr["labels"])
        assert result["metrics"][f"knn{k}"] == pytest.approx(clf.score(te["embeddings"], te["labels"]), abs=1e-9)


def test_completed_run_is_skipped(finished):
    cfg, out, _ = finished
    before = store.run_path(out, run_id(cfg)).stat().st_mtime_ns
    again = run_one(cfg, out)
    assert again["skipped"] and store.run_path(out, run_id(cfg)).stat().st_mtime_ns == before
    assert not (store.run_dir(out, run_id(cfg)) / "checkpoint.pt").exists()
    assert (store.run_dir(out, run_id(cfg)) / "model.pt").exists()


def test_tensorboard_events_read_back(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg, out, _ = finished
    tb = store.run_dir(out, run_id(cfg)) / "tb"
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"step/loss", "step/active_fraction", "epoch/knn1", "epoch/map_at_r"} <= set(tags)
    assert [e.step for e in acc.Scalars("epoch/knn1")] == [0, 2, 3]
    steps = store.read_run(store.run_path(out, run_id(cfg)))["history"]["steps"]
    loss = acc.Scalars("step/loss")  # every step, as the run recorded it
    assert [e.step for e in loss] == list(steps["step"])
    np.testing.assert_allclose([e.value for e in loss], steps["loss"], rtol=1e-6)
    from tensorboard.plugins.hparams import plugin_data_pb2
    hp = EventAccumulator(str(tb / "hparams"))
    hp.Reload()
    assert "hparam/knn1" in hp.Tags()["scalars"]
    content = {tag: plugin_data_pb2.HParamsPluginData.FromString(raw)
               for tag, raw in hp.PluginTagToContent("hparams").items()}
    assert set(content) == {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = content["_hparams_/session_start_info"].session_start_info.hparams
    assert start["loss.name"].string_value == cfg.loss.name and start["embedding.dim"].number_value == 8
    metrics = [m.name.tag for m in content["_hparams_/experiment"].experiment.metric_infos]
    assert "hparam/knn1" in metrics and "hparam/map_at_r" in metrics
    projector = (tb / "projector_config.pbtxt").read_text()
    assert "metadata.tsv" in projector and "sprite.png" in projector
    meta = next(tb.glob("*/test_embeddings/metadata.tsv")).read_text().splitlines()
    labels = store.read_run(store.run_path(out, run_id(cfg)))["final"]["test"]["labels"]
    assert meta == [str(c) for c in labels]


def _final(out, cfg):
    data = store.read_run(store.run_path(out, run_id(cfg)))
    return data["final"]["test"]["embeddings"], data["history"]["steps"]["loss"], data["attrs"]["metrics"]


def test_resume_after_interruption_equals_uninterrupted(tmp_path, finished):
    cfg, out, _ = finished
    first = run_one(cfg, tmp_path, stop_after_epochs=1)
    assert first["status"] == "interrupted"
    assert (store.run_dir(tmp_path, run_id(cfg)) / "checkpoint.pt").exists()
    assert store.run_status(store.run_path(tmp_path, run_id(cfg))) is None
    second = run_one(cfg, tmp_path)
    assert second["status"] == "completed"
    emb_a, loss_a, m_a = _final(out, cfg)
    emb_b, loss_b, m_b = _final(tmp_path, cfg)
    np.testing.assert_allclose(loss_b, loss_a, rtol=0, atol=1e-6)
    np.testing.assert_allclose(emb_b, emb_a, rtol=0, atol=1e-5)
    assert m_a == pytest.approx(m_b)


def test_sigkill_mid_run_then_resume(tmp_path, subprocess_env):
    """A run killed by SIGKILL after its first checkpoint resumes to the same result."""
    sets = ["model.width=8", "embedding.dim=8", "train.epochs=4", "train.batch_size=32", "train.num_threads=1"]
    cfg = resolve({"model": {"width": 8}, "embedding": {"dim": 8},
                   "train": {"epochs": 4, "batch_size": 32, "num_threads": 1}})
    proc, args = start_train_until_checkpoint(tmp_path / "a", cfg, sets, subprocess_env)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert store.run_status(store.run_path(tmp_path / "a", run_id(cfg))) is None
    r = subprocess.run(args, cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert run_one(cfg, tmp_path / "b")["status"] == "completed"
    emb_a, loss_a, _ = _final(tmp_path / "a", cfg)
    emb_b, loss_b, _ = _final(tmp_path / "b", cfg)
    np.testing.assert_allclose(loss_a, loss_b, atol=1e-6)
    np.testing.assert_allclose(emb_a, emb_b, atol=1e-5)


def test_diverging_run_is_recorded_failed(tmp_path):
    cfg = resolve(tiny_layer(epochs=2, lr=1e12, optimizer="sgd"), {"loss": {"name": "ContrastiveLoss"},
                                                                   "miner": {"name": None},
                                                                   "embedding": {"normalize": False}})
    result = run_one(cfg, tmp_path)
    assert result["status"] == "failed" and "non-finite" in result["error"]
    attrs = store.read_attrs(store.run_path(tmp_path, run_id(cfg)))
    assert attrs["status"] == "failed" and "non-finite" in attrs["error"]
    assert attrs["failed_step"] >= 0 and attrs["failed_epoch"] >= 1
    # a failed run is retried only when asked
    assert run_one(cfg, tmp_path, retry_failed=False)["skipped"]


def test_min_steps_raises_epochs_of_tiny_data(tmp_path):
    from runner.config import TrainConfig
    from runner.training.parts import planned_epochs
    assert planned_epochs(TrainConfig(epochs=2, min_steps=25), 10) == 3
    assert planned_epochs(TrainConfig(epochs=5, min_steps=25), 10) == 5
    # 5 images per class × 10 classes = one step per epoch: min_steps sets the budget
    cfg = resolve(tiny_layer(epochs=1, min_steps=4), {"data": {"n_per_class": 5}})
    result = run_one(cfg, tmp_path)
    steps = store.read_run(result["path"])["history"]["steps"]
    assert result["status"] == "completed" and len(steps["step"]) == 4 and list(steps["epoch"]) == [1, 2, 3, 4]


def test_steps_per_epoch_caps_every_epoch_and_resumes_to_the_same_run(tmp_path):
    """train.steps_per_epoch: each epoch makes at most that many steps (the sampler's length, so the
    schedule, min_steps and a stream-mode plan count the same steps); a resumed run equals an
    uninterrupted one; unset, the run_id and the full pass are as before."""
    from runner.config import ConfigError, RunConfig, TrainConfig
    from runner.data.samplers import PKSampler, RandomBatchSampler
    from runner.training.parts import planned_epochs
    labels = np.repeat(np.arange(10), 20)  # 200 images: 12 full-pass batches of 16
    assert len(PKSampler(labels, 16, 4, seed=0)) == 12
    capped = PKSampler(labels, 16, 4, seed=0, max_steps=5)
    assert len(capped) == 5 and len(capped.batches(1)) == 5
    assert [b.tolist() for b in capped.batches(1)] == [b.tolist() for b in PKSampler(labels, 16, 4, 0).batches(1)[:5]]
    assert len(RandomBatchSampler(labels, 16, seed=0, max_steps=30)) == 12  # a cap above a full pass changes nothing
    assert planned_epochs(TrainConfig(epochs=1, min_steps=12, steps_per_epoch=5), 5) == 3
    with pytest.raises(ConfigError, match="train.steps_per_epoch"):
        RunConfig(train=TrainConfig(steps_per_epoch=0))
    assert run_id(resolve(tiny_layer(steps_per_epoch=None))) == run_id(resolve(tiny_layer()))
    assert run_id(resolve(tiny_layer(steps_per_epoch=3))) != run_id(resolve(tiny_layer()))

    cfg = resolve(tiny_layer(epochs=3, steps_per_epoch=3, save_every=2))
    whole = run_one(cfg, tmp_path / "whole", progress=False)
    steps = store.read_run(whole["path"])["history"]["steps"]
    assert whole["status"] == "completed" and list(steps["epoch"]) == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    lr = np.asarray(steps["lr"])
    assert lr[-1] < 0.05 * lr.max()  # the cosine schedule spans the 9 steps made, not 3 full passes
    assert run_one(cfg, tmp_path / "resumed", stop_after_epochs=1)["status"] == "interrupted"
    assert run_one(cfg, tmp_path / "resumed")["status"] == "completed"
    emb_a, loss_a, m_a = _final(tmp_path / "whole", cfg)
    emb_b, loss_b, m_b = _final(tmp_path / "resumed", cfg)
    np.testing.assert_allclose(loss_b, loss_a, rtol=0, atol=1e-6)
    np.testing.assert_allclose(emb_b, emb_a, rtol=0, atol=1e-5)
    assert m_a == pytest.approx(m_b)


def test_config_error_at_start_is_recorded_failed(tmp_path):
    """Data that fails only once the run starts (gone since the checks): a failed run.h5 with the
    reason, so status shows it and a relaunch skips it unless asked to retry failed runs."""
    from runner.launch.many import pending, run_statuses
    cfg = resolve(tiny_layer(), {"data": {"name": "mnist", "root": str(tmp_path / "mnist-gone")}})
    result = run_one(cfg, tmp_path / "out", progress=False)
    assert result["status"] == "failed" and "ConfigError: data.root" in result["error"]
    attrs = store.read_attrs(store.run_path(tmp_path / "out", run_id(cfg)))
    assert attrs["status"] == "failed" and attrs["error"].startswith("ConfigError: data.root")
    assert run_statuses([cfg], tmp_path / "out") == ["failed"]
    assert pending([cfg], tmp_path / "out") == [] and pending([cfg], tmp_path / "out", retry_failed=True) == [0]


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_the_multi_tensor_optimiser_step_gives_the_parameters_of_the_single_tensor_one(name):
    """make_optimizer takes foreach=True for speed; it must not change what a run computes."""
    def trained(foreach: bool) -> list:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Flatten(),
                                    torch.nn.Linear(8 * 6 * 6, 16))
        t = TrainConfig(optimizer=name, lr=0.01, weight_decay=1e-4)
        opt = make_optimizer(list(model.parameters()), t)
        assert all(g["foreach"] for g in opt.param_groups)
        if not foreach:
            for g in opt.param_groups:
                g["foreach"] = False
        x = torch.randn(32, 1, 8, 8)
        for _ in range(20):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(trained(True), trained(False)):
        assert torch.equal(a, b)
