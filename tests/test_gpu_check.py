"""benchmarks/gpu_check.py on CPU (no CUDA device: exit 0; the table's code path) and benchmarks/stream_memory.py --quick."""

import importlib.util
import math
import os
import subprocess

from runner.config import TrainConfig, build
from tests.conftest import PYTHON, ROOT

SCRIPT = str(ROOT / "benchmarks" / "gpu_check.py")


def test_without_cuda_it_says_so_and_exits_0(subprocess_env):
    env = {**subprocess_env, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a GPU machine
    p = subprocess.run([PYTHON, SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "no CUDA device present" in p.stdout and "train" not in p.stdout


def test_the_throughput_table_runs_on_cpu_with_every_row(subprocess_env):
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([PYTHON, SCRIPT, "--device", "cpu", "--quick"], env=env, capture_output=True, text=True,
                       timeout=600, cwd=os.getcwd())
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    rows = [line for line in p.stdout.splitlines() if line.startswith("| 16 |")]
    assert [r.split("|")[2].strip() + "/" + r.split("|")[3].strip() for r in rows] == \
        [f"{a}/{s}" for a in ("off", "on") for s in ("memory", "stream-jpeg", "stream-h5")]
    for r in rows:
        cells = [c.strip() for c in r.split("|")[4:8]]
        assert all(math.isfinite(float(c)) and float(c) > 0 for c in cells), r
        assert cells[1] == "1.00" or "memory" not in r


def test_amp_setting_follows_the_config_type():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    on, off = mod.amp_value(True), mod.amp_value(False)
    assert build(TrainConfig, {"amp": on}).amp == on and build(TrainConfig, {"amp": off}).amp == off  # type-checked
    assert on != off


def test_stream_memory_benchmark_runs_both_parts_quickly(subprocess_env):
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([PYTHON, str(ROOT / "benchmarks" / "stream_memory.py"), "--quick"], env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    peak = [line for line in p.stdout.splitlines() if "images: peak of trainer + workers" in line]
    assert len(peak) == 1
    rss, pss = (float(peak[0].split(k)[1].split("GiB")[0]) for k in ("RSS ", "PSS "))
    assert 0 < pss <= rss < 3  # a few hundred images: far below the bound, PSS never above RSS
    rows = [line for line in p.stdout.splitlines() if line.startswith("| memory") or line.startswith("| stream")]
    assert [r.split("|")[1].strip() + "/" + r.split("|")[2].strip() for r in rows] == \
        ["memory/0", "stream-h5/0", "stream-h5/2", "stream-jpeg/0", "stream-jpeg/2"]
