"""`python -m runner.train [SPEC] [--set key=value ...] --out DIR`: one run, 1 or N ranks.

The run writes DIR/runs/<run_id>/: run.h5 (results, see docs/hdf5.md), checkpoint.pt
while it trains, model.pt when done, and tb/ for TensorBoard. A run whose run.h5
says `completed` is skipped; a checkpoint of the same run_id is resumed.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import torch

from runner import dist, engine, store
from runner.config import ConfigError, RunConfig, run_id as make_run_id
from runner.provenance import provenance


class RunLocked(RuntimeError):
    """Another process is running the same run_id in the same results directory."""


@contextmanager
def run_lock(directory: Path):
    """An exclusive flock on runs/<run_id>/.lock: two launches never train the same run at once."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        for attempt in range(20):  # a status probe (runner.grid.is_locked) holds it for microseconds
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            raise RunLocked(f"run {directory.name} is being trained by another process")
        yield


def prepare_data(cfg: RunConfig):
    """Load, split and pick the augmentation policy; raises ConfigError on bad data settings."""
    from runner.augment import policy_for
    from runner.data import load_dataset, split_dataset
    ds = load_dataset(cfg.data)
    splits = split_dataset(ds, cfg.data)
    return splits, policy_for(cfg.data, ds.meta.get("family", "folder"))


def _record(cfg: RunConfig, rid: str, status: str, state: engine.TrainState, splits, attrs: dict) -> store.RunRecord:
    rec = store.RunRecord(run_id=rid, config=cfg.to_dict(), status=status, attrs=attrs)
    rec.steps = {k: torch.tensor(v).numpy() for k, v in state.steps.items()}
    rec.epoch_table = state.epochs
    if splits is not None:
        if state.snapshots:
            last = max(state.snapshots)
            for split in ("train", "test"):
                part = getattr(splits, split)
                rec.final[split] = {"embeddings": state.snapshots[last][split].numpy().astype("float32"),
                                    "labels": part.labels.numpy(), "index": part.index.numpy()}
            rec.epochs = {e: {s: v.numpy() for s, v in snap.items()} for e, snap in state.snapshots.items()}
        rec.data = {"class_names": splits.train.class_names, "family": splits.train.meta.get("family", ""),
                    "image_shape": list(splits.train.images.shape[1:])}
        if splits.train.parents is not None:
            rec.data["parents"] = splits.train.parents
    return rec


def run_one(cfg: RunConfig, out: str | Path, env: Optional[dist.DistEnv] = None, *,
            progress: Optional[bool] = None, stop_after_epochs: Optional[int] = None,
            on_epoch: Optional[Callable[[engine.TrainState], None]] = None, retry_failed: bool = True,
            record_stopped: bool = False) -> dict:
    """Train (or resume, or skip) one run and write its run.h5. Returns a summary dict.

    on_epoch may raise StopRun to end the run as `stopped` (run.h5 written, stopped_epoch set).
    record_stopped writes that `stopped` run.h5 before every on_epoch call, for schedulers
    (Ray Tune's ASHA) that may end the process inside the callback; the final write replaces it.
    """
    env = env or dist.from_environ()
    rid = make_run_id(cfg)
    rdir = store.run_dir(out, rid)
    path = rdir / "run.h5"
    status = store.run_status(path)
    if status == "completed" or (status == "failed" and not retry_failed):
        return {"run_id": rid, "status": status, "skipped": True, "path": str(path)}
    if env.is_main:
        store.check_writable(out)  # a clear error before training, not a traceback at the first write
        rdir.mkdir(parents=True, exist_ok=True)
    with (run_lock(rdir) if env.is_main else _nothing()):
        # another launch may have finished this run between the check above and the lock
        status = store.run_status(path)
        if status == "completed" or (status == "failed" and not retry_failed):
            return {"run_id": rid, "status": status, "skipped": True, "path": str(path)}
        if env.is_main:
            for tmp in rdir.glob(".*.tmp"):  # left by a killed writer; under the lock nobody else writes here
                tmp.unlink(missing_ok=True)
        return _train(cfg, rid, rdir, env, progress, stop_after_epochs, on_epoch, record_stopped)


