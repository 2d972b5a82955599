"""One run's lifecycle: skip or lock, set up, train, then finish or fail; its files in store.

    run_one(cfg, out)
      dist.pick_device, init_process_group    every rank meets first
      start_decision (rank 0, broadcast)      skip a completed run, or take the lock (one process per run_id)
      setup(run, device)                      threads, data, parts, checkpoint
      engine.fit(..., on_epoch_end)           TensorBoard scalars and checkpoint.pt after every epoch
      finish(run, ...) / fail(run, ...)       run.h5 (+ model.pt, HParams, projector) or a failed run.h5

A `Run` carries what every one of those steps needs; `record` turns it and the train
state into the RunRecord that store.write_run writes.
"""

from __future__ import annotations

import datetime
import functools
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from runner import dist, store
from runner.config import ConfigError, DataConfig, RunConfig, run_id
from runner.data import ImageSet, Splits, load_dataset, split_dataset
from runner.data.augment import AugmentPolicy, policy_for
from runner.data.streaming import is_lazy
from runner.launch.progress import EpochLog
from runner.launch.provenance import provenance
from runner.launch.start import is_done, start_decision
from runner.launch.tb_logger import TBLogger
from runner.training import engine
from runner.training.batches import stream_source
from runner.training.checkpoint import load_checkpoint, save_checkpoint
from runner.training.parts import Parts, build_parts, unwrap
from runner.training.protocols import Protocol, protocol_for

INTERRUPTED = "interrupted"
"""stop_after_epochs was reached: the checkpoint stays, the next launch resumes."""
STOPPED = "stopped"
"""A scheduler (ASHA) ended the run: run.h5 says `stopped` with `stopped_epoch`."""

OnEpoch = Callable[[engine.TrainState], bool]
"""Called after every evaluated epoch (train.eval_every) on every rank; True ends the run as `stopped`."""


@dataclass
class Run:
    """One run as it trains: its config, id, directory, process layout and provenance."""
    cfg: RunConfig
    run_id: str
    dir: Path
    env: dist.DistEnv
    attrs: dict = field(default_factory=dict)
    """Provenance known at start (seed, versions, hosts...): carried into every run.h5 it writes."""
    splits: Optional[Splits] = None
    protocol: Optional[Protocol] = None
    """Which split is scored against which (runner.training.protocols), decided once the data is split."""
    hparam_keys: tuple = ()
    """The config keys its grid varies: first in TensorBoard's HParams table."""

    @property
    def path(self) -> Path:
        return self.dir / "run.h5"

    def summary(self, status: str, **extra) -> dict:
        return {"run_id": self.run_id, "status": status, "path": str(self.path), **extra}


def run_one(cfg: RunConfig, out: str | Path, env: Optional[dist.DistEnv] = None, *,
            progress: Optional[bool] = None, stop_after_epochs: Optional[int] = None,
            on_epoch: Optional[OnEpoch] = None, retry_failed: bool = True, record_stopped: bool = False,
            hparam_keys: tuple = ()) -> dict:
    """Train (or resume, or skip) one run and write its run.h5. Returns a summary dict.

    Every rank takes the same decision: the ranks meet in the process group first, then rank 0
    checks the status, takes the lock, checks again and tells the others (start_decision), so
    no rank ever waits for a rank that skipped the run. A config or data problem found once the
    run is under its lock is recorded as a `failed` run.h5 with the reason.
    on_epoch may return True to end the run as `stopped` (run.h5 written, stopped_epoch set).
    record_stopped writes that `stopped` run.h5 before every on_epoch call, for schedulers
    (Ray Tune's ASHA) that may end the process inside the callback.
    Raises store.RunLocked (on every rank) when another process trains the same run_id in `out`,
    and ConfigError (every rank) when `out` is not writable.
    """
    env = env or dist.from_environ()
    run = Run(cfg, run_id(cfg), store.run_dir(out, run_id(cfg)), env, hparam_keys=tuple(hparam_keys))
    try:
        device = dist.pick_device(cfg.train.device, env)
    except ConfigError as exc:  # decided alike on every rank of a node, before any of them waits for another
        return _failed_before_start(run, out, exc, retry_failed)
    created = dist.init_process_group(env, device)
    try:
        with ExitStack() as held:  # rank 0 holds the run's lock in here while it trains
            kind, detail = dist.broadcast_object(start_decision(run.dir, out, retry_failed, held) if env.is_main
                                                 else None, env)
            if kind == "locked":
                raise store.RunLocked(detail)
            if kind == "config_error":
                raise ConfigError(*detail)
            if kind == "error":
                raise RuntimeError(detail)
            if kind == "skip":
                return run.summary(detail, skipped=True)
            progress = dist.is_tty() and env.is_main if progress is None else progress
            return _train(run, device, progress, stop_after_epochs, on_epoch, record_stopped)
    finally:
        if created:  # a process group someone else made (Ray Train's) stays theirs
            dist.teardown()


