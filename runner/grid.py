"""`python -m runner.grid SPEC`: expand an experiment spec into runs, list them, run them.

A spec's experiment sections (see jobs/exercise.yaml):
  variants: [partial config, ...]     non-cartesian alternatives (e.g. loss + miner pairs)
  grid: {dotted.key: [values, ...]}   cartesian product, crossed with the variants
  include: [partial config, ...]      extra single runs, added after the product
  seeds: [0, 1, 2]                    every run above once per seed
Every expanded run is resolved and validated before anything is submitted.

Launchers (slurm/grid.sh, runner.submit) freeze the expansion into a manifest
(--write-manifest FILE): array task i then runs `--manifest FILE --run-index i`, so
editing the spec after submission cannot shift which run an index means.
"""

from __future__ import annotations

import argparse
import fcntl
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from runner.config import ConfigError, RunConfig, from_dict, merge_layer, resolve, run_id
from runner.spec import load_yaml, parse_set, split_spec


@dataclass
class ExperimentSpec:
    name: str
    base: dict
    variants: list = field(default_factory=lambda: [{}])
    grid: dict = field(default_factory=dict)
    include: list = field(default_factory=list)
    seeds: Optional[list] = None
    search: dict = field(default_factory=dict)
    tune: dict = field(default_factory=dict)


def dotted_to_nested(flat: dict) -> dict:
    """{'loss.margin': 0.5} -> {'loss': {'margin': 0.5}}; nested values pass through."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _list_of_mappings(value, key: str) -> list:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ConfigError(key, value, "a non-empty list of partial configs (mappings)")
    return value


def load_spec(path: str | Path, sets: list[str] = ()) -> ExperimentSpec:
    """Read SPEC; --set overrides apply to the base of every run."""
    data = load_yaml(path)
    base, extra = split_spec(data)
    variants = _list_of_mappings(extra["variants"], "variants") if "variants" in extra else [{}]
    grid = extra.get("grid", {})
    if not isinstance(grid, dict) or ("grid" in extra and not grid):
        raise ConfigError("grid", grid, "a non-empty mapping of dotted.key: [values]")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}", values, "a non-empty list of values")
    seeds = extra.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds
                              or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise ConfigError("seeds", seeds, "a non-empty list of integers")
    include = _list_of_mappings(extra["include"], "include") if "include" in extra else []
    for key in ("search", "tune"):
        if key in extra and not isinstance(extra[key], dict):
            raise ConfigError(key, extra[key], "a mapping")
    if sets:
        base = merge_layer(base, parse_set(list(sets)))
    return ExperimentSpec(str(extra.get("name") or Path(path).stem), base, variants, grid, include, seeds,
                          extra.get("search") or {}, extra.get("tune") or {})


def expand_grid(spec: ExperimentSpec) -> list[RunConfig]:
    """All runs of the spec, resolved, validated and de-duplicated by run_id (order kept)."""
    keys = list(spec.grid)
    layers = []
    for v_i, variant in enumerate(spec.variants):
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            layers.append((f"variants[{v_i}]", variant, dotted_to_nested(dict(zip(keys, combo)))))
    layers += [(f"include[{i}]", {}, dotted_to_nested(inc)) for i, inc in enumerate(spec.include)]
    seeds = spec.seeds if spec.seeds is not None else [None]
    runs, seen = [], set()
    for where, variant, layer in layers:
        for seed in seeds:
            seed_layer = {} if seed is None else {"seed": seed}
            try:
                cfg = resolve(spec.base, dotted_to_nested(variant), layer, seed_layer)
                validate_run(cfg)
            except ConfigError as exc:
                raise ConfigError(exc.key, exc.value, f"{exc.expected} [in {where}: {_short(layer or variant)}]") from None
            rid = run_id(cfg)
            if rid not in seen:
                seen.add(rid)
                runs.append(cfg)
    return runs


def _short(layer: dict) -> str:
    return json.dumps(layer, separators=(",", ":"))[:120]


def validate_run(cfg: RunConfig) -> None:
    """Checks beyond the dataclasses that need no training: loss/miner pairing, data location."""
    from runner import losses
    losses.check_compatible(cfg.loss, cfg.miner)
    try:
        from runner.datasets import check_data
    except ImportError:
        return
    check_data(cfg.data)


def is_locked(directory: Path) -> bool:
    """True while a process holds runs/<run_id>/.lock (runner.train.run_lock): the run is training."""
    try:
        with open(directory / ".lock", "r") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    return False


def run_statuses(runs: list[RunConfig], out: str | Path) -> list[Optional[str]]:
    """completed / failed / stopped / corrupt / running (locked) / None (missing) per run."""
    from runner.store import run_dir, run_status
    out_s = []
    for cfg in runs:
        rdir = run_dir(out, run_id(cfg))
        status = run_status(rdir / "run.h5")
        out_s.append("running" if status != "completed" and is_locked(rdir) else status)
    return out_s


def pending(runs: list[RunConfig], out: str | Path, retry_failed: bool = False) -> list[int]:
    """Indices of runs still to do: missing (or corrupt), and failed ones only when retrying.

    Runs another process is training right now (locked) are not pending: a second
    launcher would only skip them.
    """
    todo = {None, "corrupt", "stopped"} | ({"failed"} if retry_failed else set())
    return [i for i, s in enumerate(run_statuses(runs, out)) if s in todo]


def array_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (sbatch --array syntax)."""
    parts, start = [], None
    for k, i in enumerate(indices):
        if start is None:
            start = i
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(parts)


