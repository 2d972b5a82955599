"""Packing: N small runs at once vs the same runs one after another, aggregate samples/s.

    python benchmarks/packing.py                        # CPU: 2 runs of 1 thread at once vs 2 runs of 2 threads in turn
    python benchmarks/packing.py --parallel 2 --threads 2 --epochs 3 --repeats 3
    python benchmarks/packing.py --device cuda --parallel 4 --threads 4   # GPU: 4 runs share one GPU vs 1 at a time
    python benchmarks/packing.py --quick                # seconds: code path only

Each run is the default digits training loop (runner.training.engine.train_one_epoch, augmentation
on) in its own spawned process, with a different seed. `sequential`: the N runs one after
another, each with --threads torch threads (the whole machine). `packed`: the N runs at
once, each with max(1, threads // N) threads. Throughput is all samples trained over the
wall time from the first start to the last finish (data loading and model building
excluded: each worker waits at a barrier before it trains). Repeats alternate the order;
the printed ratio is the median of packed / sequential over repeats.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(seed: int, epochs: int, threads: int, device: str, width: int, batch_size: int, barrier, queue) -> None:
    """Build one digits run, wait for the others, train `epochs` epochs; put (start, end, samples)."""
    import torch
    torch.set_num_threads(threads)
    from runner import dist
    from runner.launch.run import build_run_parts
    from runner.training import engine
    from runner.data.augment import policy_for
    from runner.spec import resolve
    from runner.data import load_dataset, split_dataset
    cfg = resolve({"seed": seed, "model": {"width": width},
                   "train": {"epochs": epochs, "device": device, "batch_size": batch_size}})
    splits = split_dataset(load_dataset(cfg.data), cfg.data)
    dev = torch.device(device)
    parts = build_run_parts(cfg, splits, policy_for(cfg.data, "digits"), dist.DistEnv(), dev)
    state = engine.TrainState()
    barrier.wait()
    start = time.time()
    for epoch in range(1, epochs + 1):
        engine.train_one_epoch(parts, engine.DeviceData.of(splits, parts.device), epoch, state, cfg.seed, cfg.train.grad_clip)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    queue.put((start, time.time(), len(state.steps["step"]) * batch_size))


def run_group(n_runs: int, at_once: int, threads: int, args) -> float:
    """Samples/s of n_runs runs, at_once of them at a time, over the whole wall time."""
    ctx = mp.get_context("spawn")
    results = []
    for first in range(0, n_runs, at_once):
        seeds = range(first, min(n_runs, first + at_once))
        barrier, queue = ctx.Barrier(len(seeds)), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(s, args.epochs, threads, args.device, args.width,
                                                  args.batch_size, barrier, queue)) for s in seeds]
        for p in procs:
            p.start()
        results += [queue.get() for _ in procs]
        for p in procs:
            p.join()
            if p.exitcode:
                raise RuntimeError(f"a worker failed (exit code {p.exitcode})")
    # the wall time of each group, summed: starting the next group's processes is not counted
    groups = [results[i:i + at_once] for i in range(0, len(results), at_once)]
    wall = sum(max(r[1] for r in g) - min(r[0] for r in g) for g in groups)
    return sum(r[2] for r in results) / wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parallel", type=int, default=2, help="runs at once in the packed setting (N)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of a sequential run; packed runs share them")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (digits: 11 steps each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--width", type=int, default=32, help="small_cnn width (the runner's default is 32)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="1 epoch, 1 repeat, width 8, batch 32: code path only")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.width, args.batch_size = 1, 1, 8, 32
    n, packed_threads = args.parallel, max(1, args.threads // args.parallel)
    print(f"{n} runs on {args.device}: packed = {n} at once x {packed_threads} thread(s), "
          f"sequential = 1 at a time x {args.threads} thread(s); {args.epochs} epoch(s) per run", flush=True)
    rows = []
    for r in range(args.repeats):
        sides = {"sequential": lambda: run_group(n, 1, args.threads, args),
                 "packed": lambda: run_group(n, n, packed_threads, args)}
        row = {}
        for side in (sides if r % 2 == 0 else reversed(list(sides))):
            row[side] = sides[side]()
        rows.append(row)
        print(f"  repeat {r}: sequential {row['sequential']:7.0f} samples/s  packed {row['packed']:7.0f} samples/s",
              flush=True)
    seq = statistics.median(r["sequential"] for r in rows)
    packed = statistics.median(r["packed"] for r in rows)
    ratio = statistics.median(r["packed"] / r["sequential"] for r in rows)
    print(f"aggregate samples/s: sequential {seq:.0f}, packed {packed:.0f}; packed/sequential {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
