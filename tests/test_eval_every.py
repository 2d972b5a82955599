"""train.eval_every: which epochs are evaluated, and that it changes nothing else of a run."""

import numpy as np
import pytest

from runner import store
from runner.config import ConfigError, run_id
from runner.launch.run import run_one
from runner.spec import resolve
from runner.training.engine import evaluated
from tests.conftest import tiny_layer


def test_evaluated_epochs_rule():
    picked = [e for e in range(0, 13) if evaluated(e, 12, save_every=5, eval_every=3)]
    assert picked == [0, 3, 5, 6, 9, 10, 12]  # epoch 0, every 3rd, every stored (5th), the last


def test_auto_eval_every_scores_the_stored_epochs_and_every_epoch_for_a_small_search(monkeypatch):
    from types import SimpleNamespace
    from runner.training import engine
    t = resolve(tiny_layer(save_every=4)).train
    assert t.eval_every == 0  # the default: auto
    splits = SimpleNamespace(train=range(900), test=range(100), val=None)
    assert engine.eval_interval(t, splits) == 4  # a plain run: the stored epochs only
    monkeypatch.setattr(engine, "AUTO_EVAL_MAX_IMAGES", 1000)
    assert engine.eval_interval(t, splits, scored_every_epoch=True) == 1  # a scheduler reads every epoch
    monkeypatch.setattr(engine, "AUTO_EVAL_MAX_IMAGES", 999)
    assert engine.eval_interval(t, splits, scored_every_epoch=True) == 4  # large sets: the stored epochs only
    assert engine.eval_interval(resolve(tiny_layer(eval_every=3)).train, splits) == 3


def test_a_run_asked_for_every_epoch_scores_every_epoch_and_one_alone_the_stored_ones(tmp_path):
    cfg = resolve(tiny_layer(epochs=3, save_every=2))
    seen = []
    run_one(cfg, tmp_path / "asked", progress=False, on_epoch=lambda state: seen.append(state.epoch) and False)
    run_one(cfg, tmp_path / "alone", progress=False)
    asked, alone = (store.read_run(store.run_path(tmp_path / d, run_id(cfg))) for d in ("asked", "alone"))
    assert seen == [0, 1, 2, 3] and list(asked["history"]["epochs"]["epoch"]) == [0, 1, 2, 3]
    assert list(alone["history"]["epochs"]["epoch"]) == [0, 2, 3]
    assert asked["attrs"]["metrics"] == alone["attrs"]["metrics"]


def test_eval_every_must_not_be_negative():
    with pytest.raises(ConfigError, match="train.eval_every"):
        resolve(tiny_layer(eval_every=-1))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    runs = {}
    for every in (1, 3):
        cfg = resolve(tiny_layer(epochs=7, save_every=5, eval_every=every))
        assert run_one(cfg, out, progress=False)["status"] == "completed"
        runs[every] = store.read_run(store.run_path(out, run_id(cfg)), epochs=True)
    return out, runs


def test_eval_every_evaluates_exactly_the_expected_epochs(pair):
    _, runs = pair
    assert list(runs[1]["history"]["epochs"]["epoch"]) == list(range(8))
    assert list(runs[3]["history"]["epochs"]["epoch"]) == [0, 3, 5, 6, 7]


def test_eval_every_stores_the_same_embeddings_and_final_metrics(pair):
    _, runs = pair
    a, b = runs[1], runs[3]
    assert sorted(a["epochs"]) == sorted(b["epochs"]) == [0, 5, 7]
    for e in a["epochs"]:
        for split in a["epochs"][e]:
            np.testing.assert_array_equal(a["epochs"][e][split], b["epochs"][e][split])
    assert a["attrs"]["metrics"] == b["attrs"]["metrics"]
    np.testing.assert_array_equal(a["history"]["steps"]["loss"], b["history"]["steps"]["loss"])
    ea, eb = a["history"]["epochs"], b["history"]["epochs"]
    rows = {int(e): i for i, e in enumerate(ea["epoch"])}
    for j, e in enumerate(eb["epoch"]):  # an evaluated epoch's metrics do not depend on the others
        assert ea["knn1"][rows[int(e)]] == eb["knn1"][j] and ea["map_at_r"][rows[int(e)]] == eb["map_at_r"][j]
    # the time of the epochs left unevaluated still counts as training time
    assert b["attrs"]["train_time_s"] > 0.5 * a["attrs"]["train_time_s"]


def test_eval_every_logs_only_evaluated_epochs_to_tensorboard(pair):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, runs = pair
    acc = EventAccumulator(str(store.run_dir(out, runs[3]["attrs"]["run_id"]) / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("epoch/knn1")] == [0, 3, 5, 6, 7]
    assert len(acc.Scalars("step/loss")) == len(runs[3]["history"]["steps"]["loss"])
