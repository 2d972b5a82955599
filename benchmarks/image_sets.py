"""Generated image sets for the stream benchmarks: JPEG files in the folder or the SOP layout, fast.

A handful of JPEGs is encoded once and their bytes are written over and over (a file per image),
so 120,000 files take seconds; every class still gets distinct images (its own colour cast).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = 16
"""Distinct encoded JPEGs per set: classes cycle through colour casts of these."""


def jpeg_bank(side: int, n: int = VARIANTS, seed: int = 0) -> list[bytes]:
    """n smooth random images side×side as JPEG bytes (a gradient plus blobs: crops differ)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / max(1, side - 1)
    out = []
    for i in range(n):
        img = np.zeros((side, side, 3))
        for c in range(3):
            a, b, f = rng.uniform(0.2, 1.0, 3)
            img[..., c] = 0.5 + 0.25 * np.sin(2 * np.pi * (a * xx + b * yy) * (1 + 3 * f) + i)
        buf = io.BytesIO()
        Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def write_folder(root: Path, n_classes: int, per_class: int, side: int) -> Path:
    """root/c<k>/<i>.jpg: the folder loader's layout."""
    bank = jpeg_bank(side)
    for c in range(n_classes):
        (root / f"c{c:04d}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / f"c{c:04d}" / f"{i:03d}.jpg").write_bytes(bank[(c * 7 + i) % len(bank)])
    return root


def write_sop(root: Path, n_images: int, side: int, per_class: int = 5) -> Path:
    """Stanford_Online_Products/ with Ebay_train.txt / Ebay_test.txt (half the products each)."""
    sop = root / "Stanford_Online_Products"
    bank = jpeg_bank(side)
    n_classes = n_images // per_class
    supers = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug", "sofa", "stapler",
              "table", "toaster")
    for s in supers:
        (sop / f"{s}_final").mkdir(parents=True, exist_ok=True)
    lines = {"train": ["image_id class_id super_class_id path\n"], "test": ["image_id class_id super_class_id path\n"]}
    for c in range(1, n_classes + 1):
        part = "train" if c <= n_classes // 2 else "test"
        s = (c - 1) % len(supers)
        for k in range(per_class):
            path = f"{supers[s]}_final/{c}_{k}.JPG"
            (sop / path).write_bytes(bank[(c * 5 + k) % len(bank)])
            lines[part].append(f"{len(lines[part])} {c} {s + 1} {path}\n")
    for part, rows in lines.items():
        (sop / f"Ebay_{part}.txt").write_text("".join(rows))
    return sop
