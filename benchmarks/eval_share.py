"""Share of a run's wall time spent evaluating, on a generated 70,000-image set: every epoch vs train.eval_every.

    python benchmarks/eval_share.py [--n 70000 --epochs 10 --eval-every 0 --threads 2]

The set is Fashion-MNIST's size and shape (28×28 grey, 10 classes): each class a blurred
random template plus per-image noise, packed once into an HDF5 file (`data: {name: h5}`).
Both runs use the default spec with that data (one with train.eval_every: 1, today's way;
one with the given eval_every, by default the auto setting) and the same seed, one after the other in this process; the
share is sum(eval_s) / wall_time_s from each run.h5. The two runs train the same steps, so
their final metrics and stored epochs must agree: the script checks that too.

    python benchmarks/eval_share.py --project 10     # one 1-epoch run, then the share of a 10-epoch run

--project E times one run of a single epoch (two evaluations: epochs 0 and 1) and projects a
run of E epochs from its measured parts: wall = fixed + E x train_s + evaluations x eval_s, with
the evaluated epochs of each setting (runner.training.engine.evaluated). For busy machines,
where two whole runs on 70,000 images take too long.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner import store  # noqa: E402
from runner.config import run_id  # noqa: E402
from runner.data.image_set import ImageSet  # noqa: E402
from runner.data.packed import write_pack  # noqa: E402
from runner.launch.run import run_one  # noqa: E402
from runner.spec import resolve  # noqa: E402
from runner.training.engine import evaluated  # noqa: E402


def make_set(n: int, n_classes: int = 10, side: int = 28, seed: int = 0) -> ImageSet:
    """Class templates (smoothed noise) plus per-image noise: learnable, not trivially separable."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.nn.functional.avg_pool2d(torch.rand(n_classes, 1, side, side, generator=g), 5, 1, 2)
    labels = torch.arange(n) % n_classes
    x = templates[labels] * 0.6 + torch.rand(n, 1, side, side, generator=g) * 0.4
    images = (x * 255).round().clamp(0, 255).to(torch.uint8)
    return ImageSet(images, labels, [f"c{i}" for i in range(n_classes)], torch.arange(n), meta={"family": "mnist"})


def time_run(pack: Path, out: Path, epochs: int, eval_every: int, threads: int) -> dict:
    cfg = resolve({"data": {"name": "h5", "root": str(pack)},
                   "train": {"epochs": epochs, "eval_every": eval_every, "num_threads": threads}})
    t0 = time.perf_counter()
    result = run_one(cfg, out, progress=False)
    wall = time.perf_counter() - t0
    assert result["status"] == "completed", result
    data = store.read_run(store.run_path(out, run_id(cfg)), epochs=True)
    ep = data["history"]["epochs"]
    return {"wall_s": wall, "eval_s": float(np.sum(ep["eval_s"])), "train_s": float(np.sum(ep["train_s"])),
            "evaluated": [int(e) for e in ep["epoch"]], "stored": sorted(data["epochs"]),
            "metrics": result["metrics"], "final_test": data["final"]["test"]["embeddings"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=70000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=0, help="the setting compared with 1 (every epoch); 0: auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--project", type=int, default=0, metavar="E",
                    help="time one 1-epoch run and project a run of E epochs (see the docstring)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pack = write_pack(make_set(args.n), Path(tmp) / "gen.h5", {"name": "generated"})
        if args.project:
            return project(time_run(pack, Path(tmp) / "out", 1, 1, args.threads), args)
        rows = {}
        for every in (1, args.eval_every):
            rows[every] = time_run(pack, Path(tmp) / f"out{every}", args.epochs, every, args.threads)
    a, b = rows[1], rows[args.eval_every]
    print(f"{args.n} images, {args.epochs} epochs, {args.threads} threads")
    print(f"{'eval_every':>10} {'wall_s':>8} {'train_s':>8} {'eval_s':>8} {'eval share':>10}  evaluated epochs")
    for every, r in rows.items():
        print(f"{every:>10} {r['wall_s']:>8.1f} {r['train_s']:>8.1f} {r['eval_s']:>8.1f} "
              f"{r['eval_s'] / r['wall_s']:>10.1%}  {r['evaluated']}")
    same = a["stored"] == b["stored"] and np.array_equal(a["final_test"], b["final_test"]) \
        and all(a["metrics"][k] == b["metrics"][k] for k in a["metrics"])
    print(f"wall time ratio {a['wall_s'] / b['wall_s']:.2f}x; stored epochs {b['stored']}; "
          f"final embeddings and metrics {'identical' if same else 'DIFFER'}")


def project(one: dict, args) -> None:
    """Print the eval share of an E-epoch run per setting, from one measured 1-epoch run."""
    evals = len(one["evaluated"])
    eval_s, train_s = one["eval_s"] / evals, one["train_s"]
    fixed = one["wall_s"] - one["train_s"] - one["eval_s"]
    every = args.eval_every or 5  # auto: the stored epochs (save_every 5)
    print(f"{args.n} images, measured on one epoch ({args.threads} threads): train {train_s:.1f} s/epoch, "
          f"evaluation {eval_s:.1f} s each, fixed {fixed:.1f} s; projected to {args.project} epochs:")
    shares = {}
    for label, k in (("1", 1), (str(args.eval_every or "0 (auto)"), every)):
        n_eval = sum(evaluated(e, args.project, 5, k) for e in range(args.project + 1))
        wall = fixed + args.project * train_s + n_eval * eval_s
        shares[label] = n_eval * eval_s / wall
        print(f"  eval_every {label:>8}: {n_eval:>2} evaluations, wall {wall:7.1f} s, eval share {shares[label]:6.1%}")


if __name__ == "__main__":
    main()
