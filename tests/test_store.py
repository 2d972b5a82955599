"""run.h5 round trip, atomic writes and corrupt-file detection."""

import h5py
import numpy as np
import pytest

from runner import store


def _record(status="completed"):
    rng = np.random.default_rng(0)
    final = {s: {"embeddings": rng.normal(size=(n, 4)).astype("float32"), "labels": np.arange(n) % 3,
                 "index": np.arange(n)} for s, n in (("train", 12), ("test", 6))}
    return store.RunRecord(
        run_id="abc", config={"seed": 1, "loss": {"name": "x"}}, status=status,
        attrs={"seed": 1, "metrics": {"knn1": 0.5}, "git_rev": "deadbeef"}, final=final,
        epochs={0: {"train": final["train"]["embeddings"], "test": final["test"]["embeddings"]}},
        steps={"step": np.arange(5), "loss": np.linspace(1, 0, 5)},
        epoch_table=[{"epoch": 0, "knn1": 0.1}, {"epoch": 1, "knn1": 0.5}],
        data={"class_names": ["a", "b", "c"], "family": "digits", "image_shape": [1, 8, 8]})


def test_round_trip(tmp_path):
    rec = _record()
    path = store.write_run(tmp_path / "r" / "run.h5", rec)
    out = store.read_run(path, epochs=True)
    assert out["attrs"]["run_id"] == "abc" and out["attrs"]["metrics"] == {"knn1": 0.5}
    assert out["config"] == rec.config
    np.testing.assert_array_equal(out["final"]["test"]["embeddings"], rec.final["test"]["embeddings"])
    np.testing.assert_array_equal(out["epochs"][0]["train"], rec.final["train"]["embeddings"])
    np.testing.assert_array_equal(out["history"]["epochs"]["knn1"], [0.1, 0.5])
    assert out["data"]["class_names"] == ["a", "b", "c"]
    with h5py.File(path) as f:  # per-epoch groups reuse the final labels
        np.testing.assert_array_equal(f["epochs/000/test/labels"][()], rec.final["test"]["labels"])
    assert store.run_status(path) == "completed"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]



def test_partial_readers_agree_with_read_run(tmp_path):
    rec = _record()
    path = store.write_run(tmp_path / "run.h5", rec)
    whole = store.read_run(path, epochs=True)
    final = store.read_final(path)
    assert set(final) == {"train", "test"} and set(final["test"]) == {"embeddings", "labels", "index"}
    np.testing.assert_array_equal(final["train"]["embeddings"], whole["final"]["train"]["embeddings"])
    assert store.stored_epochs(path) == [0]
    epoch = store.read_epoch(path, 0)
    np.testing.assert_array_equal(epoch["test"]["embeddings"], whole["epochs"][0]["test"])
    np.testing.assert_array_equal(epoch["test"]["labels"], rec.final["test"]["labels"])
    np.testing.assert_array_equal(store.read_history(path)["loss"], rec.steps["loss"])
    np.testing.assert_array_equal(store.read_history(path, "epochs")["knn1"], [0.1, 0.5])
    info = store.read_data_info(path)
    assert info["class_names"] == ["a", "b", "c"] and info["family"] == "digits"
    assert list(info["image_shape"]) == [1, 8, 8] and store.has_final(path)
    path.write_bytes(b"not hdf5 at all")
    with pytest.raises(store.CorruptRun):
        store.read_final(path)

def test_truncated_and_garbage_files_are_detected(tmp_path):
    path = store.write_run(tmp_path / "run.h5", _record())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert store.run_status(path) == "corrupt"
    with pytest.raises(store.CorruptRun):
        store.read_run(path)
    path.write_bytes(b"not hdf5 at all")
    assert store.run_status(path) == "corrupt"
    assert store.run_status(tmp_path / "absent.h5") is None


def test_completed_file_missing_parts_is_corrupt(tmp_path):
    rec = _record()
    rec.final.pop("test")
    path = store.write_run(tmp_path / "run.h5", rec)
    assert store.run_status(path) == "corrupt"


def test_failed_write_leaves_no_file(tmp_path):
    rec = _record()
    rec.final["train"]["embeddings"] = object()  # h5py cannot store this
    with pytest.raises(Exception):
        store.write_run(tmp_path / "run.h5", rec)
    assert list(tmp_path.iterdir()) == []


def test_event_file_is_read_back_by_tensorboard_with_its_checksums(tmp_path):
    """runner.store.EventFile: TensorBoard's own loader (which checks both CRCs of every record)
    reads back every scalar at its step; the C CRC equals TensorBoard's pure-Python one."""
    import os
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference
    from runner.store import EventFile
    from runner.store.events import masked_crc32c
    for n in (0, 1, 8, 31, 4096):
        data = os.urandom(n)
        assert masked_crc32c(data) == reference(data)
    with EventFile(tmp_path) as f:
        for step in range(30):
            f.scalars({"step/loss": 1.0 / (step + 1), "step/lr": 0.5}, step)
        f.scalars({}, 99)  # nothing to write: no event
    (path,) = tmp_path.glob("events.out.tfevents.*")
    events = list(LegacyEventFileLoader(str(path)).Load())  # the events as written, not migrated
    assert events[0].file_version == "brain.Event:2" and len(events) == 31
    loss = [(e.step, v.simple_value) for e in events[1:] for v in e.summary.value if v.tag == "step/loss"]
    assert loss == [(s, pytest.approx(1.0 / (s + 1))) for s in range(30)]
