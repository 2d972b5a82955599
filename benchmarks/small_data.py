"""Small-data benchmark: the runner's default recipe vs a bare PML loop vs classical baselines.

For each data set and n_per_class (training images kept per class; the test split is
untouched) and each seed, one row per method: 1-NN, P@1, Recall@1, MAP@R and NMI by the
split's protocol, recomputed from the embeddings by analysis.metrics (scikit-learn and numpy
in float64, independent of runner.training.evaluate):
  --split stratified      test queries against the training references (as the runner scores runs)
  --split class_disjoint  the training part holds some classes, the test part the others
                          (CLASS_DISJOINT: digits and MNIST 0-4 vs 5-9, signs half its classes drawn
                          from the seed); every method is fitted on the training classes only and
                          scored leave-one-out among the test images (each query against all others)
Seed s sets both the training seed and data.split_seed, so the mean ± 95% CI covers the choice
of the n training images too, and every method of a (data set, n, seed) cell sees the very same split.

Methods:
  recipe         the shipped spec of the data set's family (jobs/*.yaml over the defaults),
                 with the step floor below; trained by runner.training.engine, scored once at the end
  bare           benchmarks/bare_loop.py: random batches, Adam at a constant LR, no augmentation
  raw, pca       pixels, PCA to min(64, n_train - 1) dims
  pca+lda        PCA to min(64, n_train - n_classes) dims, then LDA (Fisherfaces)
  pca+nca        the same PCA, then NCA (max_iter 50, fitted on at most 1,000 images)
  --variants     recipe ablations and the loss table (VARIANTS below)

Step floor: with 10 images per class an epoch is one P×K batch, so "30 epochs" would be
30 steps. The recipe trains max(epochs, ceil(--min-steps / steps_per_epoch)) epochs,
capped by --max-steps (the cosine schedule spans the resulting steps).

  python benchmarks/small_data.py                                   # everything (hours on CPU)
  python benchmarks/small_data.py --datasets digits --n-per-class 10 25 --seeds 0 1 2
  python benchmarks/small_data.py --datasets signs --variants no_aug random_batches
  python benchmarks/small_data.py --folder /data/tsinghua_crops --idx /data/mnist --n-per-class 10
  python benchmarks/small_data.py --split class_disjoint --n-per-class all --methods recipe raw pca pca+lda
  python benchmarks/small_data.py --quick                           # a minute: code path only
Rows are appended to OUT/rows.csv as they finish (a rerun skips them); the table is
printed and written to OUT/table.md and OUT/table.csv.
"""
# long: one benchmark script, read top to bottom: the data sets and protocols, every method
# scored the same way, the seed loop and the table; split up it would only be imported back here.

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from runner import dist
from runner.training.parts import make_sampler
from runner.launch.run import build_run_parts
from runner.training import engine  # noqa: E402
from runner.config import RunConfig
from runner.spec import resolve  # noqa: E402
from analysis.metrics import compute_metrics  # noqa: E402
from runner.spec import load_yaml, split_spec  # noqa: E402

# data set -> (spec of its family, data overrides)
DATASETS = {
    "digits": ("jobs/digits.yaml", {}),
    "mnist10k": ("jobs/mnist.yaml", {"root": str(ROOT / "tests/assets/mnist-10k")}),
    "signs": ("jobs/signs.yaml", {}),
}
# recipe ablations and the loss table (item 3 of the issue): overrides laid over the recipe
VARIANTS = {
    "random_batches": {"train": {"sampler": "random"}},
    "no_aug": {"data": {"augment": "none"}},
    "light_aug": {"data": {"augment": "light"}},
    "strong_aug": {"data": {"augment": "strong"}},
    "no_step_floor": {},  # handled in recipe_config: the spec's epochs, no floor
    "unnormalised": {"embedding": {"normalize": False}},
    "contrastive": {"loss": {"name": "ContrastiveLoss", "margin": 0.5}, "miner": {"name": None}},
    "contrastive+miner": {"loss": {"name": "ContrastiveLoss", "margin": 0.5},
                          "miner": {"name": "PairMarginMiner", "params": {"pos_margin": 0.0, "neg_margin": 0.5}}},
    "triplet": {"loss": {"name": "TripletMarginLoss", "margin": 0.2}, "miner": {"name": None}},
    "triplet+semihard": {"loss": {"name": "TripletMarginLoss", "margin": 0.2},
                         "miner": {"name": "TripletMarginMiner", "params": {"type_of_triplets": "semihard"}}},
    "dbl": {"loss": {"name": "DBLLoss", "margin": 1.0}, "miner": {"name": None}},
    "dbl+miner": {"loss": {"name": "DBLLoss", "margin": 1.0},
                  "miner": {"name": "PairMarginMiner", "params": {"pos_margin": 0.0, "neg_margin": 0.5}}},
    # the face recipe's choices (jobs/lfw.yaml), tried on a stand-in with many classes and few images
    "multisimilarity": {"loss": {"name": "MultiSimilarityLoss", "margin": None},
                        "miner": {"name": "MultiSimilarityMiner", "params": {}}},
    "multisimilarity+k2": {"loss": {"name": "MultiSimilarityLoss", "margin": None},
                           "miner": {"name": "MultiSimilarityMiner", "params": {}}, "train": {"samples_per_class": 2}},
}
# data overrides of the class-disjoint protocol: the classes held out for test
CLASS_DISJOINT = {
    "digits": {"split": "class_disjoint", "test_classes": ["5", "6", "7", "8", "9"]},
    "mnist10k": {"split": "class_disjoint", "test_classes": ["5", "6", "7", "8", "9"]},
    "signs": {"split": "class_disjoint", "test_fraction": 0.5},  # 22 of 43 classes, drawn from split_seed
}
SPLITS = ("stratified", "class_disjoint")
BASELINES = ("raw", "pca", "pca+lda", "pca+nca")
PCA_DIM = 64
NCA_MAX_ITER = 50
NCA_MAX_SAMPLES = 1000
FIELDS = ("dataset", "split", "n_per_class", "method", "seed", "knn1", "p_at_1", "recall_at_1", "map_at_r", "nmi",
          "steps", "time_s")
