"""Bad specs: each is rejected with one line naming the key (exit 2) before anything runs.

A table of malformed specs goes through the in-process loader (load_spec + expand_grid,
as `python -m runner.grid` does); a few go through the CLIs in subprocesses; a
hypothesis fuzz checks that the loader never ends in anything but a ConfigError.
"""

import collections
import math
import subprocess

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runner import grid
from runner.launch.validate import expand_checked
from runner.spec import dotted_to_nested, load_spec, merge
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
    return expand_checked(load_spec(spec))


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
        parse_search(load_spec(spec).search)
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
        runs = expand_checked(load_spec(path))
        assert runs
    except ConfigError as exc:  # one line per distinct problem, each naming its key
        assert exc.key and all(": got " in line for line in str(exc).splitlines()), str(exc)


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


# ---------------------------------------------------------------- runs rejected at --list (runner.launch.validate)

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    """Files that each fail one check: weights, data roots of every kind of problem."""
    import numpy as np
    import torch
    from PIL import Image
    from runner.training.models import make_trunk
    from runner.config import ModelConfig
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "garbage.pt").write_bytes(b"not a checkpoint" * 64)
    torch.save({"conv": object()}, d / "pickled_object.pt")  # weights_only=True refuses arbitrary classes
    resnet, _ = make_trunk(ModelConfig(backbone="resnet18"), 1, 8)
    torch.save(resnet.state_dict(), d / "resnet18_grey.pt")
    small, _ = make_trunk(ModelConfig(width=8), 1, 8)
    torch.save(small.state_dict(), d / "small_cnn_w8.pt")
    (d / "empty_dir").mkdir()
    (d / "mnist_truncated").mkdir()
    src = ROOT / "tests/assets/mnist-10k"
    (d / "mnist_truncated" / "t10k-labels-idx1-ubyte.gz").write_bytes((src / "t10k-labels-idx1-ubyte.gz").read_bytes())
    (d / "mnist_truncated" / "t10k-images-idx3-ubyte.gz").write_bytes(
        (src / "t10k-images-idx3-ubyte.gz").read_bytes()[:50_000])
    for cls in ("a", "b"):
        (d / "folder_no_images" / cls).mkdir(parents=True)
        (d / "folder_no_images" / cls / "notes.txt").write_text("no image here")
        (d / "folder_bad_image" / cls).mkdir(parents=True)
        (d / "folder_bad_image" / cls / "0.png").write_bytes(b"\x89PNG but not really")
        (d / "folder_two_classes" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(d / "folder_two_classes" / cls / f"{i}.png")
    (d / "not_hdf5.h5").write_bytes(b"\x00" * 512)
    return d


# (case, --set overrides, extra CLI arguments, key, text the line must contain)
NEW_ROWS = [
    ("backbone: unknown name", ["model.backbone=resnet19"], [], "model.backbone", "did you mean resnet18?"),
    ("pretrained: no such file", ["model.pretrained=/nope.pt"], [], "model.pretrained",
     "an existing local weights file"),
    ("pretrained: not a checkpoint", ["model.pretrained={d}/garbage.pt"], [], "model.pretrained",
     "torch.load(weights_only=True) reads"),
    ("pretrained: pickled object", ["model.pretrained={d}/pickled_object.pt"], [], "model.pretrained",
     "torch.load(weights_only=True) reads"),
    ("pretrained: another trunk's keys", ["model.pretrained={d}/resnet18_grey.pt"], [], "model.pretrained",
     "missing keys"),
    ("pretrained: other shapes", ["model.pretrained={d}/small_cnn_w8.pt", "model.width=16"], [], "model.pretrained",
     "in the file"),
    ("size: vgg16 on 8×8 digits", ["model.backbone=vgg16"], [], "data.image_size",
     "at least 32 for model.backbone vgg16"),
    ("size: vgg16 at 16 px", ["model.backbone=vgg16", "data.name=signs", "data.image_size=16"], [], "data.image_size",
     "at least 32"),
    ("root: missing directory", ["data.name=mnist", "data.root=/nonexistent/mnist"], [], "data.root",
     "existing directory"),
    ("root: no idx files", ["data.name=mnist", "data.root={d}/empty_dir"], [], "data.root", "train-images-idx3-ubyte"),
    ("root: truncated idx file", ["data.name=mnist", "data.root={d}/mnist_truncated"], [], "data.root", "truncated"),
    ("root: folder without images", ["data.name=folder", "data.root={d}/folder_no_images"], [], "data.root",
     "sub-folders holding"),
    ("root: unreadable image", ["data.name=folder", "data.root={d}/folder_bad_image"], [], "data.root",
     "a readable image file"),
    ("root: not an HDF5 file", ["data.name=h5", "data.root={d}/not_hdf5.h5"], [], "data.root", "not an HDF5 file"),
    ("classes: min_images_per_class leaves none", ["data.min_images_per_class=500"], [], "data.min_images_per_class",
     "at least 2 classes"),
    ("classes: class_disjoint of 2 classes", ["data.name=folder", "data.root={d}/folder_two_classes",
                                              "data.split=class_disjoint"], [], "data.split", "at least 3"),
    ("batch vs classes: 8 ranks, 10 digits", [], ["--tasks-per-run", "8"], "train.batch_size",
     "10 training classes over 8 rank(s) give 1"),
    ("GPUs: cuda, none here", ["train.device=cuda"], [], "train.device", "cpu or auto"),
    ("GPUs: cuda, none given", ["train.device=cuda"], ["--gpus-per-run", "0"], "train.device", "--gpus-per-run 0"),
    ("GPUs: given but cpu", ["train.device=cpu"], ["--gpus-per-run", "2"], "train.device", "would not use"),
    ("GPUs: 2 ranks on 1 GPU", [], ["--gpus-per-run", "1", "--tasks-per-run", "2"], "--tasks-per-run",
     "one rank per GPU"),
]


@pytest.mark.parametrize("case,sets,extra,key,hint", NEW_ROWS, ids=[r[0] for r in NEW_ROWS])
def test_bad_run_is_rejected_at_list(tmp_path, capsys, bad_files, case, sets, extra, key, hint):
    import torch
    if case == "GPUs: cuda, none here" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE)
    out = tmp_path / "results"
    argv = [str(spec), "--list", "--out", str(out)] + [a for s in sets for a in ("--set", s.format(d=bad_files))]
    assert grid.main(argv + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key}: got ") and hint in err and err.count("\n") == 1, err
    assert not out.exists()


