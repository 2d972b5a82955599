"""Synthetic traffic signs: a deterministic stand-in for GTSRB / Tsinghua crops.

43 classes (as many as GTSRB) = shape × colour × glyph, grouped into 8 families
(shape + colour, e.g. "prohibitory" = red ring on white) that form a known
two-level hierarchy: `ImageSet.parents[c]` is the family of class c. Each image
jitters scale, aspect (viewpoint), rotation, position, colours, blur, lighting
and noise over a cluttered background, so raw pixels are a weak baseline while
the classes stay learnable. The generator's seed is fixed (independent of the
training seed): every machine builds the same data set.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from runner.data.image_set import ImageSet

SIGNS_SEED = 43_2011
"""Seed of the generator; never derived from a run's seed."""
IMAGES_PER_CLASS = 40
"""Images per class (43 × 40 = 1,720 images)."""
DEFAULT_SIZE = 64

_RGB = {"red": (200, 25, 35), "blue": (25, 75, 175), "yellow": (245, 195, 20),
        "white": (238, 238, 238), "black": (20, 20, 22)}

# family -> (shape, fill, border, glyph colour, glyphs); 8+4+6+7+3+4+5+6 = 43 classes
FAMILIES = {
    "prohibitory": ("circle", "white", "red", "black", ["1", "2", "3", "4", "5", "6", "7", "8"]),
    "restriction": ("circle", "red", "white", "white", ["bar_h", "bar_v", "cross", "dot"]),
    "mandatory": ("circle", "blue", "white", "white",
                  ["arrow_up", "arrow_left", "arrow_right", "arrow_down", "plus", "ring"]),
    "warning": ("triangle", "white", "red", "black",
                ["exclaim", "0", "9", "chevron", "cross", "arrow_up", "zigzag"]),
    "yield": ("triangle_down", "white", "red", "black", ["empty", "bar_h", "dot"]),
    "priority": ("diamond", "yellow", "white", "black", ["empty", "bar_h", "cross", "dot"]),
    "stop": ("octagon", "red", "white", "white", ["bar_h", "0", "5", "8", "plus"]),
    "information": ("square", "blue", "white", "white",
                    ["arrow_up", "arrow_left", "arrow_right", "P", "ring", "bar_v"]),
}


def class_table() -> tuple[list[str], list[str]]:
    """(class names, parent family of each class), in label order."""
    names, parents = [], []
    for family, (_, _, _, _, glyphs) in FAMILIES.items():
        for glyph in glyphs:
            names.append(f"{family}/{glyph}")
            parents.append(family)
    return names, parents


# ---------------------------------------------------------------- geometry (unit sign radius 1, y down)

def _ngon(n: int, radius: float = 1.0, phase_deg: float = -90.0) -> np.ndarray:
    a = np.deg2rad(phase_deg) + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(a), np.sin(a)], 1)


_SHAPES = {
    "circle": _ngon(40), "octagon": _ngon(8, 1.0, 22.5), "diamond": _ngon(4, 1.0),
    "triangle": _ngon(3, 1.1) + [0, 0.12], "triangle_down": _ngon(3, 1.1, 90) - [0, 0.12],
    "square": np.array([[-0.88, -0.88], [0.88, -0.88], [0.88, 0.88], [-0.88, 0.88]]),
}
_GLYPH_CENTRE = {"triangle": (0.0, 0.22), "triangle_down": (0.0, -0.3)}
_GLYPH_SCALE = {"triangle": 0.6, "triangle_down": 0.5, "diamond": 0.7}

_SEG = {"a": [(-0.3, -0.5), (0.3, -0.5)], "b": [(0.3, -0.5), (0.3, 0.0)], "c": [(0.3, 0.0), (0.3, 0.5)],
        "d": [(-0.3, 0.5), (0.3, 0.5)], "e": [(-0.3, 0.0), (-0.3, 0.5)], "f": [(-0.3, -0.5), (-0.3, 0.0)],
        "g": [(-0.3, 0.0), (0.3, 0.0)]}
_DIGITS = {"0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc", "5": "afgcd", "6": "afgedc",
           "7": "abc", "8": "abcdefg", "9": "abcdfg", "P": "abgfe"}