METRICS = ("knn1", "p_at_1", "recall_at_1", "map_at_r", "nmi")


# ---------------------------------------------------------------- configs and splits

def split_data(dataset: str, split: str) -> dict:
    """Data overrides of a split protocol: none for stratified, CLASS_DISJOINT's for class_disjoint."""
    if split == "stratified":
        return {}
    return CLASS_DISJOINT.get(dataset, {"split": "class_disjoint", "test_fraction": 0.5})


def base_layers(dataset: str, extra_data: dict | None = None) -> list[dict]:
    """The spec of the data set's family plus its data overrides, as resolve() layers."""
    if dataset in DATASETS:
        spec, data = DATASETS[dataset]
    else:  # "folder:/path" or "idx:/path" from the command line
        kind, path = dataset.split(":", 1)
        spec, data = ("jobs/tsinghua.yaml", {"name": "folder", "root": path}) if kind == "folder" else \
            ("jobs/mnist.yaml", {"root": path})
    base, _ = split_spec(load_yaml(ROOT / spec))
    return [base, {"data": {**data, **(extra_data or {})}}]


def recipe_config(dataset: str, n: int | None, seed: int, variant: str | None, args) -> RunConfig:
    overrides = VARIANTS.get(variant, {}) if variant else {}
    run = {"data": {**split_data(dataset, args.split), "n_per_class": n, "split_seed": seed}, "seed": seed,
           "train": {"num_threads": args.threads, "device": "cpu", "deterministic": False}}
    return resolve(*base_layers(dataset), run, overrides)


