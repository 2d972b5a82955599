"""Training throughput: the runner's loop vs the bare PML loop, measured in the same run.

    python benchmarks/train_speed.py                       # digits, 3 repeats, 1 thread
    python benchmarks/train_speed.py --repeats 5 --epochs 4 --threads 2
    python benchmarks/train_speed.py --quick               # seconds: code path only
    python benchmarks/train_speed.py --profile             # where the time of a default run goes

Both sides train the same network (the runner's default EmbeddingNet: small_cnn width 32,
embedding 32, built with the same seed), on the digits training split held as in-memory
tensors, batch 128, with the same loss and miner:

  triplet      TripletMarginLoss(margin=0.2) + TripletMarginMiner(margin=0.2, semihard)
  contrastive  ContrastiveLoss() + PairMarginMiner()   (PML defaults on both sides)

The runner side is runner.training.engine.train_one_epoch (P×K batches, per-step diagnostics as
0-dim tensors, one host sync per epoch, AdamW + warm-up/cosine schedule) followed, each
epoch, by what runner.train does at an epoch end apart from evaluation: TensorBoard step
logging and a checkpoint.pt write. The bare side is benchmarks/bare_loop.py:bare_train
(random batches, Adam, nothing else). Evaluation is left out of both (the bare loop has
none; see benchmarks/eval_speed.py). Augmentation is off for the comparison; the
`runner+aug` row is the runner with the digits default (light) augmentation, for scale.

Each repeat times every side once, in alternating order; the printed ratio is the median
over repeats of (runner samples/s) / (bare samples/s) from the same repeat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bare_loop import bare_train  # noqa: E402
from runner import dist
from runner.launch.run import build_run_parts
from runner.training import engine  # noqa: E402
from runner.data.augment import policy_for  # noqa: E402
from runner.config import RunConfig
from runner.spec import resolve  # noqa: E402
from runner.data import load_dataset, split_dataset  # noqa: E402
from runner.training.models import build_model, channel_stats  # noqa: E402

LOSSES = {
    "triplet": {"loss": {"name": "TripletMarginLoss", "margin": 0.2},
                "miner": {"name": "TripletMarginMiner", "margin": 0.2, "params": {"type_of_triplets": "semihard"}}},
    "contrastive": {"loss": {"name": "ContrastiveLoss", "margin": None}, "miner": {"name": "PairMarginMiner"}},
}


def make_config(loss: str, epochs: int, augment: str, batch_size: int, width: int,
                channels_last: bool | None = None) -> RunConfig:
    return resolve({**LOSSES[loss], "data": {"augment": augment}, "model": {"width": width},
                    "train": {"epochs": epochs, "batch_size": batch_size, "device": "cpu",
                              "channels_last": channels_last}})


def time_runner(cfg: RunConfig, splits, out: Path) -> tuple[float, int]:
    """Seconds and steps of cfg.train.epochs epochs of engine.train_one_epoch + step logging + checkpoint."""
    from runner.training.checkpoint import save_checkpoint
    from runner.launch.tb_logger import TBLogger
    env = dist.DistEnv()
    policy = policy_for(cfg.data, splits.train.meta.get("family", "folder"))
    parts = build_run_parts(cfg, splits, policy, env, torch.device("cpu"))
    state, logger, logged = engine.TrainState(), TBLogger(out / "tb"), 0
    t0 = time.perf_counter()
    for epoch in range(1, cfg.train.epochs + 1):
        engine.train_one_epoch(parts, engine.DeviceData.of(splits, parts.device), epoch, state, cfg.seed, cfg.train.grad_clip)
        state.epoch = epoch
        logger.log_steps(state.steps, logged)
        logged = len(state.steps["step"])
        save_checkpoint(out / "checkpoint.pt", state, parts, "bench")
    secs = time.perf_counter() - t0
    logger.close()
    return secs, len(state.steps["step"])


def time_bare(cfg: RunConfig, splits, loss: str) -> tuple[float, int]:
    """Seconds and steps of bare_train on the same network (same init) and the same number of epochs."""
    torch.manual_seed(cfg.seed)  # as engine.build_parts: identical initial weights
    mean, std = channel_stats(splits.train.images)
    model = build_model(cfg.model, cfg.embedding, splits.train.images.shape[1], splits.train.images.shape[-1],
                        mean, std)
    x = splits.train.images.float().div(255.0)  # in-memory float tensors, as the bare loop takes them
    _, secs, steps = bare_train(x, splits.train.labels, epochs=cfg.train.epochs, batch_size=cfg.train.batch_size,
                                loss=loss, seed=cfg.seed, model=model)
    return secs, steps


def measure(args) -> dict[str, list[dict]]:
    """{loss: [{side: samples_per_s}, ...] per repeat}."""
    data = make_config("triplet", 1, "none", args.batch_size, args.width).data
    splits = split_dataset(load_dataset(data), data)  # the digits default split; augment is applied per batch
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for loss in args.losses:
            plain = make_config(loss, args.epochs, "none", args.batch_size, args.width)
            aug = make_config(loss, args.epochs, "light", args.batch_size, args.width)
            sides = {"runner": lambda: time_runner(plain, splits, Path(tmp)),
                     "bare": lambda: time_bare(plain, splits, loss),
                     "runner+aug": lambda: time_runner(aug, splits, Path(tmp))}
            if args.contiguous:  # the runner with train.channels_last: false (the layout of the bare loop)
                contiguous = make_config(loss, args.epochs, "none", args.batch_size, args.width, channels_last=False)
                sides["runner-cl"] = lambda: time_runner(contiguous, splits, Path(tmp))
            warm = make_config(loss, 1, "light", args.batch_size, args.width)
            time_runner(warm, splits, Path(tmp)), time_bare(warm, splits, loss)  # warm-up: allocator, kernels
            rows = []
            for r in range(args.repeats):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                row = {}
                for side in order:
                    secs, steps = sides[side]()
                    row[side] = steps * args.batch_size / secs
                rows.append(row)
                print(f"  {loss} repeat {r}: " + "  ".join(f"{k} {v:7.0f}/s" for k, v in row.items()), flush=True)
            results[loss] = rows
    return results


def summarise(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Median samples/s per side and median same-repeat ratios against the bare loop."""
    out = {}
    for loss, rows in results.items():
        out[loss] = {
            "bare_per_s": statistics.median(r["bare"] for r in rows),
            "runner_per_s": statistics.median(r["runner"] for r in rows),
            "ratio": statistics.median(r["runner"] / r["bare"] for r in rows),
            "ratio_aug": statistics.median(r["runner+aug"] / r["bare"] for r in rows),
        }
        if "runner-cl" in rows[0]:
            out[loss]["ratio_cl"] = statistics.median(r["runner-cl"] / r["bare"] for r in rows)
    return out


