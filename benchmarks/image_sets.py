"""Generated image sets for the stream benchmarks: JPEG files in the folder or the SOP layout, fast.

Folder sets: a handful of JPEGs is encoded once and their bytes are written over and over (a
file per image), so thousands of files take seconds. SOP sets: every product has a look of its
own (one of the bank's patterns under the product's colour cast) and each of its images is that
look shifted and noised, encoded on its own, so retrieval has something to find (120,000 tiny
JPEGs in about a minute).
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


def product_jpeg(pattern: np.ndarray, cast: np.ndarray, k: int, rng: np.random.Generator) -> bytes:
    """Image k of a product: its pattern under its colour cast, shifted by k pixels, with pixel noise."""
    img = np.roll(pattern, k, axis=1) * cast + rng.normal(0, 12, pattern.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def write_sop(root: Path, n_images: int, side: int, per_class: int = 5) -> Path:
    """Stanford_Online_Products/ with Ebay_train.txt / Ebay_test.txt (half the products each)."""
    sop = root / "Stanford_Online_Products"
    bank = [np.asarray(Image.open(io.BytesIO(b)), dtype=np.float32) for b in jpeg_bank(side)]
    rng = np.random.default_rng(1)
    n_classes = n_images // per_class
    supers = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug", "sofa", "stapler",
              "table", "toaster")
    for s in supers:
        (sop / f"{s}_final").mkdir(parents=True, exist_ok=True)
    lines = {"train": ["image_id class_id super_class_id path\n"], "test": ["image_id class_id super_class_id path\n"]}
    casts = rng.uniform(0.3, 1.3, (n_classes, 3)).astype(np.float32)
    for c in range(1, n_classes + 1):
        part = "train" if c <= n_classes // 2 else "test"
        s = (c - 1) % len(supers)
        for k in range(per_class):
            path = f"{supers[s]}_final/{c}_{k}.JPG"
            (sop / path).write_bytes(product_jpeg(bank[c % len(bank)], casts[c - 1], k, rng))
            lines[part].append(f"{len(lines[part])} {c} {s + 1} {path}\n")
    for part, rows in lines.items():
        (sop / f"Ebay_{part}.txt").write_text("".join(rows))
    return sop
