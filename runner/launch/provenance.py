"""Where a result came from, enough to redo the run: package versions, git revision and the hash of the
uncommitted diff (runner.launch.revision; the diff itself stored once under OUT/provenance/), host,
the SLURM job (id, array task, node list) and the GPUs."""

from __future__ import annotations

import functools
import platform
from importlib import metadata
from pathlib import Path

import torch

from runner import dist
from runner.launch.revision import git_diff, git_rev
from runner.store.submissions import store_diff

PACKAGES = ("torch", "torchvision", "pytorch-metric-learning", "numpy", "scipy", "h5py", "scikit-learn", "pillow",
            "dmlrunner")


@functools.lru_cache(maxsize=1)
def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["torch"] = torch.__version__  # the build imported, with its CUDA tag (2.14.1+cu130); metadata drops it
    return out


@functools.lru_cache(maxsize=1)
def _diff() -> str:
    return git_diff()  # once per process, as git_rev: the runs of one task share a checkout


def gpus(device: torch.device) -> dict:
    """The run's GPU model, the GPUs this process sees and the CUDA version; {} on CPU."""
    if device.type != "cuda":
        return {}
    return {"gpu_model": torch.cuda.get_device_name(device), "gpu_count": torch.cuda.device_count(),
            "cuda_version": torch.version.cuda}


def provenance(env: dist.DistEnv, device: torch.device = torch.device("cpu"), out: str | Path | None = None) -> dict:
    """Root attributes of a run.h5 that say where it came from; with `out`, rank 0 stores the diff once."""
    prov = {"versions": versions(), "git_rev": git_rev(), "host": dist.hostname(),
            "world_size": env.world_size, "launcher": env.source, **gpus(device)}
    slurm = dist.slurm_job()
    if slurm:
        prov["slurm"] = slurm
    if out is not None and env.is_main:
        prov["diff_sha256"] = store_diff(out, _diff()) or ""
    return prov
