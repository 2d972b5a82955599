"""`python -m runner.tune SPEC --num-samples N`: Ray Tune search with ASHA over a spec's `search:`.

Each trial is one run of runner.train (`run_one`) whose epoch callback reports to Tune, so
trials land in OUT/runs/<run_id>/run.h5 like grid runs; a trial that ASHA ends early is
recorded as `stopped` with `stopped_epoch`. Ray's own files go to OUT/tune/. See docs/tune.md.

  search:                                   tune:
    train.lr: {loguniform: [1.0e-4, 1.0e-2]}  metric: val_map_at_r   (or val_knn1; mode max)
    loss.margin: {uniform: [0.05, 0.5]}       max_epochs / grace_period / reduction_factor
    embedding.dim: {choice: [16, 32, 64]}     cpus_per_trial, gpus_per_trial, workers_per_trial
    model.width: {int: [8, 32]}               val_fraction (when data.val_fraction is 0)
Ray is imported only here, and only after the spec has been validated.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from runner.config import ConfigError, RunConfig, merge_layer, resolve, run_id
from runner.grid import dotted_to_nested, load_spec, validate_run

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")


@dataclass(frozen=True)
class TuneSettings:
    metric: str = "val_map_at_r"
    """Validation metric ASHA compares: val_map_at_r or val_knn1 (never a test metric)."""
    mode: str = "max"
    """max or min."""
    max_epochs: Optional[int] = None
    """Epochs of a trial that runs to the end; None takes train.epochs of the spec."""
    grace_period: int = 2
    """Epochs every trial runs before ASHA may stop it."""
    reduction_factor: int = 3
    """ASHA keeps the top 1/reduction_factor at each rung."""
    cpus_per_trial: float = 1
    """Logical CPUs per trial (per worker with workers_per_trial > 1)."""
    gpus_per_trial: float = 0
    """GPUs per trial; > 1 runs the trial as DDP over that many Ray Train workers."""
    workers_per_trial: int = 1
    """DDP workers per trial (gloo on CPU); defaults to gpus_per_trial when that is > 1."""
    val_fraction: float = 0.15
    """data.val_fraction used when the spec has none: the validation split comes from train."""
    seed: int = 0
    """Seed of the search algorithm (the sampled configs)."""


def parse_settings(raw: dict) -> TuneSettings:
    names = TuneSettings.__dataclass_fields__
    for key, value in raw.items():
        if key not in names:
            raise ConfigError(f"tune.{key}", value, f"one of {', '.join(names)}")
    s = TuneSettings(**raw)
    if not s.metric.startswith("val_"):
        raise ConfigError("tune.metric", s.metric, "a validation metric such as val_map_at_r or val_knn1")
    if s.mode not in ("max", "min"):
        raise ConfigError("tune.mode", s.mode, "max or min")
    for key in ("grace_period", "reduction_factor", "workers_per_trial"):
        if not isinstance(getattr(s, key), int) or getattr(s, key) < 1:
            raise ConfigError(f"tune.{key}", getattr(s, key), "an integer >= 1")
    if not 0 < s.val_fraction < 1:
        raise ConfigError("tune.val_fraction", s.val_fraction, "a number in (0, 1)")
    return s


def parse_search(search: dict) -> dict:
    """{dotted.key: (distribution, args)} after checking each entry's shape; one-line ConfigError."""
    if not search:
        raise ConfigError("search", search, "a non-empty mapping of dotted.key: {choice|uniform|loguniform|int: ...}")
    out = {}
    for key, spec in search.items():
        where = f"search.{key}"
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(where, spec, "one of {choice: [v, ...]}, {uniform: [lo, hi]}, "
                                           "{loguniform: [lo, hi]}, {int: [lo, hi]}")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise ConfigError(where, args, "a non-empty list of choices")
        else:
            num = all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) \
                if isinstance(args, list) else False
            if not num or len(args) != 2 or not args[0] < args[1]:
                raise ConfigError(where, args, f"[low, high] numbers with low < high for {kind}")
            if kind == "loguniform" and args[0] <= 0:
                raise ConfigError(where, args, "loguniform bounds > 0")
            if kind == "int" and not all(isinstance(a, int) for a in args):
                raise ConfigError(where, args, "integer bounds [low, high] (both included)")
        out[str(key)] = (kind, args)
    return out