def test_distinct_problems_one_line_each_naming_their_runs(tmp_path, subprocess_env):
    """Three problems over six runs: three lines with their run indices, exit 2, nothing created."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE + "grid: {model.backbone: [vgg16, resnet19, small_cnn]}\nseeds: [0, 1]\n")
    out = tmp_path / "results"
    p = subprocess.run([PYTHON, "-m", "runner.grid", str(spec), "--list", "--out", str(out),
                        "--set", "model.pretrained=/nope.pt"], cwd=tmp_path, env=subprocess_env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stdout == "", p.stdout + p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("error: data.image_size: got 8, expected at least 32")
    assert lines[0].endswith("[runs 0-1]")
    assert lines[1].startswith("error: model.pretrained: got '/nope.pt'") and lines[1].endswith("[runs 0-1,4-5]")
    assert lines[2].startswith("error: model.backbone: got 'resnet19'") and lines[2].endswith("[runs 2-3]")
    assert not out.exists()


# ---------------------------------------------------------------- fuzz of the command line

def _set_values(d):
    """Per key a strategy of values: good ones, each validator's bad ones, and noise."""
    noise = st.text(max_size=6) | st.integers(-3, 70) | st.none()
    paths = st.sampled_from([str(d / n) for n in ("garbage.pt", "pickled_object.pt", "resnet18_grey.pt",
                                                   "small_cnn_w8.pt", "empty_dir", "mnist_truncated",
                                                   "folder_no_images", "folder_bad_image", "folder_two_classes",
                                                   "not_hdf5.h5")] + ["/nope", str(ROOT / "tests/assets/mnist-10k")])
    return {
        "model.backbone": st.sampled_from(["small_cnn", "resnet18", "resnet50", "vgg16", "resnet19", "VGG16"]) | noise,
        "model.pretrained": paths | noise,
        "model.width": st.sampled_from([4, 8, 16]) | noise,
        "model.freeze_trunk": st.booleans(),
        "data.name": st.sampled_from(["digits", "mnist", "folder", "h5", "lfw", "signs", "fashion_mnist", "mnsit"]),
        "data.root": paths | noise,
        "data.image_size": st.sampled_from([None, 8, 16, 31, 32, 64]) | noise,
        "data.min_images_per_class": st.sampled_from([2, 3, 180, 500]) | noise,
        "data.split": st.sampled_from(["stratified", "class_disjoint", "random"]),
        "data.test_fraction": st.floats(-0.5, 1.5) | st.just(math.nan) | noise,
        "train.batch_size": st.sampled_from([4, 8, 30, 32, 128]) | noise,
        "train.samples_per_class": st.sampled_from([1, 2, 4, 8]) | noise,
        "train.sampler": st.sampled_from(["pk", "random", "pks"]),
        "train.device": st.sampled_from(["auto", "cpu", "cuda", "tpu"]),
        "loss.name": st.sampled_from(["TripletMarginLoss", "ContrastiveLoss", "ArcFaceLoss", "ProxyAnchorLoss",
                                      "tripplet"]) | noise,
        "miner.name": st.sampled_from(["TripletMarginMiner", "PairMarginMiner", "none", "BatchHardMinr"]) | st.none(),
    }


def _set_items(values: dict):
    """`--set` strings: key=value of those strategies, plus malformed ones."""
    good = st.sampled_from(sorted(values)).flatmap(
        lambda k: values[k].map(lambda v: f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                if not isinstance(v, str) else f"{k}={v}"))
    malformed = st.text(max_size=12) | st.sampled_from(["=", "model.=x", "train.lr.x=1", "data=3", "seed==2"])
    return st.one_of(good, good, good, malformed)  # mostly well-formed: they reach the checks behind parsing