@contextmanager
def _nothing():
    yield


def _train(cfg, rid, rdir, env, progress, stop_after_epochs, on_epoch, record_stopped=False) -> dict:
    from runner.checkpoint import load_checkpoint, save_checkpoint
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    attrs = {"seed": cfg.seed, "start_time": started, **provenance(env)}
    state, splits, logger = engine.TrainState(), None, None
    progress = dist.is_tty() and env.is_main if progress is None else progress
    try:
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
        device = dist.pick_device(cfg.train.device, env)
        dist.init_process_group(env, device)
        attrs["hosts"] = dist.gather_hosts(env)  # a rank per host on multi-node runs
        splits, policy = prepare_data(cfg)
        parts = engine.build_parts(cfg, splits, policy, env, device)
        ckpt = rdir / "checkpoint.pt"
        state = load_checkpoint(ckpt, parts, rid) or state
        if state.epoch and env.is_main:
            print(f"run {rid}: resuming after epoch {state.epoch} from {ckpt}", flush=True)
        if env.is_main:
            from runner.tb import TBLogger
            logger = TBLogger(rdir / "tb")
        logged = len(state.steps["step"])
        stop_at = state.epoch + stop_after_epochs if stop_after_epochs else None

        def on_epoch_end(st: engine.TrainState, parts_: engine.Parts) -> None:
            nonlocal logged
            if env.is_main:
                logger.log_steps(st.steps, logged)
                logged = len(st.steps["step"])
                logger.log_epoch(st.epochs[-1])
                save_checkpoint(ckpt, st, parts_, rid)
                if record_stopped and on_epoch:
                    _write_stopped(cfg, rid, rdir, st, splits, attrs)
            if on_epoch:
                on_epoch(st)
            if stop_at is not None and st.epoch >= stop_at and st.epoch < parts_.epochs:
                raise _Stop()

        t0 = time.perf_counter()
        try:
            state = engine.fit(cfg, splits, parts, env, state, on_epoch_end, progress)
        except _Stop:
            return {"run_id": rid, "status": "interrupted", "epoch": state.epoch, "path": str(rdir / "run.h5")}
        except StopRun:
            if env.is_main:
                _write_stopped(cfg, rid, rdir, state, splits, attrs)
            return {"run_id": rid, "status": "stopped", "epoch": state.epoch, "path": str(rdir / "run.h5")}
        metrics = {k: v for k, v in state.epochs[-1].items() if k not in ("epoch", "train_loss", "train_s", "eval_s")}
        n_samples = sum(1 for _ in state.steps["step"]) * cfg.train.batch_size * env.world_size
        attrs.update(status_reason="", metrics=metrics, train_time_s=state.elapsed_s,
                     wall_time_s=time.perf_counter() - t0, samples_per_s=n_samples / max(state.elapsed_s, 1e-9),
                     epochs_run=state.epoch)
        if env.is_main:
            _finish(cfg, rid, rdir, state, splits, attrs, logger, unwrap_model(parts.model))
        return {"run_id": rid, "status": "completed", "metrics": metrics, "path": str(rdir / "run.h5"),
                "train_time_s": state.elapsed_s, "samples_per_s": attrs["samples_per_s"]}
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:  # recorded as a failed run; the grid goes on
        if env.is_main:
            attrs.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=20),
                         end_time=_now())
            if isinstance(exc, engine.NonFiniteLoss):
                attrs.update(failed_epoch=exc.epoch, failed_step=exc.step)
            try:
                store.write_run(rdir / "run.h5", _record(cfg, rid, "failed", state, splits, attrs))
            except OSError as write_exc:  # a full or vanished disk: report both reasons, leave no run.h5
                attrs["error"] += f" (and run.h5 could not be written: {type(write_exc).__name__}: {write_exc})"
        return {"run_id": rid, "status": "failed", "error": attrs.get("error", f"{type(exc).__name__}: {exc}"),
                "path": str(rdir / "run.h5")}
    finally:
        if logger is not None:
            logger.close()
        dist.teardown()


