"""A run's provenance in run.h5: package versions, git revision and diff hash, SLURM job, GPUs."""

import hashlib
from importlib import metadata

import torch

from runner import store
from runner.launch import provenance
from runner.launch.revision import git_diff
from runner.launch.run import run_one
from runner.spec import resolve

SLURM = {"SLURM_JOB_ID": "4712", "SLURM_ARRAY_JOB_ID": "4711", "SLURM_ARRAY_TASK_ID": "3",
         "SLURM_JOB_NODELIST": "gpu[03-04]", "SLURM_JOB_PARTITION": "gpu"}


def test_run_h5_records_versions_slurm_job_and_diff(tmp_path, tiny, monkeypatch):
    for key in ("SLURM_STEP_ID", "SLURM_RESTART_COUNT", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in SLURM.items():  # what sbatch sets in an array task's environment
        monkeypatch.setenv(key, value)
    result = run_one(resolve(tiny, {"train": {"epochs": 1}}), tmp_path, progress=False)
    assert result["status"] == "completed"
    attrs = store.read_attrs(store.run_path(tmp_path, result["run_id"]))
    assert attrs["slurm"] == {k.lower(): v for k, v in SLURM.items()}
    versions = attrs["versions"]
    assert versions["torch"] == torch.__version__
    for name in ("pytorch-metric-learning", "numpy", "h5py", "scikit-learn", "torchvision"):
        assert versions[name] == metadata.version(name)
    diff = git_diff()
    if diff:  # a checkout with local changes: the hash names the stored diff
        assert attrs["diff_sha256"] == hashlib.sha256(diff.encode()).hexdigest()
        assert (tmp_path / "provenance" / f"{attrs['diff_sha256']}.diff").read_text() == diff
    else:
        assert attrs["diff_sha256"] == ""
    assert "gpu_model" not in attrs  # a CPU run names no GPU


def test_gpu_model_and_count_on_cuda():
    assert provenance.gpus(torch.device("cpu")) == {}
    if not torch.cuda.is_available():
        return
    info = provenance.gpus(torch.device("cuda", 0))
    assert info["gpu_model"] == torch.cuda.get_device_name(0) and info["gpu_count"] == torch.cuda.device_count()
    assert info["cuda_version"] == torch.version.cuda