def profile_parts() -> list[tuple[str, object]]:
    """(label, function): the calls whose cumulative time the profile breaks down."""
    import inspect
    from pytorch_metric_learning.miners import BaseMiner
    from runner import losses
    from runner.data import augment
    from runner.launch import run, tb_logger as tb
    from runner.training import checkpoint, evaluate, models
    return [
        ("train epochs (train_one_epoch)", engine.train_one_epoch),
        ("  augmentation", augment.augment_batch),
        ("  backward", torch.Tensor.backward),
        ("  optimizer step (AdamW)", inspect.unwrap(torch.optim.AdamW.step)),
        ("  miner", BaseMiner.forward),
        ("  loss + active fraction", losses.loss_with_stats),
        ("  diagnostics (batch distances)", engine.batch_distances),
        ("forward, train and eval (EmbeddingNet)", models.EmbeddingNet.forward),
        ("evaluation (evaluate_epoch)", engine.evaluate_epoch),
        ("  embed (inference mode)", inspect.unwrap(engine.embed)),
        ("  compute_metrics", evaluate.compute_metrics),
        ("step logging (TensorBoard)", tb.TBLogger.log_steps),
        ("checkpoint.pt writes", checkpoint.save_checkpoint),
        ("finish: run.h5, model.pt, projector", run.finish),
        ("data: load + split", run.prepare_data),
    ]


def profile_run(epochs: int) -> int:
    """cProfile of run_one on the default digits run (epochs as given); prints a breakdown."""
    import cProfile
    import pstats
    from runner.launch.run import run_one
    cfg = resolve({"train": {"epochs": epochs, "device": "cpu"}})
    with tempfile.TemporaryDirectory() as tmp:
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        result = run_one(cfg, tmp, progress=False)
        prof.disable()
        wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats
    print(f"default digits run, {epochs} epochs, {torch.get_num_threads()} thread(s): {result['status']}, "
          f"wall {wall:.2f} s (under cProfile)")
    for label, func in profile_parts():
        code = func.__code__
        cum = sum(v[3] for (fn, line, name), v in stats.items()
                  if (fn, line, name) == (code.co_filename, code.co_firstlineno, code.co_name))
        print(f"  {label:<38}{cum:8.2f} s {100 * cum / wall:6.1f} %")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    p.add_argument("--epochs", type=int, default=3, help="epochs per timed run (digits: 11 steps each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=32, help="small_cnn width (the runner's default is 32)")
    p.add_argument("--contiguous", action="store_true",
                   help="also time the runner with train.channels_last: false (row runner-cl)")
    p.add_argument("--profile", action="store_true",
                   help="instead: cProfile of runner.launch.run.run_one on the default digits run (--epochs epochs)")
    p.add_argument("--quick", action="store_true", help="1 epoch, 1 repeat, width 8, batch 32: code path only")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.width, args.batch_size = 1, 1, 8, 32
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)  # as runner.train does, for both sides
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch_size}, "
          f"{args.epochs} epoch(s) per run, {args.repeats} repeat(s)", flush=True)
    if args.profile:
        return profile_run(args.epochs)
    summary = summarise(measure(args))
    print(f"{'loss':<12}{'bare /s':>10}{'runner /s':>11}{'runner/bare':>13}{'runner+aug/bare':>17}"
          + (f"{'runner-cl/bare':>16}" if args.contiguous else ""))
    for loss, s in summary.items():
        print(f"{loss:<12}{s['bare_per_s']:>10.0f}{s['runner_per_s']:>11.0f}{s['ratio']:>12.2f}x{s['ratio_aug']:>16.2f}x"
              + (f"{s['ratio_cl']:>15.2f}x" if "ratio_cl" in s else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
