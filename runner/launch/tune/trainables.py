"""Ray Tune trainables: a trial is one run_one whose epoch callback reports to Tune.

ray is imported inside the functions: it is an optional dependency and costs seconds
to import; these functions only run inside a search that runner.tune has started.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from runner.config import ConfigError, run_id
from runner.dist import DistEnv
from runner.launch.many import run_each
from runner.launch.run import run_one
from runner.launch.tune.space import TuneSettings, param_space, trial_config
from runner.spec import resolve
from runner.store import read_run, run_path


def epoch_metrics(row: dict) -> dict:
    """One epoch row of the engine as plain floats for tune.report."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}


def run_trial(config: dict, base: dict, out: str) -> None:
    """Tune function trainable: one run_one, reporting every evaluated epoch (epoch 0 excluded)."""
    from ray import tune  # optional dependency: only inside a search
    cfg = trial_config(base, config["search"])
    rid = run_id(cfg)

    def on_epoch(state) -> bool:
        # epoch 0 is untrained; the last epoch is reported after run.h5 says completed, since
        # ASHA ends a trial that reaches max_t inside report()
        if not 0 < state.epoch < cfg.train.epochs:
            return False
        try:
            tune.report({**epoch_metrics(state.epochs[-1]), "run_id": rid})
        except SystemExit:  # Tune ended this trial (ASHA) while we waited in report(): a stop
            return True
        return False

    # another trial that sampled the same config (same run_id) may hold its lock: wait for it,
    # then take its result (run_one skips a completed run)
    result = next(run_each([cfg], out, progress=False, on_epoch=on_epoch, record_stopped=True, wait_if_locked_s=5.0))
    if result["status"] == "failed":
        raise RuntimeError(f"run {rid} failed: {result.get('error')}")
    if result["status"] == "completed":
        tune.report({**stored_last_epoch(rid, out), "run_id": rid})


def stored_last_epoch(rid: str, out: str) -> dict:
    """The last epoch row of a finished run.h5 (also for runs done before a --resume)."""
    epochs = read_run(run_path(out, rid))["history"]["epochs"]
    return {k: float(v[-1]) for k, v in epochs.items()}


def run_ddp_trial(config: dict, base: dict, out: str, workers: int, use_gpu: bool, cpus: float) -> None:
    """Tune function trainable for a DDP trial: a TorchTrainer whose workers call run_one."""
    import ray.train  # optional dependency: only inside a search
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
    import ray.train  # optional dependency: only inside a search
    ctx = ray.train.get_context()
    env = DistEnv(ctx.get_world_rank(), ctx.get_local_rank(), ctx.get_world_size(), source="ray")
    cfg = trial_config(loop_config["base"], loop_config["sample"])
    rid = run_id(cfg)

    last: dict = {}

    def on_epoch(state) -> bool:
        last.update(epoch_metrics(state.epochs[-1]))
        if 0 < state.epoch < cfg.train.epochs:  # every rank reports; Tune takes rank 0's metrics
            ray.train.report({**last, "run_id": rid})
        return False

    result = run_one(cfg, loop_config["out"], env, progress=False, on_epoch=on_epoch, record_stopped=True)
    if result["status"] == "completed":  # after run.h5 is written (rank 0), as in run_trial
        ray.train.report({**(last or stored_last_epoch(rid, loop_config["out"])), "run_id": rid})
    elif result["status"] == "failed":
        raise RuntimeError(f"run {rid} failed: {result.get('error')}")


def build_trainable(base: dict, out: str, s: TuneSettings):
    from ray import tune  # optional dependency: only inside a search
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
    from ray import tune  # optional dependency: only inside a search
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator
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
    return tune.Tuner(
        trainable, param_space=param_space(space),
        # the limit goes to the generator itself: Tune ignores max_concurrent_trials (with a warning)
        # when search_alg is a BasicVariantGenerator rather than a Searcher
        tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, scheduler=asha, num_samples=num_samples,
                                    search_alg=BasicVariantGenerator(random_state=s.seed,
                                                                     max_concurrent=max_concurrent or 0)),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=1, callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=0)))


def init_ray(address: Optional[str], num_cpus: Optional[int]) -> bool:
    """Start (or join) Ray unless this process already has it; True when we must shut it down."""
    import ray  # optional dependency: only inside a search
    # trials keep the launch directory: relative paths in specs (data.root) stay valid
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
    return True
