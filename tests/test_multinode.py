"""Multi-node SLURM for real: the 2-node cluster of slurm/cluster2.sh (node1 and node2 are
namespaces on this machine, each with its own slurmd, address and host name).

tests/run.sh runs these after the single-node suite, on that cluster (`pytest -m multinode`).
They need a partition with 2 nodes; the node-failure test needs slurm/cluster2.sh's cluster.
"""

import csv
import shutil
import subprocess
import time

import numpy as np
import pytest
import yaml

from runner import grid, store
from runner.config import run_id
from tests.conftest import PYTHON, ROOT, tiny_layer
from tests.test_slurm import make_spec, sacct_states, sbatch, slurm_env, wait_job  # noqa: F401 (fixture)


def idle_nodes() -> list:
    if shutil.which("sinfo") is None:
        return []
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True).stdout
    return sorted({line.split()[0] for line in out.splitlines() if line.split()[1:] in (["idle"], ["mix"])})


def cluster_name() -> str:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    return next((line.split("=", 1)[1].strip() for line in out.splitlines() if line.startswith("ClusterName")), "")


pytestmark = [pytest.mark.multinode,
              pytest.mark.skipif(len(idle_nodes()) < 2, reason="needs a 2-node SLURM cluster (slurm/cluster2.sh)")]

SPEC = """\
name: tiny
model: {width: 8, norm: group}
train: {epochs: 2, batch_size: 32, num_threads: 1}
grid:
  embedding.dim: [4, 8]
"""


def read(out, cfg, **kw) -> dict:
    return store.read_run(store.run_path(out, run_id(cfg)), **kw)


def srun_run(tmp_path, env, out, nodes: int) -> subprocess.CompletedProcess:
    return subprocess.run(["srun", "-N", str(nodes), "-n", "2", f"--chdir={tmp_path}", "--kill-on-bad-exit=1",
                           PYTHON, "-m", "runner.grid", str(tmp_path / "spec.yaml"), "--out", str(out),
                           "--run-index", "0"], env=env, capture_output=True, text=True, timeout=300)


def test_ddp_one_task_per_node_equals_two_tasks_on_one_node(tmp_path, slurm_env):
    """MASTER_ADDR from the node list, ranks across nodes: the same numbers as on one node."""
    _, runs = make_spec(tmp_path, SPEC)
    results = {}
    for nodes in (2, 1):
        p = srun_run(tmp_path, slurm_env, tmp_path / f"n{nodes}", nodes)
        assert p.returncode == 0, p.stdout + p.stderr
        results[nodes] = read(tmp_path / f"n{nodes}", runs[0], epochs=True)
    two, one = results[2], results[1]
    assert two["attrs"]["hosts"] == ["node1", "node2"] and one["attrs"]["hosts"] == ["node1", "node1"]
    assert two["attrs"]["world_size"] == one["attrs"]["world_size"] == 2
    np.testing.assert_array_equal(two["history"]["steps"]["loss"], one["history"]["steps"]["loss"])
    for split in ("train", "test"):
        np.testing.assert_array_equal(two["final"][split]["embeddings"], one["final"][split]["embeddings"])
    assert two["attrs"]["metrics"] == one["attrs"]["metrics"]


@pytest.mark.timeout(700)  # two jobs of up to 300 s each
@pytest.mark.parametrize("mode", ["array", "packed"])
def test_grid_sh_runs_each_run_on_two_nodes(tmp_path, slurm_env, mode):
    _, runs = make_spec(tmp_path, SPEC)
    out = tmp_path / "res"
    slurm_env.update(GRID_MODE=mode, GRID_NODES_PER_RUN="2", GRID_TASKS_PER_RUN="2")
    alloc = ["-N", "2", "-n", "4"] if mode == "packed" else []  # packed: both runs at once, 2 nodes each
    job = sbatch([*alloc, f"--output={tmp_path}/grid-%j.out", str(ROOT / "slurm/grid.sh"), str(tmp_path / "spec.yaml"),
                  "--out", str(out)], slurm_env, tmp_path)
    assert wait_job(job, 300) == {job: "COMPLETED"}, (tmp_path / f"grid-{job}.out").read_text()
    if mode == "array":
        array = (tmp_path / f"grid-{job}.out").read_text().split("submitted array job ")[1].split()[0]
        assert wait_job(array, 300, n_tasks=2) == {f"{array}_0": "COMPLETED", f"{array}_1": "COMPLETED"}
    assert grid.run_statuses(runs, out) == ["completed", "completed"]
    for cfg in runs:
        attrs = read(out, cfg)["attrs"]
        assert attrs["hosts"] == ["node1", "node2"] and attrs["launcher"] == "slurm"