def _arrow(angle_deg: float) -> list:
    shaft = [("line", [(0, 0.55), (0, -0.05)], 0.2),
             ("poly", [(-0.38, 0.0), (0.38, 0.0), (0, -0.55)])]
    rot = np.deg2rad(angle_deg)
    r = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
    return [(kind, [tuple(r @ p) for p in pts], *rest) for kind, pts, *rest in shaft]


def _rect(w: float, h: float) -> tuple:
    return ("poly", [(-w, -h), (w, -h), (w, h), (-w, h)])


def _glyph(name: str) -> list:
    """Strokes of a glyph: ("line", points, width), ("poly", points) or ("hole", points) in the fill colour."""
    if name in _DIGITS:  # seven-segment strokes
        return [("line", _SEG[s], 0.15) for s in _DIGITS[name]]
    table = {
        "empty": [], "bar_h": [_rect(0.6, 0.15)], "bar_v": [_rect(0.15, 0.55)],
        "cross": [("line", [(-0.45, -0.45), (0.45, 0.45)], 0.18), ("line", [(-0.45, 0.45), (0.45, -0.45)], 0.18)],
        "plus": [("line", [(-0.5, 0), (0.5, 0)], 0.2), ("line", [(0, -0.5), (0, 0.5)], 0.2)],
        "dot": [("poly", [tuple(p) for p in _ngon(16, 0.25)])],
        "ring": [("poly", [tuple(p) for p in _ngon(20, 0.45)]), ("hole", [tuple(p) for p in _ngon(20, 0.28)])],
        "exclaim": [("poly", [(-0.1, -0.55), (0.1, -0.55), (0.06, 0.2), (-0.06, 0.2)]),
                    ("poly", [tuple(p + [0, 0.42]) for p in _ngon(12, 0.11)])],
        "chevron": [("line", [(-0.4, 0.25), (0, -0.2), (0.4, 0.25)], 0.17)],
        "zigzag": [("line", [(-0.45, 0.4), (-0.15, -0.35), (0.15, 0.35), (0.45, -0.4)], 0.14)],
        "arrow_up": _arrow(0), "arrow_right": _arrow(90), "arrow_down": _arrow(180), "arrow_left": _arrow(270),
    }
    return table[name]


_GLYPHS = {g: _glyph(g) for _, _, _, _, glyphs in FAMILIES.values() for g in glyphs}


# ---------------------------------------------------------------- drawing