def trial_base(base: dict, settings: TuneSettings, num_threads: int = 1) -> dict:
    """The spec's base plus what every trial needs: a validation split, a torch thread per CPU."""
    layer: dict = {"train": {"num_threads": num_threads}}
    if not base.get("data", {}).get("val_fraction"):
        layer["data"] = {"val_fraction": settings.val_fraction}
    if settings.max_epochs:
        layer["train"]["epochs"] = settings.max_epochs
    return merge_layer(base, layer)


def trial_config(base: dict, sample: dict) -> RunConfig:
    return resolve(base, dotted_to_nested(sample))


def validate_search(base: dict, space: dict) -> None:
    """Resolve the base with each bound/choice of every key: unknown keys and bad values fail here."""
    try:
        validate_run(resolve(base))
    except ConfigError as exc:
        raise ConfigError(exc.key, exc.value, f"{exc.expected} [in the spec's base]") from None
    for key, (kind, args) in space.items():
        for value in args:  # every choice, or both bounds: every sample lies between them
            try:
                validate_run(trial_config(base, {key: value}))
            except ConfigError as exc:
                raise ConfigError(f"search.{key}", value, f"{exc.expected} [{exc.key}]") from None


def param_space(space: dict) -> dict:
    from ray import tune
    make = {"choice": lambda a: tune.choice(a), "uniform": lambda a: tune.uniform(*a),
            "loguniform": lambda a: tune.loguniform(*a), "int": lambda a: tune.randint(a[0], a[1] + 1)}
    return {"search": {key: make[kind](args) for key, (kind, args) in space.items()}}


def epoch_metrics(row: dict) -> dict:
    """One epoch row of the engine as plain floats for tune.report."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}


def run_trial(config: dict, base: dict, out: str) -> None:
    """Tune function trainable: one run_one, reporting every evaluated epoch (epoch 0 excluded)."""
    from ray import tune
    from runner.train import StopRun
    cfg = trial_config(base, config["search"])
    rid = run_id(cfg)

    def on_epoch(state) -> None:
        # epoch 0 is untrained; the last epoch is reported after run.h5 says completed, since
        # ASHA ends a trial that reaches max_t inside report()
        if not 0 < state.epoch < cfg.train.epochs:
            return
        try:
            tune.report({**epoch_metrics(state.epochs[-1]), "run_id": rid})
        except SystemExit:  # Tune ended this trial (ASHA) while we waited in report()
            raise StopRun() from None

    result = run_one_waiting(cfg, out, on_epoch)
    if result["status"] == "failed":
        raise RuntimeError(f"run {rid} failed: {result.get('error')}")
    if result["status"] == "completed":
        tune.report({**stored_last_epoch(rid, out), "run_id": rid})


def run_one_waiting(cfg: RunConfig, out: str, on_epoch, poll_s: float = 5.0) -> dict:
    """run_one; when another trial sampled the same config (same run_id) and holds its lock,
    wait for it, then take its result (run_one skips a completed run)."""
    from runner.train import RunLocked, run_one
    while True:
        try:
            return run_one(cfg, out, progress=False, on_epoch=on_epoch, record_stopped=True)
        except RunLocked:
            time.sleep(poll_s)


def stored_last_epoch(rid: str, out: str) -> dict:
    """The last epoch row of a finished run.h5 (also for runs done before a --resume)."""
    from runner.store import read_run, run_path
    epochs = read_run(run_path(out, rid))["history"]["epochs"]
    return {k: float(v[-1]) for k, v in epochs.items()}


def run_ddp_trial(config: dict, base: dict, out: str, workers: int, use_gpu: bool, cpus: float) -> None:
    """Tune function trainable for a DDP trial: a TorchTrainer whose workers call run_one."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    resources = {"CPU": cpus, **({"GPU": 1} if use_gpu else {})}
    trainer = TorchTrainer(
        ddp_worker, train_loop_config={"base": base, "sample": config["search"], "out": out},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=f"train-trial_id={tune.get_context().get_trial_id()}",
                                       storage_path=str(Path(out, "tune", "train").resolve()),
                                       callbacks=[TuneReportCallback()]))
    trainer.fit()