def _failed_before_start(run: Run, out: str | Path, exc: ConfigError, retry_failed: bool) -> dict:
    """A run that cannot start here (train.device is cuda on a node without one): a failed run.h5 (rank 0)."""
    if run.env.is_main and not is_done(run.path, retry_failed):
        try:
            with store.run_lock(run.dir):
                run.attrs = {"seed": run.cfg.seed, "start_time": _now()}
                return fail(run, engine.TrainState(), exc)
        except store.RunLocked:
            pass  # the process that holds it is training it somewhere that can
    return run.summary("failed", error=f"{type(exc).__name__}: {exc}")


def _train(run: Run, device: torch.device, progress: bool, stop_after_epochs: Optional[int],
           on_epoch: Optional[OnEpoch], record_stopped: bool) -> dict:
    run.attrs = {"seed": run.cfg.seed, "start_time": _now()}
    state, logger, lines = engine.TrainState(), None, None
    try:
        run.attrs.update(provenance(run.env, device, run.dir.parent.parent))  # a full disk here fails the run too
        parts, state = setup(run, device)
        if run.env.is_main:
            logger = TBLogger(run.dir / "tb")
            lines = EpochLog(run.run_id, run.dir / "train.log", parts.epochs,
                             run.cfg.train.batch_size * run.env.world_size)
        stop_at = state.epoch + stop_after_epochs if stop_after_epochs else None
        callback = epoch_end(run, parts, logger, lines, state, stop_at, on_epoch, record_stopped)
        t0 = time.perf_counter()
        state = engine.fit(run.cfg.train, run.cfg.seed, run.splits, parts, run.env, state, callback, progress,
                           run.protocol, stream_source(run.splits, parts, run.cfg.seed, run.cfg.data.num_workers,
                                                        run.protocol), scored_every_epoch=on_epoch is not None)
        note_compile(run, state)
        if state.stop_reason == INTERRUPTED:
            return run.summary(INTERRUPTED, epoch=state.epoch)
        if state.stop_reason == STOPPED:
            if run.env.is_main and not record_stopped:  # with record_stopped it is on disk already
                write_stopped(run, state)
            return run.summary(STOPPED, epoch=state.epoch)
        return finish(run, state, parts, logger, time.perf_counter() - t0)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a ConfigError of the data or the model too: recorded as failed; the grid goes on
        return fail(run, state, exc)
    finally:
        for closing in (logger, lines):
            if closing is not None:
                closing.close()


def note_compile(run: Run, state: engine.TrainState) -> None:
    """train.compile: the first step's time (compilation included) into run.h5 and, once, the log."""
    if state.compile_s is not None:
        run.attrs["compile_s"] = state.compile_s
        if run.env.is_main:
            print(f"run {run.run_id}: torch.compile took {state.compile_s:.1f} s (its first step)", flush=True)


