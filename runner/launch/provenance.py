"""Where a result came from: package versions, git revision (runner.launch.revision), host."""

from __future__ import annotations

import platform
from importlib import metadata

from runner import dist
from runner.launch.revision import git_rev

PACKAGES = ("torch", "torchvision", "pytorch-metric-learning", "numpy", "h5py", "scikit-learn", "dmlrunner")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(env: dist.DistEnv) -> dict:
    return {"versions": versions(), "git_rev": git_rev(), "host": dist.hostname(),
            "world_size": env.world_size, "launcher": env.source}