def ddp_worker(loop_config: dict) -> None:
    """One Ray Train worker: the process group is Ray's (gloo/nccl); run_one sees its ranks."""
    import ray.train
    from runner.dist import DistEnv
    from runner.train import run_one
    ctx = ray.train.get_context()
    env = DistEnv(ctx.get_world_rank(), ctx.get_local_rank(), ctx.get_world_size(), source="ray")
    cfg = trial_config(loop_config["base"], loop_config["sample"])
    rid = run_id(cfg)

    last: dict = {}

    def on_epoch(state) -> None:
        last.update(epoch_metrics(state.epochs[-1]))
        if 0 < state.epoch < cfg.train.epochs:  # every rank reports; Tune takes rank 0's metrics
            ray.train.report({**last, "run_id": rid})

    result = run_one(cfg, loop_config["out"], env, progress=False, on_epoch=on_epoch, record_stopped=True)
    if result["status"] == "completed":  # after run.h5 is written (rank 0), as in run_trial
        ray.train.report({**(last or stored_last_epoch(rid, loop_config["out"])), "run_id": rid})
    elif result["status"] == "failed":
        raise RuntimeError(f"run {rid} failed: {result.get('error')}")


def build_trainable(base: dict, out: str, s: TuneSettings):
    from ray import tune
    workers = s.workers_per_trial if s.workers_per_trial > 1 else max(1, int(s.gpus_per_trial))
    if workers > 1:  # the Tune trial only drives; its Ray Train workers hold the CPUs/GPUs
        fn = tune.with_parameters(run_ddp_trial, base=base, out=out, workers=workers,
                                  use_gpu=s.gpus_per_trial > 0, cpus=s.cpus_per_trial)
        return tune.with_resources(fn, {"cpu": 1})
    fn = tune.with_parameters(run_trial, base=base, out=out)
    return tune.with_resources(fn, {"cpu": s.cpus_per_trial, "gpu": s.gpus_per_trial})


