"""run_ids that survive upgrades: pinned for every shipped spec, and a migration for older results.

The id hashes `runner.config.identity(cfg)`: the settings that differ from the defaults,
less execution-only ones. tests/assets/run_ids.json holds the ids of every run of
jobs/*.yaml; a change that moves one (a renamed field, a changed default, a new field
without a default) fails here, before it orphans anybody's results. Regenerate the file
only for a deliberate, documented change of ids:
    python -m tests.test_run_ids > tests/assets/run_ids.json
"""

import dataclasses
import json
import subprocess
import sys

import numpy as np

from runner import store
from runner.config import ID_SCHEME, RunConfig, TrainConfig, identity, legacy_run_id, run_id
from runner.spec import expand_grid, load_spec, resolve
from tests.conftest import PYTHON, ROOT, tiny_layer

PINS = ROOT / "tests" / "assets" / "run_ids.json"


def shipped_ids() -> dict:
    return {p.name: [run_id(c) for c in expand_grid(load_spec(p))] for p in sorted((ROOT / "jobs").glob("*.yaml"))}


def test_run_ids_of_every_shipped_spec_are_pinned():
    pinned, now = json.loads(PINS.read_text()), shipped_ids()
    assert sorted(now) == sorted(pinned), "a spec was added or removed: regenerate tests/assets/run_ids.json"
    moved = {name: [f"{a}->{b}" for a, b in zip(pinned[name], ids) if a != b] for name, ids in now.items()}
    assert all(len(now[n]) == len(pinned[n]) for n in now), "a spec expands to another number of runs"
    assert not any(moved.values()), f"run_ids moved (results would be orphaned): {moved}"


def test_a_new_field_with_a_default_leaves_ids_alone():
    """What a later version looks like: TrainConfig with one more field (and its default)."""
    @dataclasses.dataclass(frozen=True)
    class LaterTrain(TrainConfig):
        later_knob: int = 1

    @dataclasses.dataclass(frozen=True)
    class LaterRun(RunConfig):
        train: LaterTrain = dataclasses.field(default_factory=LaterTrain)

    cfg = resolve({"loss": {"margin": 0.3}, "seed": 2, "train": {"epochs": 3}})
    later = LaterRun(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "train"},
                     train=LaterTrain(**dataclasses.asdict(cfg.train)))
    assert later.to_dict()["train"]["later_knob"] == 1  # the new field is there ...
    assert identity(later) == identity(cfg) and run_id(later) == run_id(cfg)  # ... and the id did not move
    changed = dataclasses.replace(later, train=dataclasses.replace(later.train, later_knob=5))
    assert run_id(changed) != run_id(cfg)  # set away from its default, it is part of the id


def test_execution_only_settings_are_not_identity_but_results_settings_are():
    base = resolve({})
    assert run_id(resolve({"train": {"num_threads": 7}})) == run_id(base)
    for layer in ({"seed": 1}, {"train": {"lr": 1e-3}}, {"loss": {"margin": 0.3}}, {"embedding": {"dim": 8}},
                  {"miner": {"params": {"type_of_triplets": "hard"}}}):
        assert run_id(resolve(layer)) != run_id(base), layer
    assert identity(RunConfig()) == {}


def test_migrate_moves_scheme_1_results_to_their_new_ids(tmp_path, subprocess_env):
    """A results directory written under the old scheme (id = hash of the whole config) is moved in place."""
    from runner.launch.run import run_one
    cfg = resolve(tiny_layer(epochs=1))
    run_one(cfg, tmp_path, progress=False)
    new_dir = store.run_dir(tmp_path, run_id(cfg))
    old_id = legacy_run_id(cfg.to_dict())
    old_dir = store.run_dir(tmp_path, old_id)
    new_dir.rename(old_dir)  # what an older version left: its folder named by the old id ...
    with store.atomic_path(old_dir / "run.h5") as tmp:  # ... and a run.h5 without id_scheme
        import h5py
        import shutil
        shutil.copy(old_dir / "run.h5", tmp)
        with h5py.File(tmp, "a") as f:
            f.attrs["run_id"] = old_id
            del f.attrs["id_scheme"]
    before = store.read_run(old_dir / "run.h5")["final"]["test"]["embeddings"]
    dry = subprocess.run([PYTHON, "-m", "runner.migrate", str(tmp_path), "--dry-run"], env=subprocess_env,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and f"{old_id} -> {run_id(cfg)}" in dry.stdout and old_dir.exists()
    r = subprocess.run([PYTHON, "-m", "runner.migrate", str(tmp_path)], env=subprocess_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not old_dir.exists() and new_dir.is_dir()
    data = store.read_run(new_dir / "run.h5")
    assert data["attrs"]["run_id"] == run_id(cfg) and data["attrs"]["id_scheme"] == ID_SCHEME
    assert np.array_equal(data["final"]["test"]["embeddings"], before)
    assert run_one(cfg, tmp_path, progress=False)["skipped"]  # found: nothing is retrained
    again = subprocess.run([PYTHON, "-m", "runner.migrate", str(tmp_path)], env=subprocess_env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "0 moved" in again.stdout


if __name__ == "__main__":
    json.dump(shipped_ids(), sys.stdout, indent=1)
    print()
