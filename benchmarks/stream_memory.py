"""Stream mode's memory and speed: peak RSS of jobs/sop.yaml runs over 30k / 60k / 120k generated images,
and samples/s of memory vs stream-from-HDF5 vs stream-from-JPEG with 0, 2 and 4 workers.

    python benchmarks/stream_memory.py                      # both parts (minutes on 2 cores)
    python benchmarks/stream_memory.py --part rss --sizes 30000 120000
    python benchmarks/stream_memory.py --part speed --size 64
    python benchmarks/stream_memory.py --quick              # seconds: code path only (tests)

rss: a Stanford-Online-Products-layout set of tiny JPEGs per size (benchmarks/image_sets.py: each
product its own look, a pattern and a colour cast, shifted and noised per image), then
`python -m runner.train jobs/sop.yaml` in a subprocess: one epoch of --steps steps
(train.steps_per_epoch), CPU, a small trunk and image size (resnet50 at 224 px is days per epoch
on 2 cores; the input pipeline's memory does not depend on the trunk). Every 0.2 s the RSS of
the run's process tree (trainer + DataLoader workers) is summed, and so is its PSS; the peaks
are reported, with what memory mode would have to hold for the same set decoded at 224 px. The
sum of RSS counts pages the forked workers share with the trainer once per process (an upper
bound); PSS shares them out (the footprint).
speed: benchmarks/gpu_check.py's rows on CPU (a generated folder of 256 px JPEGs, packed to
HDF5), train samples/s of the last epoch and eval images/s, as ratios to memory mode.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import make_sets, measure, row_config  # noqa: E402
from image_sets import write_sop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of pid and all its descendants, summed (from /proc; a process that is gone adds 0).

    RSS counts the pages forked DataLoader workers share with the trainer once per process (an
    upper bound); PSS splits each shared page among the processes sharing it (the real footprint).
    """
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup", encoding="ascii") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return rss, pss


def sop_run(root: Path, out: Path, args) -> tuple[int, int, float, str]:
    """(peak tree RSS, peak tree PSS bytes, wall s, the last lines of output) of one jobs/sop.yaml run."""
    sets = [f"data.root={root}", "model.pretrained=null", f"model.backbone={args.backbone}", "model.width=8",
            f"data.image_size={args.image_size}", "train.epochs=1", f"train.steps_per_epoch={args.steps}",
            f"data.num_workers={args.workers}",
            "train.num_threads=1", "train.device=cpu", "train.amp=false", "model.freeze_bn=false"]
    # Recall@1,2,4,8 only: SOP's Recall@1000 makes every query's search a top-1000 one, which on
    # 2 CPU cores costs more than the rest of the run (and a few hundred images have no 1000 references)
    sets.append(f"eval.recall_at={args.recall_at}")
    cmd = [sys.executable, "-m", "runner.train", str(ROOT / "jobs" / "sop.yaml"), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    t0, peak, peak_pss = time.perf_counter(), 0, 0
    log = out.with_name(out.name + ".log")
    with open(log, "w") as f, subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT) as p:
        while p.poll() is None:
            rss, pss = tree_memory(p.pid)
            peak, peak_pss = max(peak, rss), max(peak_pss, pss)
            time.sleep(0.2)
    lines = log.read_text().splitlines()
    if p.returncode != 0:
        raise SystemExit(f"run failed ({p.returncode}):\n" + "\n".join(lines[-20:]))
    return peak, peak_pss, time.perf_counter() - t0, "\n".join(lines[-3:])


def rss_part(tmp: Path, args) -> list[dict]:
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        root = write_sop(tmp / f"sop-{n}", n, args.side)
        made = time.perf_counter() - t0
        peak, peak_pss, wall, tail = sop_run(root, tmp / f"runs-{n}", args)
        rows.append({"images": n, "peak_gib": peak / 2**30, "pss_gib": peak_pss / 2**30, "wall_s": wall, "write_s": made,
                     "memory_224_gib": n * 3 * 224 * 224 / 2**30})
        print(f"  {n:>7} images: peak of trainer + workers: RSS {peak / 2**30:.2f} GiB, PSS {peak_pss / 2**30:.2f} GiB; "
              f"run {wall:.0f} s "
              f"(set written in {made:.0f} s); memory mode at 224 px would hold {rows[-1]['memory_224_gib']:.1f} GiB",
              flush=True)
        print("    " + tail.replace("\n", "\n    "), flush=True)
    return rows


def speed_part(tmp: Path, args) -> list[dict]:
    folder, h5 = make_sets(tmp, args.classes, args.per_class, 256 if not args.quick else 32)
    rows = []
    worker_counts = (0, 2) if args.quick else (0, 2, 4)
    for source, workers in [("memory", 0)] + [(s, w) for s in ("stream-h5", "stream-jpeg") for w in worker_counts]:
        args.workers = workers
        train, evaluate = measure(row_config(source, folder, h5, args.size, False, args), tmp / f"runs-{len(rows)}")
        rows.append({"source": source, "workers": workers, "train": train, "eval": evaluate})
        print(f"  {args.size} px {source:<12} {workers} workers: train {train:7.1f} samples/s, eval {evaluate:7.1f} img/s",
              flush=True)
    ref = rows[0]
    print("| source | workers | train samples/s | × memory | eval img/s | × memory |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['workers']} | {r['train']:.0f} | {r['train'] / ref['train']:.2f} | "
              f"{r['eval']:.0f} | {r['eval'] / ref['eval']:.2f} |")
    return rows


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["rss", "speed", "both"], default="both")
    p.add_argument("--sizes", type=int, nargs="+", default=[30000, 60000, 120000])
    p.add_argument("--side", type=int, default=32, help="side of the generated JPEGs (rss part)")
    p.add_argument("--image-size", type=int, default=32, help="data.image_size of the rss runs")
    p.add_argument("--size", type=int, default=64, help="data.image_size of the speed rows")
    p.add_argument("--workers", type=int, default=2, help="data.num_workers of the rss runs")
    p.add_argument("--backbone", default="small_cnn")
    p.add_argument("--steps", type=int, default=20, help="train.steps_per_epoch of the rss runs (a full SOP epoch "
                   "is 465 steps: hours on 2 cores; evaluation still embeds and scores every image)")
    p.add_argument("--recall-at", default="[1,2,4,8]", help="eval.recall_at of the rss runs (jobs/sop.yaml: to 1000)")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.size = [400], 16
    args.classes, args.per_class = (4, 8) if args.quick else (32, 20)
    args.batch, args.epochs, args.device = (16, 2, "cpu") if args.quick else (64, 2, "cpu")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("rss", "both"):
            workers = args.workers
            print(f"peak RSS of jobs/sop.yaml (stream, {args.backbone} width 8, {args.image_size} px, 1 epoch, "
                  f"{workers} workers):")
            rss_part(Path(tmp) / "rss", args)
        if args.part in ("speed", "both"):
            print(f"samples/s (small_cnn, batch {args.batch}, CPU, 1 thread):")
            speed_part(Path(tmp) / "speed", args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