def build_tuner(name: str, base: dict, space: dict, s: TuneSettings, out: str, num_samples: int,
                max_concurrent: Optional[int], resume: bool, callbacks: Optional[list] = None):
    """A Tuner over OUT/tune/<name>, or the restored one with --resume."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    storage = str(Path(out, "tune").resolve())
    trainable = build_trainable(base, out, s)
    path = os.path.join(storage, name)
    if resume:
        if not tune.Tuner.can_restore(path):
            raise ConfigError("--resume", path, "an earlier search of this spec in OUT/tune (none found)")
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=param_space(space))
    if os.path.exists(path):
        raise ConfigError("--out", path, "no earlier search of this spec (pass --resume to continue it)")
    max_t = resolve(base).train.epochs
    asha = ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=min(s.grace_period, max_t),
                         reduction_factor=s.reduction_factor)
    from ray.tune.search import BasicVariantGenerator
    return tune.Tuner(
        trainable, param_space=param_space(space),
        tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, scheduler=asha, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent,
                                    search_alg=BasicVariantGenerator(random_state=s.seed)),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1, callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=0)))


def results_rows(path: str, space: dict, s: TuneSettings, out: str) -> list[dict]:
    """One row per trial: config, last validation metric, test 1-NN, epochs run, status.

    status is run.h5's (completed / stopped by ASHA) for trials Ray finished, `failed` for
    errored ones and `unfinished` for trials an interruption left running (use --resume).
    """
    from ray.tune import ExperimentAnalysis
    from runner.store import run_path, run_status
    rows = []
    for trial in ExperimentAnalysis(path).trials:
        m = trial.last_result or {}
        rid = m.get("run_id", "")
        status = {"TERMINATED": run_status(run_path(out, rid)) if rid else "unfinished",
                  "ERROR": "failed"}.get(trial.status, "unfinished")
        sample = trial.config.get("search", {})
        rows.append({"trial": trial.trial_id, "run_id": rid, **{k: sample.get(k) for k in space},
                     s.metric: m.get(s.metric, math.nan), "test_knn1": m.get("knn1", math.nan),
                     "epochs": int(m.get("epoch", 0)), "status": status})
    sign = -1 if s.mode == "max" else 1
    return sorted(rows, key=lambda row: (math.isnan(row[s.metric]), sign * row[s.metric]
                                         if not math.isnan(row[s.metric]) else 0))


def write_results(rows: list[dict], base: dict, out: str, name: str, metric: str) -> tuple[Path, Optional[Path]]:
    """OUT/tune/<name>/results.csv and best.yaml (the best trial's full config, for runner.train)."""
    folder = Path(out, "tune", name)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / "results.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()} for r in rows)
    best = next((r for r in rows if not math.isnan(r[metric])), None)
    if best is None:
        return csv_path, None
    sample = {k: v for k, v in best.items() if "." in k}
    cfg = trial_config(base, sample)
    best_path = folder / "best.yaml"
    header = (f"# best trial {best['trial']} (run {best['run_id']}): {metric}={best[metric]:.4f}, "
              f"test knn1={best['test_knn1']:.4f}, {best['epochs']} epochs\n"
              f"# python -m runner.train {best_path} --out OUT\n")
    best_path.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return csv_path, best_path


def print_table(rows: list[dict], max_t: int) -> None:
    if not rows:
        print("no trials")
        return
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    widths = {c: max(len(c), *(len(fmt(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.rjust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt(r[c]).rjust(widths[c]) for c in cols))
    run = sum(r["epochs"] for r in rows)
    print(f"{len(rows)} trials, {sum(r['status'] == 'stopped' for r in rows)} stopped early by ASHA; "
          f"{run} epochs run vs {len(rows) * max_t} without early stopping "
          f"({len(rows) * max_t - run} saved)")


def init_ray(address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Start (or join) Ray unless this process already has it; True when we must shut it down."""
    import ray
    # trials keep the launch directory: relative paths in specs (data.root) stay valid
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
    return True


def prepare(spec_path: str, sets: list[str]) -> tuple[str, dict, dict, TuneSettings]:
    """Load and validate everything before Ray starts: (name, trial base, search space, settings)."""
    spec = load_spec(spec_path, sets)
    settings = parse_settings(spec.tune)
    space = parse_search(spec.search)
    base = trial_base(spec.base, settings, num_threads=max(1, int(settings.cpus_per_trial)))
    validate_search(base, space)
    return spec.name, base, space, settings


def main(argv: Optional[list[str]] = None, callbacks: Optional[list] = None) -> int:
    """CLI; `callbacks` (Ray Tune Callback objects) are for tests."""
    p = argparse.ArgumentParser(prog="python -m runner.tune", description=__doc__.splitlines()[0])
    p.add_argument("spec", help="jobs/*.yaml with a search: section")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every trial")
    p.add_argument("--out", default="results", help="results directory (default: results)")
    p.add_argument("--num-samples", type=int, default=10, help="trials to sample (default: 10)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials running at once (default: as resources allow)")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for a local Ray (default: all cores)")
    p.add_argument("--address", default=None, help="join a running Ray cluster (host:port) instead of starting one")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in OUT/tune/<name>")
    args = p.parse_args(argv)
    try:
        name, base, space, settings = prepare(args.spec, args.set)
        if args.num_samples < 1:
            raise ConfigError("--num-samples", args.num_samples, "an integer >= 1")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import ray
    out = str(Path(args.out).resolve())
    started = init_ray(args.address, args.num_cpus)
    try:
        tuner = build_tuner(name, base, space, settings, out, args.num_samples, args.max_concurrent, args.resume,
                            callbacks)
        t0 = time.perf_counter()
        tuner.fit()
        print(f"search wall time {time.perf_counter() - t0:.0f} s")
        max_t = resolve(base).train.epochs
        rows = results_rows(str(Path(out, "tune", name)), space, settings, out)
        print_table(rows, max_t)
        csv_path, best_path = write_results(rows, base, out, name, settings.metric)
        print(f"results: {csv_path}\nbest config: {best_path}")
        if any(r["status"] == "unfinished" for r in rows):
            print(f"search interrupted: continue it with --resume", file=sys.stderr)
            return 130
        return 0 if best_path else 1
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if started:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