def test_submitit_with_two_nodes_per_run(tmp_path, slurm_env):
    _, runs = make_spec(tmp_path, SPEC)
    out = tmp_path / "res"
    p = subprocess.run([PYTHON, "-m", "runner.submit", str(tmp_path / "spec.yaml"), "--out", str(out), "--executor",
                        "slurm", "--nodes-per-run", "2", "--tasks-per-run", "2", "--cpus-per-task", "1",
                        "--timeout-min", "10", "--wait"], env=slurm_env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and "2 completed" in p.stdout, p.stdout + p.stderr
    for cfg in runs:
        attrs = read(out, cfg)["attrs"]
        assert attrs["hosts"] == ["node1", "node2"] and attrs["world_size"] == 2


@pytest.mark.ray
def test_tune_sh_starts_ray_on_both_nodes(tmp_path, slurm_env):
    """Head on node1, a worker on node2; trials land on both and write to the one shared store."""
    spec = {"name": "t", **tiny_layer(epochs=2), "search": {"loss.margin": {"uniform": [0.05, 0.4]}},
            "tune": {"grace_period": 1, "reduction_factor": 2, "cpus_per_trial": 1}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    slurm_env["DMLR_PYTHON"] = PYTHON
    job = sbatch(["-N", "2", "--ntasks-per-node=1", "-c", "2", f"--output={tmp_path}/tune-%j.out",
                  str(ROOT / "slurm/tune.sh"), str(tmp_path / "t.yaml"), "--num-samples", "6", "--out", str(out)],
                 slurm_env, ROOT)
    states = wait_job(job, 420)
    log = (tmp_path / f"tune-{job}.out").read_text()
    assert states == {job: "COMPLETED"}, log[-3000:]
    assert "ray cluster up: 2 node(s)" in log and "ray stopped" in log
    with open(out / "tune" / "t" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    hosts = {h for r in rows for h in store.read_attrs(store.run_path(out, r["run_id"]))["hosts"]}
    assert hosts == {"node1", "node2"}
    left = subprocess.run(["pgrep", "-f", f"/tmp/ray-{job}-"], capture_output=True, text=True).stdout
    assert not left.strip(), left  # both nodes' Ray processes ended with the job


@pytest.fixture
def revive_nodes():
    """Bring a killed node back (cluster2.sh start is idempotent) and wait until it is idle again."""
    yield
    subprocess.run(["bash", str(ROOT / "slurm/cluster2.sh"), "start"], check=True, capture_output=True)
    deadline = time.time() + 120
    while len(idle_nodes()) < 2 and time.time() < deadline:
        time.sleep(1)


@pytest.mark.timeout(1200)  # SlurmdTimeout, a requeue, a resumed run and a reference run
@pytest.mark.skipif(cluster_name() != "local2", reason="kills a node of slurm/cluster2.sh's cluster")
def test_node_killed_mid_run_is_requeued_and_resumes(tmp_path, slurm_env, revive_nodes):
    body = SPEC.replace("epochs: 2", "epochs: 12, save_every: 1").replace("[4, 8]", "[4]")
    _, runs = make_spec(tmp_path, body)
    out = tmp_path / "res"
    driver = sbatch([f"--output={tmp_path}/grid-%j.out", str(ROOT / "slurm/grid.sh"), str(tmp_path / "spec.yaml"),
                     "--out", str(out)], slurm_env, tmp_path)
    assert wait_job(driver, 120) == {driver: "COMPLETED"}
    array = (tmp_path / f"grid-{driver}.out").read_text().split("submitted array job ")[1].split()[0]
    ckpt = store.run_dir(out, run_id(runs[0])) / "checkpoint.pt"
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.2)
    first = ckpt.stat().st_mtime_ns
    while ckpt.stat().st_mtime_ns == first and time.time() < deadline:  # epoch 1 saved: kill mid-run
        time.sleep(0.05)
    node = subprocess.run(["squeue", "-h", "-j", array, "-o", "%N"], capture_output=True, text=True).stdout.strip()
    assert node in ("node1", "node2")
    subprocess.run(["bash", str(ROOT / "slurm/cluster2.sh"), "kill-node", node], check=True, capture_output=True)

    assert wait_job(array, 420) == {f"{array}_0": "COMPLETED"}
    history = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", array, "-o", "State,NodeList"],
                             capture_output=True, text=True).stdout.split()
    assert f"NODE_FAIL|{node}" in history, history
    log = (out / "logs" / f"{array}_0.out").read_text()
    assert "resuming after epoch" in log, log
    resumed = read(out, runs[0], epochs=True)
    other = ({"node1", "node2"} - {node}).pop()
    assert resumed["attrs"]["hosts"] == [other] and resumed["attrs"]["status"] == "completed"

    from runner.launch.run import run_one
    run_one(runs[0], tmp_path / "reference", progress=False)  # the same run, never interrupted
    reference = read(tmp_path / "reference", runs[0], epochs=True)
    np.testing.assert_allclose(resumed["history"]["steps"]["loss"], reference["history"]["steps"]["loss"], atol=1e-6)
    np.testing.assert_allclose(resumed["final"]["test"]["embeddings"], reference["final"]["test"]["embeddings"],
                               atol=1e-6)