class _Stop(Exception):
    """Raised from the epoch callback to end a run early (tests, schedulers)."""


class StopRun(Exception):
    """Raise from on_epoch to end a run as `stopped` (e.g. ASHA); run.h5 records the epoch."""


def _write_stopped(cfg, rid, rdir, state, splits, attrs) -> None:
    """run.h5 with status `stopped` after state.epoch; the checkpoint stays for a resume."""
    last = state.epochs[-1] if state.epochs else {}
    metrics = {k: v for k, v in last.items() if k not in ("epoch", "train_loss", "train_s", "eval_s")}
    extra = dict(status_reason=f"stopped early by a scheduler after epoch {state.epoch}", metrics=metrics,
                 stopped_epoch=state.epoch, epochs_run=state.epoch, train_time_s=state.elapsed_s, end_time=_now())
    store.write_run(rdir / "run.h5", _record(cfg, rid, "stopped", state, splits, {**attrs, **extra}))


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _finish(cfg, rid, rdir, state, splits, attrs, logger, model) -> None:
    """Write run.h5 (the result), TensorBoard HParams/projector, final weights; drop the checkpoint."""
    attrs["end_time"] = _now()
    rec = _record(cfg, rid, "completed", state, splits, attrs)
    logger.log_hparams(cfg.to_dict(), attrs["metrics"], run_name="hparams")
    logger.log_projector(rec.final["test"]["embeddings"], rec.final["test"]["labels"],
                         splits.test.class_names, splits.test.images, cfg.seed)
    # model.pt first: run.h5 saying `completed` is the marker that the run is done, so it comes last
    torch.save({"run_id": rid, "model": model.state_dict()}, rdir / ".model.pt.tmp")
    store.fsync_replace(rdir / ".model.pt.tmp", rdir / "model.pt")
    store.write_run(rdir / "run.h5", rec)
    (rdir / "checkpoint.pt").unlink(missing_ok=True)


METRIC_NAMES = ("knn1", "knn5", "ncm", "p_at_1", "r_precision", "map_at_r")


def format_result(result: dict) -> str:
    """A short table of the run's test metrics and speed."""
    skipped = " (already there: skipped)" if result.get("skipped") else ""
    lines = [f"run {result['run_id']}: {result['status']}{skipped}  ({result['path']})"]
    if result.get("metrics"):
        m = result["metrics"]
        lines.append("  " + "  ".join(f"{k:>11}" for k in METRIC_NAMES))
        lines.append("  " + "  ".join(f"{m.get(k, float('nan')):11.4f}" for k in METRIC_NAMES))
    if "train_time_s" in result:
        lines.append(f"  train time {result['train_time_s']:.1f} s, {result['samples_per_s']:.0f} samples/s")
    if result.get("error"):
        lines.append(f"  error: {result['error']}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.train", description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", help="jobs/*.yaml (its base settings); defaults: digits, triplet + semi-hard")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. loss.margin=0.5")
    p.add_argument("--out", default="results", help="results directory (default: results)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and run_id, then exit")
    args = p.parse_args(argv)
    from runner.spec import load_config
    try:
        cfg = load_config(args.spec, args.set)
        if args.print_config:
            import json
            print(json.dumps({"run_id": make_run_id(cfg), **cfg.to_dict()}, indent=2))
            return 0
        from runner.grid import validate_run
        validate_run(cfg)  # loss/miner pairing and data location: before a run directory exists
        result = run_one(cfg, args.out)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if dist.from_environ().is_main:
        print(format_result(result))
    return 0 if result["status"] in ("completed", "interrupted") else 1


if __name__ == "__main__":
    sys.exit(main())
