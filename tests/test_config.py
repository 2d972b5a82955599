"""Config validation, --set overrides and run_id stability."""

import subprocess

import pytest

from runner.config import ConfigError, RunConfig, from_dict, run_id
from runner.spec import resolve
from runner.spec import load_config, parse_set
from tests.conftest import PYTHON, ROOT


def test_defaults_resolve_and_miner_takes_loss_margin():
    cfg = resolve()
    assert cfg.loss.name == "TripletMarginLoss" and cfg.miner.name == "TripletMarginMiner"
    assert cfg.miner.margin == cfg.loss.margin == 0.2
    assert cfg.miner.params == {"type_of_triplets": "semihard"}


def test_run_id_is_stable_and_sensitive():
    a, b = resolve({"seed": 1}), resolve({"seed": 1})
    assert run_id(a) == run_id(b) and len(run_id(a)) == 12
    assert run_id(resolve({"seed": 2})) != run_id(a)
    assert run_id(resolve({"seed": 1, "loss": {"margin": 0.3}})) != run_id(a)
    # a stored config rebuilds to the same id
    assert run_id(from_dict(a.to_dict())) == run_id(a)


def test_eval_section_keeps_ids_and_round_trips():
    default = resolve()
    assert default.eval.recall_at == (1, 2, 4, 8) and default.to_dict()["eval"] == {"recall_at": [1, 2, 4, 8], "clustering": True}
    # a field added with a default leaves the ids alone: the default run's id before the eval section
    assert run_id(default) == "fa936ad5e8c7" == run_id(resolve(parse_set(["eval.recall_at=[1, 2, 4, 8]"])))
    other = resolve(parse_set(["eval.recall_at=[1, 10]"]))
    assert other.eval.recall_at == (1, 10) and run_id(other) != run_id(default)
    assert from_dict(other.to_dict()) == other


def test_renaming_loss_drops_old_params():
    cfg = resolve({"loss": {"name": "ContrastiveLoss"}, "miner": {"name": "PairMarginMiner"}})
    assert cfg.loss.margin is None and cfg.loss.params == {}
    assert cfg.miner.params == {}


def test_parse_set_types():
    d = parse_set(["loss.margin=0.5", "miner.name=null", "embedding.dim=8", "data.name=digits"])
    assert d == {"loss": {"margin": 0.5}, "miner": {"name": None}, "embedding": {"dim": 8},
                 "data": {"name": "digits"}}


@pytest.mark.parametrize("layer, key", [
    ({"embedding": {"dim": 0}}, "embedding.dim"),
    ({"embedding": {"dimm": 8}}, "embedding.dimm"),
    ({"loss": {"margin": -1.0}}, "loss.margin"),
    ({"train": {"batch_size": 30, "samples_per_class": 4}}, "train.batch_size"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"train": {"epochs": 1.5}}, "train.epochs"),
    ({"data": {"split": "random"}}, "data.split"),
    ({"data": {"test_fraction": 1.2}}, "data.test_fraction"),
    ({"bogus": 1}, "bogus"),
    ({"train": 3}, "train"),
    ({"loss": {"name": "TripletMarginLos"}}, "loss.name"),
    ({"eval": {"recall_at": [4, 2]}}, "eval.recall_at"),
    ({"eval": {"recall_at": [0, 1]}}, "eval.recall_at"),
    ({"eval": {"recall_at": 4}}, "eval.recall_at"),
    ({"eval": {"recall_at": [1.5]}}, "eval.recall_at"),
])
def test_bad_values_name_their_key(layer, key):
    with pytest.raises(ConfigError) as err:
        resolve(layer)
    assert err.value.key == key
    assert "\n" not in str(err.value)


def test_typo_gets_suggestion():
    with pytest.raises(ConfigError, match="did you mean dim"):
        resolve({"embedding": {"dimm": 8}})


def test_int_accepted_for_float():
    assert resolve({"train": {"lr": 1}}).train.lr == 1.0


def test_cli_bad_config_exits_2_with_one_line(tmp_path, subprocess_env):
    r = subprocess.run([PYTHON, "-m", "runner.train", "--set", "embedding.dim=0", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, env=subprocess_env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "embedding.dim" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_spec_file_and_set(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("embedding: {dim: 16}\nloss: {name: ContrastiveLoss, margin: 0.5}\n")
    cfg = load_config(spec, ["embedding.dim=4"])
    assert cfg.embedding.dim == 4 and cfg.loss.name == "ContrastiveLoss" and cfg.loss.margin == 0.5


def test_bad_yaml_is_config_error(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_config(spec)


def test_runconfig_validates_directly():
    with pytest.raises(ConfigError):
        RunConfig(seed=0, train=RunConfig().train.__class__(epochs=0))


def test_shipped_digits_spec_is_the_default():
    assert run_id(load_config(ROOT / "jobs" / "digits.yaml")) == run_id(resolve())
