"""Bad specs: each is rejected with one line naming the key (exit 2) before anything runs.

A table of malformed specs goes through the in-process loader (load_spec + expand_grid,
as `python -m runner.grid` does); a few go through the CLIs in subprocesses; a
hypothesis fuzz checks that the loader never ends in anything but a ConfigError.
"""

import math
import subprocess

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import grid
from runner.launch.validate import validate_run
from runner.spec import expand_grid, load_spec
from runner.config import ConfigError
from tests.conftest import PYTHON, ROOT

BASE = "model: {width: 8}\nembedding: {dim: 8}\ntrain: {epochs: 1, batch_size: 32, num_threads: 1}\n"

# (case, spec text appended to BASE, key the error must name, text the message must contain)
BAD_SPECS = [
    ("unknown loss", "loss: {name: TripletMarginLos}", "loss.name", "did you mean TripletMarginLoss"),
    ("unknown loss alias", "loss: {name: tripplet}", "loss.name", "did you mean triplet"),
    ("unknown miner", "miner: {name: TripletMarginMinr}", "miner.name", "did you mean TripletMarginMiner"),
    ("unsupported loss", "loss: {name: CrossBatchMemory}", "loss.name", "wrapper"),
    ("miner cannot feed loss", "loss: {name: ArcFaceLoss}\nminer: {name: TripletMarginMiner}", "miner.name", "null"),
    ("negative loss margin", "loss: {margin: -0.1}", "loss.margin", ">= 0"),
    ("negative miner margin", "miner: {margin: -1}", "miner.margin", ">= 0"),
    ("margin for a loss without one", "loss: {name: NTXentLoss, margin: 0.5}", "loss.margin", "null"),
    ("dim 0", "embedding: {dim: 0}", "embedding.dim", ">= 1"),
    ("batch not a multiple of K", "train: {batch_size: 30}", "train.batch_size", "multiple"),
    ("K = 1 with a triplet loss", "train: {samples_per_class: 1}", "train.samples_per_class", "positive pairs"),
    ("classes with fewer than K images", "data: {n_per_class: 3}", "data.n_per_class", "fewer than K"),
    ("missing data root", "data: {name: mnist, root: /nonexistent/mnist}", "data.root", "existing directory"),
    ("no data root", "data: {name: folder}", "data.root", "existing directory"),
    ("unknown data set", "data: {name: mnsit}", "data.name", "did you mean mnist"),
    ("wrong type: dim", "embedding: {dim: eight}", "embedding.dim", "an integer"),
    ("wrong type: lr", "train: {lr: fast}", "train.lr", "a number"),
    ("wrong type: width", "model: {width: 8.5}", "model.width", "an integer"),
    ("wrong type: loss name", "loss: {name: 5}", "loss.name", "a string"),
    ("wrong type: seeds", "seeds: [0, one]", "seeds", "integers"),
    ("typo in a key", "loss: {marign: 0.2}", "loss.marign", "did you mean margin"),
    ("typo in a section", "trian: {epochs: 2}", "trian", "did you mean train"),
    ("typo in loss params", "loss: {params: {swapp: true}}", "loss.params.swapp", "did you mean swap"),
    ("typo in a grid key", "grid: {embedding.dimm: [8, 16]}", "embedding.dimm", "did you mean dim"),
    ("empty grid", "grid: {}", "grid", "non-empty"),
    ("grid key without values", "grid: {loss.margin: []}", "grid.loss.margin", "non-empty"),
    ("bad value inside a grid", "grid: {embedding.dim: [8, 0]}", "embedding.dim", ">= 1"),
    ("bad variant", "variants: [{loss: {name: Foo}}]", "loss.name", "variants[0]"),
    ("variants not a list", "variants: {a: 1}", "variants", "list"),
    ("empty include", "include: []", "include", "non-empty"),
    ("empty seeds", "seeds: []", "seeds", "non-empty"),
    ("test fraction out of range", "data: {test_fraction: 1.5}", "data.test_fraction", "(0, 1)"),
    ("zero epochs", "train: {epochs: 0}", "train.epochs", ">= 1"),
    ("unknown sampler", "train: {sampler: pks}", "train.sampler", "pk or random"),
    ("invalid YAML", "loss: [", "spec", "valid YAML"),
]
# search spaces are read by runner.tune (parse_search)
BAD_SEARCHES = [
    ("search with an empty choice", "search: {loss.margin: {choice: []}}", "search.loss.margin", "non-empty"),
    ("search with reversed bounds", "search: {train.lr: {loguniform: [0.1, 0.001]}}", "search.train.lr", "low < high"),
    ("empty search", "search: {}", "search", "non-empty"),
]


