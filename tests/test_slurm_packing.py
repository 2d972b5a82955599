"""Several runs per GPU on real SLURM: GRID_RUNS_PER_GPU in slurm/grid.sh (the mechanism, on CPU)."""

import shutil
import subprocess

import pytest

from tests.conftest import ROOT
from tests import test_slurm
from tests.test_slurm import assert_all_completed, make_spec, sbatch, wait_job

slurm_env = test_slurm.slurm_env  # the fixture: SLURM_*/GRID_* of the calling shell removed

pytestmark = [pytest.mark.slurm,
              pytest.mark.skipif(shutil.which("sinfo") is None, reason="SLURM is not installed (no sinfo)")]


def test_grid_sh_packed_mode_trains_two_runs_in_one_step(tmp_path, slurm_env):
    spec, runs = make_spec(tmp_path)
    out = tmp_path / "res"
    slurm_env.update(GRID_MODE="packed", GRID_RUNS_PER_GPU="2")
    job = sbatch(["-n", "1", "--cpus-per-task=2", f"--output={tmp_path}/packed-%j.out", str(ROOT / "slurm/grid.sh"),
                  str(spec), "--out", str(out)], slurm_env, tmp_path)
    assert wait_job(job, 300) == {job: "COMPLETED"}, (tmp_path / f"packed-{job}.out").read_text()
    assert_all_completed(out, runs)
    steps = subprocess.run(["sacct", "-n", "-P", "-j", job, "-o", "JobID,State"], capture_output=True, text=True).stdout
    assert f"{job}.0|COMPLETED" in steps and f"{job}.1|" not in steps  # both runs in one srun step
    log = (out / "logs" / f"{job}-run0-1.out").read_text()
    assert log.count("completed") >= 2, log


def test_grid_sh_rejects_a_bad_runs_per_gpu(tmp_path, slurm_env):
    spec, _ = make_spec(tmp_path)
    for value, extra in (("0", {}), ("2", {"GRID_TASKS_PER_RUN": "2"})):
        env = {**slurm_env, "GRID_RUNS_PER_GPU": value, **extra}
        p = subprocess.run(["bash", str(ROOT / "slurm/grid.sh"), str(spec), "--out", str(tmp_path / "res")],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 2 and "GRID_RUNS_PER_GPU" in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    assert not (tmp_path / "res").exists()