def setup(run: Run, device: torch.device) -> tuple[Parts, engine.TrainState]:
    """Threads and determinism; the data (run.splits); the parts on `device`; the checkpoint's state."""
    t = run.cfg.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    torch.use_deterministic_algorithms(t.deterministic, warn_only=True)
    run.attrs["hosts"] = dist.gather_hosts(run.env)  # a rank per host on multi-node runs
    run.splits, policy = prepare_data(run.cfg.data, ranks=run.env.world_size)
    if run.env.is_main and run.cfg.data.storage != "memory":
        print(f"run {run.run_id}: {run.splits.train.meta.get('storage_reason')}", flush=True)
    run.protocol = protocol_for(run.cfg.data, run.splits, run.cfg.eval.recall_at, run.cfg.eval.clustering)
    parts = build_run_parts(run.cfg, run.splits, policy, run.env, device)
    run.attrs["memory_format"] = "channels_last" if parts.channels_last else "contiguous"
    ckpt = run.dir / "checkpoint.pt"
    state = load_checkpoint(ckpt, parts, run.run_id) or engine.TrainState()
    if state.epoch and run.env.is_main:
        print(f"run {run.run_id}: resuming after epoch {state.epoch} from {ckpt}", flush=True)
    return parts, state


def prepare_data(cfg: DataConfig, ranks: int = 1) -> tuple[Splits, AugmentPolicy]:
    """Load (once per process and data config), split and pick the augmentation policy.

    Raises ConfigError on bad data settings. The loaded set is kept for the next run of
    the same process (runner.grid --run, --jobs workers, packed tasks): most grids vary
    everything but the data, and a fresh load is the largest fixed cost of a small run.
    """
    ds = _load_cached(cfg, ranks)
    return split_dataset(ds, cfg), policy_for(cfg, ds.meta.get("family", "folder"))


@functools.lru_cache(maxsize=1)
def _load_cached(cfg: DataConfig, ranks: int = 1) -> ImageSet:
    return load_dataset(cfg, ranks=ranks)  # splits index into it and copy: the cached set is never modified


def build_run_parts(cfg: RunConfig, splits: Splits, policy: AugmentPolicy, env: dist.DistEnv,
                    device: torch.device) -> Parts:
    """training.parts.build_parts with each of cfg's sections handed to its builder."""
    return build_parts(cfg.model, cfg.embedding, cfg.loss, cfg.miner, cfg.train, cfg.seed, splits.train, policy,
                       env, device)


def epoch_end(run: Run, parts: Parts, logger: Optional[TBLogger], lines: Optional[EpochLog], start: engine.TrainState,
              stop_at: Optional[int], on_epoch: Optional[OnEpoch], record_stopped: bool) -> engine.EpochCallback:
    """The engine's epoch callback: log, checkpoint, ask on_epoch; returns a stop reason or None."""
    first_epoch: Optional[int] = None  # the first epoch this process evaluates: the ETA's reference
    logged, trained_s = len(start.steps["step"]), start.elapsed_s  # steps logged, training seconds so far

    def on_epoch_end(state: engine.TrainState) -> Optional[str]:
        nonlocal logged, trained_s, first_epoch
        scored = engine.is_evaluated(state)  # train.eval_every: epochs without metrics only log steps
        if run.env.is_main:
            logger.log_steps(state.steps, logged)
            lr = state.steps["lr"][-1] if len(state.steps["lr"]) > logged else float("nan")
            first_epoch = state.epoch if first_epoch is None else first_epoch
            losses = state.steps["loss"][logged:]
            row = state.epochs[-1] if scored else {  # an epoch not evaluated: its loss and speed, no metric
                "epoch": state.epoch, "train_loss": sum(losses) / len(losses) if losses else float("nan"),
                "train_s": state.elapsed_s - trained_s}
            lines.epoch({**row, "lr": lr}, len(state.steps["step"]) - logged, first_epoch)
            if scored:
                logger.log_epoch(state.epochs[-1])
            logged, trained_s = len(state.steps["step"]), state.elapsed_s
            save_checkpoint(run.dir / "checkpoint.pt", state, parts, run.run_id)
            if scored and record_stopped and on_epoch:
                write_stopped(run, state)
        if scored and on_epoch and on_epoch(state):
            return STOPPED
        if stop_at is not None and stop_at <= state.epoch < parts.epochs:
            return INTERRUPTED
        return None
    return on_epoch_end