def write_manifest(path: str | Path, runs: list[RunConfig], out: str | Path, retry_failed: bool,
                   source: str = "") -> Path:
    """Freeze the expanded runs (resolved configs) and the results directory into a JSON file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"source": source, "out": str(Path(out).resolve()), "retry_failed": retry_failed,
            "runs": [{"run_id": run_id(cfg), "config": cfg.to_dict()} for cfg in runs]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
    return path


def read_manifest(path: str | Path) -> tuple[list[RunConfig], dict]:
    """(runs, manifest dict); every run_id is checked against its config."""
    try:
        data = json.loads(Path(path).read_text())
        runs = [from_dict(r["config"]) for r in data["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError("--manifest", str(path), f"a manifest written by --write-manifest ({exc})") from None
    for cfg, r in zip(runs, data["runs"]):
        if run_id(cfg) != r["run_id"]:
            raise ConfigError("--manifest", str(path), f"configs matching their run_ids ({r['run_id']})")
    return runs, data


def describe(cfg: RunConfig, keys: list[str]) -> str:
    flat = _flat(cfg.to_dict())
    return " ".join(f"{k}={flat.get(k)}" for k in keys)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "params":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def varying_keys(runs: list[RunConfig]) -> list[str]:
    """Config keys whose value differs between runs (what a listing should show)."""
    flats = [_flat(r.to_dict()) for r in runs]
    keys = list(flats[0]) if flats else []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.grid", description=__doc__.splitlines()[0])
    p.add_argument("spec", nargs="?", help="jobs/*.yaml (or --manifest FILE)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    p.add_argument("--out", default=None, help="results directory (default: results, or the manifest's)")
    p.add_argument("--manifest", help="read the runs from a manifest instead of a spec")
    p.add_argument("--write-manifest", metavar="FILE", help="freeze the expanded runs into FILE (JSON)")
    p.add_argument("--list", action="store_true", help="list runs with run_id and status (done/failed/missing)")
    p.add_argument("--pending", action="store_true", help="print the indices of runs still to do, comma-separated")
    p.add_argument("--array", action="store_true", help="print the sbatch --array value of the pending runs")
    p.add_argument("--max-parallel", type=int, default=0, help="with --array: the %% throttle (0: none)")
    p.add_argument("--run-index", type=int, action="append", help="run the run(s) at this index (array tasks)")
    p.add_argument("--run", action="store_true", help="run every pending run here, one after another")
    p.add_argument("--retry-failed", action="store_true", help="also rerun runs recorded as failed")
    args = p.parse_args(argv)
    try:
        runs, out, retry = load_runs(args)
        if args.write_manifest:
            write_manifest(args.write_manifest, runs, out, retry, source=args.spec or args.manifest)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        return list_runs(runs, out)
    if args.pending or args.array:
        todo = pending(runs, out, retry)
        throttle = f"%{args.max_parallel}" if args.max_parallel and todo else ""
        print(array_ranges(todo) + throttle if args.array else ",".join(str(i) for i in todo))
        return 0
    indices = args.run_index if args.run_index is not None else (pending(runs, out, retry) if args.run else None)
    if indices is None:
        if not args.write_manifest:
            print(f"{len(runs)} runs; use --list, --pending, --run or --run-index", file=sys.stderr)
        return 0
    if args.run and not indices:
        print(f"nothing to do: all {len(runs)} runs are done in {out}")
        return 0
    return run_indices(runs, indices, out, retry)


def load_runs(args: argparse.Namespace) -> tuple[list[RunConfig], str, bool]:
    """The runs, results directory and retry flag from a spec (+ --set) or a manifest."""
    if args.manifest:
        if args.spec or args.set:
            raise ConfigError("--manifest", args.manifest, "no spec and no --set (its runs are already resolved)")
        runs, data = read_manifest(args.manifest)
        return runs, args.out or data["out"], args.retry_failed or data["retry_failed"]
    if not args.spec:
        raise ConfigError("spec", None, "a jobs/*.yaml file or --manifest FILE")
    return expand_grid(load_spec(args.spec, args.set)), args.out or "results", args.retry_failed


def list_runs(runs: list[RunConfig], out: str) -> int:
    keys = varying_keys(runs)
    names = {None: "missing", "completed": "done", "corrupt": "missing"}
    statuses = run_statuses(runs, out)
    for i, (cfg, status) in enumerate(zip(runs, statuses)):
        print(f"{i:4d}  {run_id(cfg)}  {names.get(status, status):8s}  {describe(cfg, keys)}")
    done, failed = sum(s == "completed" for s in statuses), sum(s == "failed" for s in statuses)
    running = sum(s == "running" for s in statuses)
    print(f"{len(runs)} runs: {done} done, {failed} failed, {running} running, "
          f"{len(runs) - done - failed - running} to do")
    return 0


def run_indices(runs: list[RunConfig], indices: list[int], out: str, retry_failed: bool) -> int:
    """Run the given runs in this process; a failed run is recorded and the others go on."""
    from runner import dist
    from runner.train import RunLocked, format_result, run_one
    env = dist.from_environ()  # an srun step with several tasks: every rank runs the same runs
    bad = [i for i in indices if not 0 <= i < len(runs)]
    if bad:
        print(f"error: --run-index: got {bad[0]}, expected 0..{len(runs) - 1}", file=sys.stderr)
        return 2
    failures = 0
    for i in indices:
        try:
            result = run_one(runs[i], out, env, retry_failed=retry_failed)
        except RunLocked as exc:
            print(f"[{i}] skipped: {exc}", flush=True)
            continue
        except ConfigError as exc:
            print(f"[{i}] error: {exc}")
            failures += 1
            continue
        failures += result["status"] == "failed"
        if env.is_main:
            print(f"[{i}] " + format_result(result), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