def _jitter_colour(name: str, u: np.ndarray) -> tuple:
    """Base colour × a brightness in [0.8, 1.12] + a per-channel shift of ±25 (u: 4 uniforms)."""
    rgb = np.array(_RGB[name]) * (0.8 + 0.32 * u[0]) + (u[1:4] - 0.5) * 50
    return tuple(np.clip(rgb, 0, 255).astype(int).tolist())


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A tinted vertical gradient plus random boxes, blobs and branches in muted colours."""
    ends = rng.uniform(30, 220, (2, 1, 3)).astype(np.uint8)  # top and bottom colour
    column = Image.fromarray(ends).resize((1, size), Image.Resampling.BILINEAR)
    canvas = column.resize((size, size), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    shapes = rng.random((int(rng.integers(3, 9)), 8))
    boxes = np.concatenate([shapes[:, :2] * 1.2 - 0.2, 0.1 + shapes[:, 2:4] * 0.5], 1) * size
    boxes[:, 2:] += boxes[:, :2]
    colours = (40 + 180 * shapes[:, 4:7]).astype(int).tolist()
    for box, colour, kind in zip(boxes.tolist(), colours, shapes[:, 7]):
        if kind < 0.35:
            draw.rectangle(box, fill=tuple(colour))
        elif kind < 0.7:
            draw.ellipse(box, fill=tuple(colour))
        else:
            draw.line(box, fill=tuple(colour), width=2 + int(6 * kind))
    return canvas


def _draw_sign(draw: ImageDraw.ImageDraw, u: np.ndarray, size: int, family: str, glyph: str) -> None:
    """Draw one sign under a random similarity + viewpoint squash (u: 20 uniforms)."""
    shape, fill, border, ink, _ = FAMILIES[family]
    fill_rgb, border_rgb, ink_rgb = (_jitter_colour(c, u[k:k + 4]) for c, k in ((fill, 0), (border, 4), (ink, 8)))
    radius = size / 2 * (0.66 + 0.26 * u[12])
    theta = np.deg2rad(-12 + 24 * u[13])
    squash = np.diag([0.75 + 0.25 * u[14], 1.0] if u[15] < 0.5 else [1.0, 0.8 + 0.2 * u[14]])
    a = radius * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]]) @ squash
    centre = size / 2 + (u[16:18] - 0.5) * 0.14 * size
    to_px = lambda pts: (np.asarray(pts) @ a.T + centre).ravel().tolist()  # noqa: E731
    outline = _SHAPES[shape]
    centroid = outline.mean(0)
    border_w = 0.14 + 0.08 * u[18] if border != fill else 0.0
    draw.polygon(to_px(outline), fill=border_rgb)
    draw.polygon(to_px(centroid + (outline - centroid) * (1 - border_w)), fill=fill_rgb)
    g_centre = np.array(_GLYPH_CENTRE.get(shape, (0.0, 0.0)))
    g_scale = _GLYPH_SCALE.get(shape, 0.8) * (0.9 + 0.2 * u[19])
    for kind, pts, *rest in _GLYPHS[glyph]:
        px = to_px(g_centre + np.asarray(pts) * g_scale)
        if kind == "line":
            draw.line(px, fill=ink_rgb, width=max(1, round(rest[0] * g_scale * radius)), joint="curve")
        else:
            draw.polygon(px, fill=fill_rgb if kind == "hole" else ink_rgb)


def _render(family: str, glyph: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One H×W×3 uint8 image before lighting and noise, drawn at 2× and box-downsampled."""
    canvas = _background(rng, 2 * size)
    draw = ImageDraw.Draw(canvas)
    u = rng.random(28)
    _draw_sign(draw, u[:20], 2 * size, family, glyph)
    if u[20] < 0.3:  # an occluding branch or pole in front of the sign
        line = (u[21:25] * 2 * size).tolist()
        draw.line(line, fill=(int(30 + 80 * u[25]),) * 3, width=3 + int(6 * u[26]))
    img = canvas.reduce(2)
    if u[27] > 0.3:  # defocus; a box blur is a third of the cost of PIL's Gaussian (three boxes)
        img = img.filter(ImageFilter.BoxBlur(float(u[27])))
    return np.asarray(img)


def _relight(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-image gain, contrast and Gaussian noise on a uint8 N×H×W×3 batch."""
    n = len(images)
    gain, contrast, sigma = (rng.uniform(lo, hi, (n, 1, 1, 1)).astype(np.float32)
                             for lo, hi in ((0.5, 1.25), (0.65, 1.15), (2.0, 12.0)))
    x = images.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    noise = rng.standard_normal(x.shape, dtype=np.float32)
    x *= contrast  # (x - mean)·contrast + mean·gain + sigma·noise, in place
    x += mean * (gain - contrast)
    noise *= sigma
    x += noise
    np.clip(x, 0, 255, out=x)
    return np.rint(x, out=x).astype(np.uint8)


def generate_signs(image_size: Optional[int] = None, per_class: int = IMAGES_PER_CLASS,
                   seed: int = SIGNS_SEED) -> ImageSet:
    """The synthetic traffic-sign set; images are class-major (index = class·per_class + i)."""
    size = image_size or DEFAULT_SIZE
    names, parents = class_table()
    images = np.empty((len(names) * per_class, size, size, 3), dtype=np.uint8)
    for c, name in enumerate(names):
        family, glyph = name.split("/")
        # one stream per image (and one per class for lighting): a class never depends on the others
        batch = np.stack([_render(family, glyph, size, np.random.default_rng([seed, c, i]))
                          for i in range(per_class)])
        images[c * per_class:(c + 1) * per_class] = _relight(batch, np.random.default_rng([seed, c]))
    labels = torch.arange(len(names)).repeat_interleave(per_class)
    return ImageSet(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, names,
                    torch.arange(len(labels)), parents=parents,
                    meta={"family": "signs", "root": None, "seed": seed, "per_class": per_class})
