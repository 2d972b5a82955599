"""`python -m runner.migrate RESULTS [--dry-run]`: move results of older run_id schemes to their current ids.

Scheme 1 hashed the whole config, so every new config field changed every run_id;
scheme 2 (runner.config.identity) hashes only what differs from the defaults. A
run.h5 without an `id_scheme` attribute was written under scheme 1: its folder
runs/<old id>/ is renamed to runs/<new id>/, and the ids inside run.h5, checkpoint.pt
and model.pt are rewritten (each file atomically). A folder whose new id is already
taken by a completed run is left alone and reported. Running it twice does nothing
the second time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Optional

import h5py
import torch

from runner import store
from runner.cli import command
from runner.config import ID_SCHEME, ConfigError, from_dict, legacy_run_id, run_id


def plan(results: Path) -> list[tuple[Path, str]]:
    """(run folder, new id) for every scheme-1 run.h5 under results/runs whose id changes."""
    moves = []
    for path in sorted((results / "runs").glob("*/run.h5")):
        attrs = store.read_attrs(path)
        if attrs.get("id_scheme", 1) >= ID_SCHEME:
            continue
        config = attrs["config"]
        if path.parent.name != legacy_run_id(config):
            print(f"skipped {path.parent.name}: its name is not the scheme-1 id of its config", file=sys.stderr)
            continue
        moves.append((path.parent, run_id(from_dict(config))))
    return moves


def migrate_run(folder: Path, new_id: str) -> Path:
    """Rewrite the ids inside the run's files, then rename its folder."""
    with store.atomic_path(folder / "run.h5") as tmp:
        shutil.copyfile(folder / "run.h5", tmp)
        with h5py.File(tmp, "a") as f:
            f.attrs["run_id"], f.attrs["id_scheme"] = new_id, ID_SCHEME
    for name in ("checkpoint.pt", "model.pt"):
        if (folder / name).exists():
            payload = torch.load(folder / name, map_location="cpu", weights_only=True)
            payload["run_id"] = new_id
            with store.atomic_path(folder / name) as tmp:
                torch.save(payload, tmp)
    target = folder.parent / new_id
    folder.rename(target)
    return target


@command
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.migrate", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="a results directory (holding runs/)")
    p.add_argument("--dry-run", action="store_true", help="print what would move, change nothing")
    args = p.parse_args(argv)
    if not (args.results / "runs").is_dir():
        raise ConfigError("results", str(args.results), "a results directory holding runs/")
    moved = kept = 0
    for folder, new_id in plan(args.results):
        target = folder.parent / new_id
        if store.run_status(target / "run.h5") == "completed":
            print(f"kept {folder.name}: {new_id} is already a completed run", file=sys.stderr)
            kept += 1
            continue
        print(f"{folder.name} -> {new_id}" + (" (dry run)" if args.dry_run else ""))
        if not args.dry_run:
            if target.exists():  # an unfinished attempt under the new id: the migrated run replaces it
                shutil.rmtree(target)
            with store.run_lock(folder):
                migrate_run(folder, new_id)
        moved += 1
    print(f"{moved} moved, {kept} kept in {args.results}" + (" (dry run: nothing changed)" if args.dry_run else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
