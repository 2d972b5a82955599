"""Live progress: one line per epoch on stdout and in runs/<run_id>/train.log, while the run trains."""

import re
import subprocess
import time

from runner import store
from runner.config import run_id
from runner.spec import resolve
from tests.conftest import PYTHON, ROOT

LINE = re.compile(r"run (\w{12}) epoch (\d+)/(\d+)  loss \S+  map_at_r (\d\.\d{4}|-)  lr \S+  (\S+) samples/s  "
                  r"elapsed \S+  eta \S+")


def test_epoch_lines_appear_while_the_run_trains(tmp_path, subprocess_env):
    layer = {"model": {"width": 8}, "embedding": {"dim": 8},
             "train": {"epochs": 40, "batch_size": 32, "num_threads": 1}}
    cfg = resolve(layer)
    sets = ["model.width=8", "embedding.dim=8", "train.epochs=40", "train.batch_size=32", "train.num_threads=1"]
    proc = subprocess.Popen([PYTHON, "-m", "runner.train", "--out", str(tmp_path)] + [x for s in sets for x in ("--set", s)],
                            cwd=ROOT, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = store.run_dir(tmp_path, run_id(cfg)) / "train.log"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and "epoch 2/40" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.1)
    alive = proc.poll() is None
    proc.kill()
    out, err = proc.communicate(timeout=60)
    assert alive, f"the run ended before its second epoch line: {err[-2000:]}"
    lines = [LINE.search(line) for line in log.read_text().splitlines()]
    assert all(lines) and [int(m.group(2)) for m in lines][:3] == [0, 1, 2]
    assert {m.group(1) for m in lines} == {run_id(cfg)} and {m.group(3) for m in lines} == {"40"}
    assert float(lines[2].group(5)) > 0  # samples/s of a trained epoch
    assert lines[0].group(4) != "-" and lines[1].group(4) == "-"  # epoch 0 scored; epoch 1 (not stored) only trained
    printed = [LINE.search(line) for line in out.splitlines() if "epoch" in line]
    assert [int(m.group(2)) for m in printed if m][:3] == [0, 1, 2]  # the same lines on stdout (the SLURM log)


def test_a_level_set_before_the_first_run_silences_the_epoch_lines(tmp_path, capsys):
    """setLevel(WARNING) before anything ran (as the module docstring tells a user) is not undone by the first run."""
    import logging

    from runner.launch.run import run_one
    logger = logging.getLogger("dmlrunner")
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers.clear()
    logger.setLevel(logging.WARNING)
    try:
        run_one(resolve({"model": {"width": 8}, "embedding": {"dim": 4}, "train": {"epochs": 2, "batch_size": 32}}),
                tmp_path, progress=False)
        assert logger.level == logging.WARNING
        assert " epoch 1/2 " not in capsys.readouterr().out
        logger.setLevel(logging.INFO)  # and the same run's lines appear at INFO (the check above can fail)
        run_one(resolve({"model": {"width": 8}, "embedding": {"dim": 4}, "train": {"epochs": 2, "batch_size": 32},
                         "seed": 1}), tmp_path, progress=False)
        assert " epoch 1/2 " in capsys.readouterr().out
    finally:
        logger.handlers[:], (logger.level, logger.propagate) = saved[0], saved[1:]
