"""TensorBoard logs rebuilt from run.h5: HParams for the whole grid, projector for chosen runs.

`tensorboard --logdir REPORT/tensorboard --host 127.0.0.1` then shows
  HParams:   one session per run (flattened config and eval_protocol -> final metrics of the
             run's recorded protocol, as recomputed by analysis.load), to filter and sort the
             grid; per-step loss / diagnostics and per-epoch metric scalars per run;
  Projector: final query embeddings (the protocol's query split) of the chosen runs with
             class labels and image sprites.
Training writes its own logs to results/runs/<run_id>/tb; these are built from the HDF5
alone, so they also exist for runs whose tb/ was lost. tensorboard is imported lazily. A run's
HParams folder remembers the stamp of the run.h5 it was written from: a second report over
unchanged results writes nothing again, and a rerun run's folder is rewritten.

Sessions are written by runner.store.EventFile, synchronously: torch's SummaryWriter hands every
scalar to a writer thread through a 10-slot queue, and over 1,000 runs (~300,000 scalars) the
waiting on that queue was most of the report's time.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from runner.store import file_stamp
from analysis.load import Runs, load_data_info, load_split_images
from analysis.metrics import protocol_of
from runner.store import METRIC_NAMES, EventFile, atomic_write, read_attrs, read_final, read_history

SPRITE_LIMIT_PX = 8192
MAX_PROJECTOR_POINTS = 1000
STEP_POINTS = 40_000
"""Step-scalar points per grid, shared by its runs' curves (at most 200, at least 50 a curve): writing
them is most of the logs' time, 1,000 runs get 50 points a curve, the 60-run exercise 200."""
STAMP = "written_from"
"""File in a run's HParams folder: the run.h5 stamp (size, mtime) the events were written from."""
STEP_SCALARS = ("loss", "active_fraction", "pos_distance", "neg_distance")


def _summary_writer(logdir: Path):
    # torch.utils.tensorboard loads tensorboard and protobuf (about a second): only when logs are written
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(logdir))


def _hparam_value(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "None"
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def write_hparams(runs: Runs, logdir: str | Path, scalars: bool = True) -> Path:
    """One HParams session per run under logdir/hparams/<run_id> (+ step scalars)."""
    logdir = Path(logdir) / "hparams"
    step_points = int(np.clip(STEP_POINTS // max(1, len(runs.table)), 50, 200))
    for _, run in runs.table.iterrows():
        folder, stamp = logdir / run["run_id"], f"{file_stamp(run['path'])} scalars={scalars} points={step_points}"
        if (folder / STAMP).exists() and (folder / STAMP).read_text() == stamp:
            continue  # written from this very run.h5
        shutil.rmtree(folder, ignore_errors=True)  # events of an older run.h5 would add a second session
        _write_session(runs, run, folder, scalars, step_points)
        atomic_write(folder / STAMP, stamp)
    return logdir


def _write_session(runs: Runs, run, folder: Path, scalars: bool, step_points: int = 200) -> None:
    """One run's HParams session, its step scalars and its per-epoch metrics."""
    hp = {c: _hparam_value(run[c]) for c in runs.config_columns if c != "data.root"}
    hp["status"] = run["status"]
    hp["eval_protocol"] = str(run.get("eval_protocol", "stratified"))  # which queries/gallery the metrics use
    metrics = {f"hparam/{m}": float(run[m]) for m in METRIC_NAMES if np.isfinite(run.get(m, np.nan))}
    # torch.utils.tensorboard loads tensorboard and protobuf: imported only when logs are written
    from torch.utils.tensorboard import summary as tb_summary
    with EventFile(folder) as writer:
        for summary in tb_summary.hparams(hp, metrics):
            writer.summary(summary)
        writer.scalars(metrics)
        if scalars:  # the run's curves as it recorded them; steps thinned to step_points rows
            steps = read_history(run["path"], "steps", ("step", *STEP_SCALARS), max_points=step_points)
            _write_rows(writer, steps, "step")
            _write_rows(writer, read_history(run["path"], "epochs", ("epoch", *METRIC_NAMES)), "epoch")


def _write_rows(writer: EventFile, history: dict, index: str) -> None:
    """One event per row of history (column -> array): its finite values as `index/column` scalars at step row[index]."""
    if index not in history:
        return
    keys = [k for k in history if k != index]
    for i, row in zip(history[index].tolist(), zip(*(history[k].tolist() for k in keys))):
        writer.scalars({f"{index}/{k}": v for k, v in zip(keys, row) if math.isfinite(v)}, i)


def write_projector(paths: dict, logdir: str | Path, max_points: int = MAX_PROJECTOR_POINTS) -> Path:
    """Final query embeddings (protocol's query split) of {label: run.h5 path} in one projector, with sprites."""
    logdir = Path(logdir) / "projector"
    with _summary_writer(logdir) as writer:
        for label, path in paths.items():
            final, info = read_final(path), load_data_info(path)
            test = final[protocol_of(read_attrs(path))["query"]]
            keep = np.sort(np.random.default_rng(0).permutation(len(test["labels"]))[:max_points])
            names = info["class_names"] or []
            meta = [[names[int(c)] if int(c) < len(names) else str(int(c)),
                     (info["parents"] or [""] * (int(c) + 1))[int(c)] if info["parents"] else ""]
                    for c in test["labels"][keep]]
            images = load_split_images(info["config"]["data"], test["index"][keep])
            label_img = None
            if images is not None:
                side = SPRITE_LIMIT_PX // math.ceil(math.sqrt(len(keep)))
                label_img = torch.from_numpy(images).float().div(255.0)
                if label_img.shape[1] == 1:
                    label_img = label_img.repeat(1, 3, 1, 1)
                if label_img.shape[-1] > side:
                    label_img = torch.nn.functional.interpolate(label_img, size=(side, side), mode="bilinear",
                                                                antialias=True)
            writer.add_embedding(torch.from_numpy(test["embeddings"][keep]), metadata=meta,
                                 metadata_header=["class", "parent"], label_img=label_img, tag=_tag(label))
    return logdir


def _tag(label: str) -> str:
    """A projector tag (also a directory name): letters, digits and -_=. only, no runs of '_'."""
    return re.sub(r"_+", "_", "".join(ch if ch.isalnum() or ch in "-_=." else "_" for ch in label)).strip("_")[:60]


def write_tensorboard(runs: Runs, logdir: str | Path, chosen: dict, scalars: bool = True) -> Path:
    logdir = Path(logdir)
    write_hparams(runs, logdir, scalars)
    if chosen:
        write_projector(chosen, logdir)
    return logdir


__all__ = ["write_tensorboard", "write_hparams", "write_projector"]