def scaled_epochs(cfg: RunConfig, steps_per_epoch: int, args, floor: bool = True) -> int:
    """The step-based budget: at least min_steps steps, at most max_steps."""
    epochs = cfg.train.epochs
    if floor:
        epochs = max(epochs, math.ceil(args.min_steps / steps_per_epoch))
    if args.max_steps:
        epochs = min(epochs, max(1, args.max_steps // steps_per_epoch))
    return epochs


# ---------------------------------------------------------------- methods

def score(train_emb, y_tr, test_emb, y_te, split: str) -> dict:
    """analysis.metrics of the test embeddings: against the training ones (stratified), or
    leave-one-out among themselves (class_disjoint: the training classes hold no match)."""
    test_emb, y_te = np.asarray(test_emb, dtype=np.float64), np.asarray(y_te)
    if split == "class_disjoint":
        m = compute_metrics(test_emb, y_te, recall_at=(1,))
    else:
        m = compute_metrics(test_emb, y_te, np.asarray(train_emb, dtype=np.float64), np.asarray(y_tr), recall_at=(1,))
    return {k: m[k] for k in METRICS}


def run_recipe(cfg: RunConfig, args, floor: bool = True) -> dict:
    """Train cfg with the runner's engine (no files), score the final embeddings."""
    import dataclasses
    from runner.launch.run import prepare_data
    torch.set_num_threads(cfg.train.num_threads or torch.get_num_threads())
    env = dist.from_environ({})
    splits, policy = prepare_data(cfg.data)
    steps_per_epoch = len(make_sampler(cfg.train, splits.train.labels, cfg.seed, env))
    epochs = scaled_epochs(cfg, steps_per_epoch, args, floor)
    # resolved before anything is built: the schedule spans exactly these epochs
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
    parts = build_run_parts(cfg, splits, policy, env, torch.device("cpu"))
    state, t0 = engine.TrainState(), time.perf_counter()
    for epoch in range(1, epochs + 1):
        engine.train_one_epoch(parts, engine.DeviceData.of(splits, parts.device), epoch, state, cfg.seed, cfg.train.grad_clip)
    train_s = time.perf_counter() - t0
    data = engine.DeviceData.of(splits, parts.device)
    train_emb, test_emb = engine.embed(parts.model, data.images, env), engine.embed(parts.model, data.test_images, env)
    return {**score(train_emb, splits.train.labels, test_emb, splits.test.labels, args.split),
            "steps": len(state.steps["step"]), "time_s": train_s}


def run_bare(cfg: RunConfig, splits, steps: int, split: str) -> dict:
    """The bare loop with the recipe's step budget and batch size (capped at n_train)."""
    from bare_loop import bare_embed, bare_train
    x_tr, x_te = splits.train.images.float() / 255, splits.test.images.float() / 255
    y_tr = splits.train.labels
    batch = min(cfg.train.batch_size, len(y_tr))
    epochs = max(1, math.ceil(steps / (len(y_tr) // batch)))
    model, secs, done = bare_train(x_tr, y_tr, epochs=epochs, dim=cfg.embedding.dim, batch_size=batch, seed=cfg.seed)
    return {**score(bare_embed(model, x_tr), y_tr, bare_embed(model, x_te), splits.test.labels, split),
            "steps": done, "time_s": secs}


def _subsample(labels: np.ndarray, n_max: int) -> np.ndarray:
    if len(labels) <= n_max:
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    per = max(1, n_max // len(np.unique(labels)))
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per] for c in np.unique(labels)]))


def run_baseline(method: str, splits, split: str) -> dict:
    """Fitted on the training split (its classes only, class_disjoint), then scored like the recipe."""
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.neighbors import NeighborhoodComponentsAnalysis
    x_tr = splits.train.images.reshape(len(splits.train), -1).numpy() / 255.0
    x_te = splits.test.images.reshape(len(splits.test), -1).numpy() / 255.0
    y_tr = splits.train.labels.numpy()
    t0, n_classes = time.perf_counter(), len(np.unique(y_tr))
    if method == "pca":
        pca = PCA(min(PCA_DIM, len(x_tr) - 1, x_tr.shape[1]), random_state=0).fit(x_tr)
        x_tr, x_te = pca.transform(x_tr), pca.transform(x_te)
    elif method in ("pca+lda", "pca+nca"):
        # Fisherfaces: at most n_train - n_classes PCA dims keep the within-class scatter invertible
        pca = PCA(max(1, min(PCA_DIM, len(x_tr) - n_classes, x_tr.shape[1])), random_state=0).fit(x_tr)
        x_tr, x_te = pca.transform(x_tr), pca.transform(x_te)
        if method == "pca+lda":
            lda = LinearDiscriminantAnalysis().fit(x_tr, y_tr)
            x_tr, x_te = lda.transform(x_tr), lda.transform(x_te)
        else:
            keep = _subsample(y_tr, NCA_MAX_SAMPLES)
            nca = NeighborhoodComponentsAnalysis(init="pca", max_iter=NCA_MAX_ITER, random_state=0)
            nca.fit(x_tr[keep], y_tr[keep])
            x_tr, x_te = nca.transform(x_tr), nca.transform(x_te)
    return {**score(x_tr, splits.train.labels, x_te, splits.test.labels, split), "steps": 0,
            "time_s": time.perf_counter() - t0}


# ---------------------------------------------------------------- the loop

def cell_rows(dataset: str, n: int | None, seed: int, methods: list[str], done: set, args):
    """Rows of one (data set, n_per_class, seed) cell; methods already in `done` are skipped."""
    from runner.launch.run import prepare_data
    n_key = "all" if n is None else str(n)
    todo = [m for m in methods if (dataset, args.split, n_key, m, str(seed)) not in done]
    if not todo:
        return
    cfg = recipe_config(dataset, n, seed, None, args)
    splits, _ = prepare_data(cfg.data)
    recipe_steps = None
    for method in todo:
        if method in BASELINES:
            result = run_baseline(method, splits, args.split)
        elif method == "bare":
            if recipe_steps is None:
                per_epoch = len(make_sampler(cfg.train, splits.train.labels, seed, dist.from_environ({})))
                recipe_steps = scaled_epochs(cfg, per_epoch, args) * per_epoch
            result = run_bare(cfg, splits, recipe_steps, args.split)
        else:
            variant = None if method == "recipe" else method
            result = run_recipe(recipe_config(dataset, n, seed, variant, args), args, floor=method != "no_step_floor")
        yield {"dataset": dataset, "split": args.split, "n_per_class": n_key, "method": method, "seed": seed,
               **result}


def ci95(values: list[float]) -> float:
    from scipy import stats
    if len(values) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))