def finish(run: Run, state: engine.TrainState, parts: Parts, logger: Optional[TBLogger], wall_s: float) -> dict:
    """Write run.h5 (the result), TensorBoard HParams/projector, final weights; drop the checkpoint."""
    metrics = last_metrics(state)
    n_samples = len(state.steps["step"]) * run.cfg.train.batch_size * run.env.world_size
    samples_per_s = n_samples / max(state.elapsed_s, 1e-9)
    if run.env.is_main:
        rec = record(run, "completed", state, status_reason="", metrics=metrics, train_time_s=state.elapsed_s,
                     wall_time_s=wall_s, samples_per_s=samples_per_s, epochs_run=state.epoch, end_time=_now())
        logger.log_hparams(run.cfg.to_dict(), metrics, run_name="hparams", first=run.hparam_keys)
        sprites = None if is_lazy(run.splits.test.images) else run.splits.test.images  # stream: none decoded
        logger.log_projector(rec.final["test"]["embeddings"], rec.final["test"]["labels"],
                             run.splits.test.class_names, sprites, run.cfg.seed)
        # model.pt first: run.h5 saying `completed` is the marker that the run is done, so it comes last
        with store.atomic_path(run.dir / "model.pt") as tmp:
            torch.save({"run_id": run.run_id, "model": unwrap(parts.model).state_dict()}, tmp)
        store.write_run(run.path, rec)
        (run.dir / "checkpoint.pt").unlink(missing_ok=True)
        store.index_run(run.path)
    return run.summary("completed", metrics=metrics, train_time_s=state.elapsed_s, samples_per_s=samples_per_s)


def fail(run: Run, state: engine.TrainState, exc: Exception) -> dict:
    """Record a failed run.h5 with the reason (rank 0); a write that fails too is reported with it."""
    error = f"{type(exc).__name__}: {exc}"
    if run.env.is_main:
        extra = {"error": error, "traceback": "".join(traceback.format_exception(exc, limit=20)), "end_time": _now()}
        if isinstance(exc, engine.NonFiniteLoss):
            extra.update(failed_epoch=exc.epoch, failed_step=exc.step)
        try:
            store.write_run(run.path, record(run, "failed", state, **extra))
            store.index_run(run.path)
        except OSError as write_exc:  # a full or vanished disk: report both reasons, leave no run.h5
            error += f" (and run.h5 could not be written: {type(write_exc).__name__}: {write_exc})"
    return run.summary("failed", error=error)


def write_stopped(run: Run, state: engine.TrainState) -> None:
    """run.h5 with status `stopped` after state.epoch; the checkpoint stays for a resume."""
    store.write_run(run.path, record(
        run, STOPPED, state, status_reason=f"stopped early by a scheduler after epoch {state.epoch}",
        metrics=last_metrics(state), stopped_epoch=state.epoch, epochs_run=state.epoch,
        train_time_s=state.elapsed_s, end_time=_now()))


def last_metrics(state: engine.TrainState) -> dict:
    last = state.epochs[-1] if state.epochs else {}
    return {k: v for k, v in last.items() if k not in store.EPOCH_TIMING_KEYS}


def record(run: Run, status: str, state: engine.TrainState, **extra) -> store.RunRecord:
    """The RunRecord of `run` in `state`: run.attrs plus this write's extra attributes."""
    rec = store.RunRecord(run_id=run.run_id, config=run.cfg.to_dict(), status=status, attrs={**run.attrs, **extra})
    rec.steps = {k: torch.tensor(v).numpy() for k, v in state.steps.items()}
    rec.epoch_table = state.epochs
    splits = run.splits
    if splits is None:  # failed before the data was loaded
        return rec
    if run.protocol is not None:
        rec.attrs.update(run.protocol.attrs())
    if state.snapshots:
        last = max(state.snapshots)
        for split in state.snapshots[last]:  # train, test and the protocol's query/gallery
            part = getattr(splits, split)
            rec.final[split] = {"embeddings": state.snapshots[last][split].numpy().astype("float32", copy=False),
                                "labels": part.labels.numpy(), "index": part.index.numpy()}
        rec.epochs = {e: {s: v.numpy() for s, v in snap.items()} for e, snap in state.snapshots.items()}
    rec.data = {"class_names": splits.train.class_names, "family": splits.train.meta.get("family", ""),
                "image_shape": list(splits.train.images.shape[1:])}
    if splits.train.parents is not None:
        rec.data["parents"] = splits.train.parents
    return rec


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