VALIDATED_KEYS = ("model.backbone", "model.pretrained", "data.image_size", "data.root", "data.split",
                  "data.min_images_per_class", "train.batch_size", "train.device", "miner.name", "--tasks-per-run")
"""Keys the checks of runner.launch.validate name: the fuzz must reach each of them."""


def test_fuzz_command_line_reaches_every_check_without_a_traceback(tmp_path, capsys, bad_files):
    """hypothesis: `runner.grid SPEC --list` with fuzzed --set strings and spec sections (the same
    keys), placement options included. Every outcome is a listing (exit 0) or exit 2 with one
    `error: KEY: got ...` line per problem; any exception that escapes main() fails the test."""
    values = _set_values(bad_files)
    section = st.dictionaries(st.sampled_from(sorted(values)), st.none(), max_size=3).flatmap(
        lambda keys: st.fixed_dictionaries({k: values[k] for k in keys}))
    grids = st.none() | st.sampled_from(sorted(values)).flatmap(
        lambda k: st.lists(values[k], min_size=1, max_size=2).map(lambda vs: {k: vs}))
    placements = st.sampled_from([[], ["--tasks-per-run", "4"], ["--tasks-per-run", "8"], ["--gpus-per-run", "0"],
                                  ["--gpus-per-run", "1", "--tasks-per-run", "2"]])
    stats = {"tried": 0, "rejected": 0, "accepted": 0, "keys": collections.Counter()}
    out = tmp_path / "results"
    d = bad_files

    # one example per check, so that each is reached whatever the random draws; then 300 random ones
    @example({}, None, ["train.device=cuda"], ["--gpus-per-run", "0"])
    @example({"model.backbone": "resnet19"}, None, [], [])
    @example({"model.pretrained": str(d / "garbage.pt")}, None, [], [])
    @example({"model.backbone": "vgg16"}, None, [], [])
    @example({"data.name": "mnist", "data.root": str(d / "empty_dir")}, None, [], [])
    @example({"data.name": "folder", "data.root": str(d / "folder_two_classes")}, {"data.split": ["class_disjoint"]},
             [], [])
    @example({}, None, ["data.min_images_per_class=500"], [])
    @example({}, None, [], ["--tasks-per-run", "8"])
    @example({"loss.name": "ArcFaceLoss", "miner.name": "TripletMarginMiner"}, None, [], [])
    @example({}, None, [], ["--gpus-per-run", "1", "--tasks-per-run", "2"])
    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(spec_part=section, grid_part=grids, sets=st.lists(_set_items(values), max_size=3), placement=placements)
    def one(spec_part, grid_part, sets, placement):
        body = merge(yaml.safe_load(BASE), dotted_to_nested(spec_part))
        if grid_part is not None:
            body["grid"] = grid_part
        spec = tmp_path / "fuzz.yaml"
        spec.write_text(yaml.safe_dump(body))
        argv = [str(spec), "--list", "--out", str(out)] + [a for s in sets for a in ("--set", s)] + placement
        capsys.readouterr()
        code = grid.main(argv)
        err = capsys.readouterr().err
        stats["tried"] += 1
        if code == 0:
            stats["accepted"] += 1
            assert err == ""
            return
        assert code == 2, (argv, err)
        lines = err.splitlines()
        assert lines and all(line.startswith("error: ") and ": got " in line for line in lines), err
        assert len(set(lines)) == len(lines), err  # one line per distinct problem
        stats["rejected"] += 1
        stats["keys"].update(line.split(": ")[1] for line in lines)
        assert not out.exists()  # rejected: nothing written

    one()
    print(f"\ncommand-line fuzz: {stats['tried']} tried, {stats['rejected']} rejected cleanly, "
          f"{stats['accepted']} accepted; keys named: {dict(stats['keys'].most_common())}")
    assert stats["tried"] == stats["rejected"] + stats["accepted"]
    missed = [k for k in VALIDATED_KEYS if not stats["keys"][k]]
    assert not missed, f"the fuzz never reached the checks of {missed}"


def test_every_launcher_rejects_a_bad_grid_before_anything_runs(tmp_path, capsys):
    """runner.train, runner.submit (SLURM executor: nothing reaches sbatch) and runner.tune stop on
    the same checks as --list: exit 2, a line per problem, no results directory."""
    from runner import submit, train, tune
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE + "search: {loss.margin: {choice: [0.1, 0.2]}}\n")
    out = tmp_path / "results"
    bad = ["--set", "model.backbone=vgg16", "--set", "model.pretrained=/nope.pt"]
    for command, extra in ((train.main, []), (submit.main, ["--executor", "slurm"]), (tune.main, [])):
        assert command([str(spec), "--out", str(out), *bad, *extra]) == 2, command.__module__
        lines = capsys.readouterr().err.splitlines()
        assert [line.split(":")[1].strip() for line in lines] == ["data.image_size", "model.pretrained"], lines
    assert not out.exists()