def summarise(rows: list[dict]) -> list[dict]:
    """Mean ± 95% CI over seeds per (data set, split, n, method), in a stable order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset"], r.get("split") or "stratified", r["n_per_class"], r["method"]), []).append(r)
    order = ["recipe", "bare", *BASELINES, *VARIANTS]
    n_rank = lambda n: 10**9 if n == "all" else int(n)  # noqa: E731
    out = []
    for (ds, split, n, m), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], n_rank(kv[0][2]), order.index(kv[0][3]) if kv[0][3] in order else 99)):
        row = {"dataset": ds, "split": split, "n_per_class": n, "method": m, "seeds": len(rs)}
        for k in METRICS:  # rows written before a metric was recorded leave it empty: nan
            v = [float(r.get(k) or "nan") for r in rs]
            row.update({k: float(np.mean(v)), f"{k}_ci": ci95(v)})
        out.append({**row, "steps": int(np.mean([float(r["steps"]) for r in rs])),
                    "time_s": np.mean([float(r["time_s"]) for r in rs])})
    return out


def markdown(summary: list[dict]) -> str:
    fmt = lambda m, c: f"{m:.3f}" + ("" if math.isnan(c) else f" ± {c:.3f}")  # noqa: E731
    lines = ["| data set | split | n/class | method | seeds | MAP@R | P@1 | Recall@1 | 1-NN | NMI | steps | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in summary:
        cells = " | ".join(fmt(s[k], s[f"{k}_ci"]) for k in ("map_at_r", "p_at_1", "recall_at_1", "knn1", "nmi"))
        lines.append(f"| {s['dataset']} | {s['split']} | {s['n_per_class']} | {s['method']} | {s['seeds']} | "
                     f"{cells} | {s['steps']} | {s['time_s']:.0f} |")
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def append_row(path: Path, row: dict) -> None:
    """One row per write: an interrupted run keeps every finished row."""
    new = not path.is_file()
    header = FIELDS if new else next(csv.reader(open(path, newline="")))  # an older file keeps its columns
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in FIELDS})


def write_tables(out: Path, rows: list[dict]) -> str:
    summary = summarise(rows)
    table = markdown(summary)
    (out / "table.md").write_text(table + "\n")
    with open(out / "table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(summary[0]) if summary else ["dataset"])
        writer.writeheader()
        writer.writerows(summary)
    return table


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--folder", action="append", default=[], help="a class-folder data set (repeatable)")
    p.add_argument("--idx", action="append", default=[], help="a directory of MNIST-style idx files (repeatable)")
    p.add_argument("--n-per-class", nargs="+", default=["5", "10", "25", "all"])
    p.add_argument("--split", default="stratified", choices=SPLITS,
                   help="protocol: stratified (test vs train) or class_disjoint (unseen classes, leave-one-out)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["recipe", "bare", *BASELINES],
                   choices=["recipe", "bare", *BASELINES, *VARIANTS])
    p.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS), help="extra recipe variants")
    p.add_argument("--min-steps", type=int, default=300, help="step floor of the recipe")
    p.add_argument("--max-steps", type=int, default=0, help="cap on the recipe's steps (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true", help="digits, n=10, seed 0, 20 steps: a smoke run")
    p.add_argument("--out", default="results/small_data")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.n_per_class, args.seeds = ["digits"], ["10"], [0]
        args.min_steps = args.max_steps = 20
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.csv"
    datasets = args.datasets + [f"folder:{p}" for p in args.folder] + [f"idx:{p}" for p in args.idx]
    methods = args.methods + [v for v in args.variants if v not in args.methods]
    # seeds outermost: a run cut short still covers every data set and n with the first seeds
    for seed in args.seeds:
        for dataset in datasets:
            for n_raw in args.n_per_class:
                n = None if n_raw == "all" else int(n_raw)
                # read again per cell: two processes may share OUT and split the cells between them
                done = {(r["dataset"], r.get("split") or "stratified", r["n_per_class"], r["method"], r["seed"])
                        for r in read_rows(rows_path)}
                for row in cell_rows(dataset, n, seed, methods, done, args):
                    append_row(rows_path, row)
                    print(f"{row['dataset']} {args.split} n={row['n_per_class']} seed={seed} {row['method']:>16}: "
                          f"MAP@R {row['map_at_r']:.3f}  P@1 {row['p_at_1']:.3f}  1-NN {row['knn1']:.3f}  "
                          f"({row['time_s']:.0f} s)", flush=True)
    print(write_tables(out, read_rows(rows_path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
