"""`python -m runner.embed RUN_DIR IMAGES_OR_FOLDER --out emb.h5`: new images in a finished run's embedding space.

The images are decoded as the run's loader decoded its data (square resize to the run's
image size; grey for a grey model, colour for a colour one) and embedded with its
model.pt. emb.h5 holds `embeddings` (N×d float32), `files` and attrs `run_id`,
`image_shape`. To find the nearest people, signs or digits of a run for a photo:
`python -m analysis.retrieve RUN_DIR --image me.jpg`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from runner.cli import command
from runner.inference import embed, image_files, load_run_model, read_images, write_embeddings


@command
def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.embed", description=__doc__.splitlines()[0])
    p.add_argument("run", help="results/runs/<run_id> of a completed run")
    p.add_argument("images", help="an image file or a folder of images")
    p.add_argument("--out", type=Path, default=Path("emb.h5"), help="the HDF5 file to write (default emb.h5)")
    args = p.parse_args(argv)
    rm = load_run_model(args.run)
    files = image_files(args.images)
    emb = embed(rm, read_images(files, rm.image_shape))
    write_embeddings(args.out, rm, files, emb)
    print(f"embedded {len(files)} image(s) with run {rm.run_id} ({'×'.join(map(str, rm.image_shape))}) into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