def _load(tmp_path, text):
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE + text + "\n")
    return expand_grid(load_spec(spec), check=validate_run)


@pytest.mark.parametrize("case,text,key,hint", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_one_line_naming_the_key(tmp_path, case, text, key, hint):
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, text)
    message = str(exc.value)
    assert exc.value.key == key, message
    assert hint in message and "\n" not in message, message
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("case,text,key,hint", BAD_SEARCHES, ids=[c[0] for c in BAD_SEARCHES])
def test_bad_search_space_is_one_line_naming_the_key(tmp_path, case, text, key, hint):
    from runner.launch.tune.space import parse_search
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE + text + "\n")
    with pytest.raises(ConfigError) as exc:
        parse_search(grid.load_spec(spec).search)
    assert exc.value.key == key and hint in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_good_spec_still_loads(tmp_path):
    assert len(_load(tmp_path, "grid: {loss.margin: [0.1, 0.2]}\nseeds: [0, 1]")) == 4


# The CLIs: exit 2, one line on stderr naming the key, no results directory created.
CLI_CASES = [
    ("grid", "loss: {name: TripletMarginLos}", [], "loss.name"),
    ("train", "", ["--set", "loss.name=ArcFaceLoss", "--set", "miner.name=TripletMarginMiner"], "miner.name"),
    ("train", "", ["--set", "data.name=mnist", "--set", "data.root=/nonexistent"], "data.root"),
]


def test_cli_rejects_bad_specs_with_exit_2(tmp_path, subprocess_env):
    procs = []
    for i, (cli, text, extra, key) in enumerate(CLI_CASES):
        spec = tmp_path / f"spec{i}.yaml"
        spec.write_text(BASE + text + "\n")
        mode = ["--list"] if cli == "grid" else []
        cmd = [PYTHON, "-m", f"runner.{cli}", str(spec), "--out", str(tmp_path / "results")] + mode + extra
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True), key))
    for proc, key in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (key, err)
        assert err.startswith(f"error: {key}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "results").exists()  # nothing trained, nothing written


# ---------------------------------------------------------------- fuzz

KEYS = ["data", "model", "embedding", "loss", "miner", "train", "seed", "name", "margin", "params", "dim",
        "epochs", "batch_size", "samples_per_class", "root", "n_per_class", "variants", "grid", "include",
        "seeds", "search", "tune", "loss.margin", "embedding.dim", "train.lr", "miner.name", "choice",
        "type_of_triplets", "distance", "reducer"]
scalars = (st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from(["TripletMarginLoss", "ContrastiveLoss", "ArcFaceLoss", "none", "mnist", "digits",
                              "pk", "cosine", "semihard", "LpDistance", "", "1e-3"])
           | st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=3),
                      max_leaves=10)
specs = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), values, max_size=5)


def _expand_or_config_error(path) -> None:
    try:
        runs = expand_grid(load_spec(path), check=validate_run)
        assert runs
    except ConfigError as exc:
        assert "\n" not in str(exc) and exc.key, str(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs)
def test_fuzz_spec_loader_never_tracebacks(tmp_path, spec):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    _expand_or_config_error(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_fuzz_raw_yaml_text_never_tracebacks(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    _expand_or_config_error(path)
