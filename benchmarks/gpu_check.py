"""The one command a GPU owner runs: DDP equivalence on nccl, then the train/eval throughput table.

    python benchmarks/gpu_check.py                  # on a CUDA node: both parts, printed
    python benchmarks/gpu_check.py --skip-ddp       # the table only (a node with one GPU skips DDP anyway)
    python benchmarks/gpu_check.py --device cpu --quick   # the table's code path on CPU, tiny (tests)

Without a CUDA device it says so and exits 0 (unless --device cpu asks for the CPU table).

1. DDP equivalence (needs 2 GPUs): digits, GroupNorm small_cnn, no augmentation, no miner, float32;
   two nccl ranks with batch B each against one process with batch 2B, trained with runner.launch.run_one.
   Per-step losses and final weights must agree within tolerance (GPU kernels are not bitwise
   reproducible across batch splits: rtol 1e-3 on the losses, atol 1e-3 on the weights).
2. Throughput: a generated folder of 256 px JPEGs (benchmarks/image_sets.py), packed once to HDF5;
   rows storage (memory, stream from the JPEG files, stream from the HDF5) × train.amp (off, on) ×
   image size (64, 224). Train samples/s from the last epoch's train_s (the first includes worker
   start-up and cuDNN autotuning); eval images/s from the last evaluation's eval_s.
   train.channels_last is set on CUDA where this checkout's TrainConfig has it (train.compile stays off: opt-in).
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
import sys
import tempfile
import time
import typing
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from image_sets import write_folder  # noqa: E402
from runner import dist, store  # noqa: E402
from runner.config import RunConfig, TrainConfig  # noqa: E402
from runner.data.__main__ import pack  # noqa: E402
from runner.launch.run import run_one  # noqa: E402
from runner.spec import resolve  # noqa: E402

DDP_LAYER = {"data": {"augment": "none"}, "model": {"norm": "group", "width": 16}, "embedding": {"dim": 16},
             "miner": {"name": None}, "train": {"epochs": 2, "save_every": 1, "device": "cuda", "deterministic": True}}


def train_fields() -> dict:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def amp_value(on: bool):
    """train.amp as this checkout has it: a bool today, or off|bf16|fp16 where that change is in."""
    tp = typing.get_type_hints(TrainConfig)["amp"]
    return on if tp is bool else ("bf16" if on else "off")


def speed_extras(device: str) -> dict:
    """train.channels_last / train.compile on CUDA, where TrainConfig has them (added separately)."""
    fields = train_fields()
    out = {}
    if device == "cuda" and "channels_last" in fields:
        out["channels_last"] = True
    return out


# ---------------------------------------------------------------- 1. DDP equivalence

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, cfg: RunConfig, out: str, port: int) -> None:
    env = dist.DistEnv(rank, rank, 2, "127.0.0.1", port, "gpu_check")
    result = run_one(cfg, out, env, progress=False)
    if result["status"] != "completed":
        raise SystemExit(f"rank {rank}: {result}")


def ddp_check(tmp: Path, batch: int = 32) -> bool:
    """Two nccl ranks (batch each) vs one process (2 × batch): losses and weights within tolerance."""
    one = resolve(DDP_LAYER, {"train": {"batch_size": 2 * batch}})
    two = resolve(DDP_LAYER, {"train": {"batch_size": batch}})
    single = run_one(one, tmp / "one", progress=False)
    mp.spawn(_rank, args=(two, str(tmp / "two"), _free_port()), nprocs=2, join=True)
    a = store.read_run(Path(single["path"]))
    b = store.read_run(next((tmp / "two").rglob("run.h5")))
    la, lb = a["history"]["steps"]["loss"], b["history"]["steps"]["loss"]
    wa = torch.load(Path(single["path"]).with_name("model.pt"), weights_only=True)["model"]
    wb = torch.load(next((tmp / "two").rglob("model.pt")), weights_only=True)["model"]
    loss_gap = float(np.max(np.abs(la - lb) / np.maximum(np.abs(la), 1e-8))) if len(la) == len(lb) else float("inf")
    weight_gap = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    ok = loss_gap < 1e-3 and weight_gap < 1e-3
    print(f"DDP 2 nccl ranks × {batch} vs 1 × {2 * batch}: {len(la)} steps, max relative loss gap {loss_gap:.2e}, "
          f"max weight gap {weight_gap:.2e} -> {'OK' if ok else 'MISMATCH'}")
    return ok


# ---------------------------------------------------------------- 2. throughput table

def make_sets(tmp: Path, classes: int, per_class: int, side: int) -> tuple[Path, Path]:
    folder = write_folder(tmp / "jpeg", classes, per_class, side)
    _, h5 = pack("folder", str(folder), tmp / "set.h5", image_size=side)
    return folder, h5


def row_config(source: str, folder: Path, h5: Path, size: int, amp: bool, args) -> RunConfig:
    storage = "memory" if source == "memory" else "stream"
    name, root = ("h5", h5) if source == "stream-h5" else ("folder", folder)
    data = {"name": name, "root": str(root), "image_size": size, "storage": storage, "num_workers": args.workers,
            "augment": "strong", "hflip": True}
    train = {"epochs": args.epochs, "batch_size": args.batch, "samples_per_class": 4, "device": args.device,
             "amp": amp_value(amp), "save_every": args.epochs, "deterministic": False, **speed_extras(args.device)}
    return resolve({"data": data, "model": {"backbone": args.backbone}, "embedding": {"dim": 128}, "train": train})


def measure(cfg: RunConfig, out: Path) -> tuple[float, float]:
    """(train samples/s of the last epoch, eval images/s of the last evaluation) of one run."""
    result = run_one(cfg, out, progress=False)
    if result["status"] != "completed":
        raise SystemExit(f"{cfg.data.storage} run failed: {result.get('error')}")
    rec = store.read_run(Path(result["path"]))
    epochs, steps = rec["history"]["epochs"], rec["history"]["steps"]
    last = int(epochs["epoch"][-1])
    n_steps = int(np.sum(steps["epoch"] == last))
    n_eval = sum(len(v["labels"]) for k, v in rec["final"].items() if k in ("train", "test"))
    return n_steps * cfg.train.batch_size / float(epochs["train_s"][-1]), n_eval / float(epochs["eval_s"][-1])


def table(tmp: Path, args) -> list[dict]:
    folder, h5 = make_sets(tmp, args.classes, args.per_class, args.side)
    rows = []
    for size in args.sizes:
        for amp in (False, True):
            for source in ("memory", "stream-jpeg", "stream-h5"):
                t0 = time.perf_counter()
                train_s, eval_s = measure(row_config(source, folder, h5, size, amp, args), tmp / f"runs-{len(rows)}")
                rows.append({"size": size, "amp": amp, "source": source, "train": train_s, "eval": eval_s,
                             "wall": time.perf_counter() - t0})
                print(f"  {size:>4} px  amp {'on ' if amp else 'off'}  {source:<12} train {train_s:8.1f} samples/s  "
                      f"eval {eval_s:8.1f} img/s", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| px | amp | source | train samples/s | × memory | eval img/s | × memory |", "|---|---|---|---|---|---|---|"]
    ref = {(r["size"], r["amp"]): r for r in rows if r["source"] == "memory"}
    for r in rows:
        m = ref[(r["size"], r["amp"])]
        lines.append(f"| {r['size']} | {'on' if r['amp'] else 'off'} | {r['source']} | {r['train']:.1f} | "
                     f"{r['train'] / m['train']:.2f} | {r['eval']:.1f} | {r['eval'] / m['eval']:.2f} |")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="a tiny table (code path only)")
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--backbone", default=None, help="default resnet50 (cuda), small_cnn (--quick)")
    p.add_argument("--workers", type=int, default=None, help="data.num_workers of the stream rows (default 8; 2 quick)")
    args = p.parse_args(argv)
    quick = args.quick
    args.backbone = args.backbone or ("small_cnn" if quick else "resnet50")
    args.workers = (2 if quick else 8) if args.workers is None else args.workers
    args.sizes = (16,) if quick else (64, 224)
    args.classes, args.per_class, args.side = (4, 8, 24) if quick else (64, 40, 256)
    args.batch, args.epochs = (16, 2) if quick else (128, 3)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device present (torch {torch.__version__}); nothing to measure here. "
              "Run it on a GPU node: python benchmarks/gpu_check.py")
        return 0
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.device == "cuda":
            print(f"gpu_check: {torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
            if args.skip_ddp or torch.cuda.device_count() < 2:
                print("DDP equivalence: skipped (needs 2 GPUs)" if not args.skip_ddp else "DDP equivalence: skipped")
            else:
                ok = ddp_check(tmp / "ddp")
        print(f"throughput ({args.backbone}, batch {args.batch}, {args.workers} workers for stream rows):")
        rows = table(tmp / "table", args)
        print(markdown(rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
