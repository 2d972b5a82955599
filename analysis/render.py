"""Slides drawn with matplotlib: report.pdf (16:9 pages) and report.md (Marp) with figures/.

A Slide is a title, a `draw(fig)` function and a one-line answer. write_slides draws each
slide once, into the middle band of a 13.33×7.5 in PDF page (vector), and saves that band
as figures/<name>.png, which the Marp markdown shows under the same title and answer.
No LaTeX, no browser.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

PAGE_IN = (13.333, 7.5)
CONTENT_IN = (13.333, 5.6)
STYLE = {"font.size": 15, "axes.titlesize": 15, "axes.labelsize": 15, "xtick.labelsize": 13,
         "ytick.labelsize": 13, "legend.fontsize": 13, "figure.titlesize": 15, "pdf.fonttype": 42}
MAX_SLIDES = 10
BAND_IN = (PAGE_IN[1] - CONTENT_IN[1]) / 2
"""Height of the title band and of the answer band of a page."""
PNG_DPI = 110


@dataclass
class Slide:
    title: str
    name: str
    """File stem of figures/<name>.png."""
    draw: Optional[Callable] = None
    """draw(fig): fills a Figure/SubFigure; None for a text-only slide."""
    answer: str = ""
    bullets: list = field(default_factory=list)
    """Text lines of a text slide (drawn instead of a figure)."""
    notes: str = ""
    """Extra markdown under the figure in report.md (links to tables, caveats)."""


def _chars_per_line(fontsize: float, width_in: float) -> int:
    """Characters of DejaVu Sans at fontsize that fit in width_in (average glyph ≈ 0.55 em)."""
    return int(width_in * 72 / (0.55 * fontsize))


def draw_bullets(fig, bullets: list[str], fontsize: int = 16) -> None:
    """Bullet lines (a leading two-space indent makes a sub-bullet), wrapped to the slide width."""
    ax = fig.add_axes([0, 0, 1, 1])
    ax.axis("off")
    lines = []
    for line in bullets:
        indent = line.startswith("  ")
        size = fontsize - (2 if indent else 0)
        wrapped = textwrap.wrap(line.strip(), width=_chars_per_line(size, CONTENT_IN[0] * 0.9)) or [""]
        lines += [(("      – " if indent else "• ") if i == 0 else ("         " if indent else "   ")) + part
                  for i, part in enumerate(wrapped)]
        lines.append("")
    step = min(0.075, 0.97 / max(1, len(lines)))
    for i, text in enumerate(lines):
        ax.text(0.03, 0.98 - i * step, text, fontsize=fontsize if not text.startswith("   ") or text.startswith("•")
                else fontsize - 1, va="top", transform=ax.transAxes)


def table_figure(fig, df, fontsize: int = 13, grey_rows=(), bold_rows=(), min_fontsize: int = 9) -> None:
    """A pandas DataFrame of strings as a matplotlib table that fits the figure's width and height.

    Column widths follow the longest cell; the font shrinks (down to min_fontsize) until the
    table fits the width, and rows are as tall as the height allows (at most 2 lines).
    """
    ax = fig.add_axes([0.005, 0.0, 0.99, 1.0])
    ax.axis("off")
    cells = [[str(v) for v in row] for row in df.itertuples(index=False)] or [[""] * len(df.columns)]
    header = [str(c) for c in df.columns]
    chars = [max(len(header[j]), *(len(r[j]) for r in cells)) + 2 for j in range(len(header))]
    width_in = fig.get_figure(root=True).get_size_inches()[0] * _fig_fraction(fig)[0] * 0.99
    height_in = fig.get_figure(root=True).get_size_inches()[1] * _fig_fraction(fig)[1]
    em = 0.56  # average glyph width of DejaVu Sans in em
    while fontsize > min_fontsize and sum(chars) * em * fontsize / 72 > width_in:
        fontsize -= 1
    widths = [c / sum(chars) for c in chars] if sum(chars) * em * fontsize / 72 > width_in else \
        [c * em * fontsize / 72 / width_in for c in chars]
    tab = ax.table(cellText=cells, colLabels=header, loc="upper center", cellLoc="center", colWidths=widths)
    tab.auto_set_font_size(False)
    tab.set_fontsize(fontsize)
    n_rows = len(cells) + 1
    row_in = min(2.3 * fontsize / 72, 0.98 * height_in / n_rows)
    for cell in tab.get_celld().values():
        cell.set_height(row_in / height_in)
    for (r, c), cell in tab.get_celld().items():
        cell.set_edgecolor("0.8")
        if r == 0:
            cell.set_text_props(fontweight="bold")
            cell.set_facecolor("0.9")
        elif r - 1 in grey_rows:
            cell.set_text_props(color="0.35", style="italic")
        elif r - 1 in bold_rows:
            cell.set_text_props(fontweight="bold")
        if c == 0 and r > 0:
            cell.set_text_props(ha="left")
            cell._loc = "left"


def _fig_fraction(fig) -> tuple[float, float]:
    """Width and height of a (sub)figure as fractions of its root figure."""
    if fig is fig.get_figure(root=True):
        return 1.0, 1.0
    bbox = fig.bbox
    root = fig.get_figure(root=True).bbox
    return bbox.width / root.width, bbox.height / root.height


def _content(fig, slide: Slide) -> None:
    if slide.draw is not None:
        slide.draw(fig)
    else:
        draw_bullets(fig, slide.bullets)


def render_page(slide: Slide, number: int, total: int):
    """One 16:9 PDF page: title band, content, answer band."""
    fig = plt.figure(figsize=PAGE_IN)
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[0.95, CONTENT_IN[1], 0.95])
    top.set_facecolor("#1f3b57")
    title_size = min(26, int(PAGE_IN[0] * 0.95 * 72 / (0.6 * max(len(slide.title), 1))))
    top.text(0.02, 0.5, slide.title, color="white", fontsize=title_size, fontweight="bold", va="center")
    _content(middle, slide)
    bottom.set_facecolor("#eef2f6")
    if slide.answer:
        size = 16 if len(slide.answer) <= 2 * _chars_per_line(16 * 1.1, PAGE_IN[0] * 0.9) else 14
        text = "\n".join(textwrap.wrap(slide.answer, _chars_per_line(size * 1.1, PAGE_IN[0] * 0.9))[:3])
        bottom.text(0.02, 0.5, text, fontsize=size, va="center", fontweight="bold", color="#1f3b57")
    bottom.text(0.99, 0.1, f"{number}/{total}", fontsize=11, ha="right", va="bottom", color="0.4")
    return fig


def render_png(slide: Slide, path: Path, dpi: int = PNG_DPI) -> Path:
    fig = plt.figure(figsize=CONTENT_IN)
    _content(fig, slide)
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return path


def write_pdf(slides: list[Slide], path: str | Path) -> Path:
    """report.pdf: one page per slide (at most MAX_SLIDES)."""
    if len(slides) > MAX_SLIDES:
        raise ValueError(f"{len(slides)} slides: the deliverable allows at most {MAX_SLIDES}")
    path = Path(path)
    with plt.rc_context(STYLE), PdfPages(path, metadata={"Title": slides[0].title if slides else "report"}) as pdf:
        for i, slide in enumerate(slides, 1):
            fig = render_page(slide, i, len(slides))
            pdf.savefig(fig)
            plt.close(fig)
    return path


def write_slides(slides: list[Slide], out_dir: str | Path, figures: str = "figures") -> tuple[Path, Path]:
    """report.pdf and report.md with figures/<name>.png, each slide drawn once (its PNG is the page's content band)."""
    if len(slides) > MAX_SLIDES:
        raise ValueError(f"{len(slides)} slides: the deliverable allows at most {MAX_SLIDES}")
    out_dir = Path(out_dir)
    (out_dir / figures).mkdir(parents=True, exist_ok=True)
    band = Bbox.from_bounds(0, BAND_IN, CONTENT_IN[0], CONTENT_IN[1])  # inches, from the page's bottom left
    pdf_path = out_dir / "report.pdf"
    with plt.rc_context(STYLE), PdfPages(pdf_path, metadata={"Title": slides[0].title if slides else "report"}) as pdf:
        for i, slide in enumerate(slides, 1):
            fig = render_page(slide, i, len(slides))
            pdf.savefig(fig)
            if slide.draw is not None:
                fig.savefig(out_dir / figures / f"{slide.name}.png", dpi=PNG_DPI, facecolor="white", bbox_inches=band)
            plt.close(fig)
    return pdf_path, write_marp(slides, out_dir, figures, draw=False)


def write_marp(slides: list[Slide], out_dir: str | Path, figures: str = "figures", draw: bool = True) -> Path:
    """report.md for Marp (marp: true, 16:9), every slide's figure from figures/<name>.png (drawn here unless draw=False)."""
    out_dir = Path(out_dir)
    (out_dir / figures).mkdir(parents=True, exist_ok=True)
    front = ("---\nmarp: true\nsize: 16:9\npaginate: true\nstyle: |\n  section { font-size: 24px; padding: 40px 50px; }\n"
             "  h1 { font-size: 38px; color: #1f3b57; margin-bottom: 8px; }\n  img { display: block; margin: 0 auto; }\n---\n\n")
    parts = []
    with plt.rc_context(STYLE):
        for i, slide in enumerate(slides):
            body = [f"# {slide.title}", ""]
            if slide.draw is not None:
                if draw:
                    render_png(slide, out_dir / figures / f"{slide.name}.png")
                body += [f"![w:1150]({figures}/{slide.name}.png)", ""]
            else:
                body += [("  " if b.startswith("  ") else "") + f"- {b.strip()}" for b in slide.bullets] + [""]
            if slide.answer:
                body += [f"**{slide.answer}**", ""]
            if slide.notes:
                body += [f"<!-- {slide.notes} -->", ""]
            parts.append("\n".join(body))
    path = out_dir / "report.md"
    path.write_text(front + "\n---\n\n".join(parts))
    return path


def count_pdf_pages(path: str | Path) -> int:
    """Pages of a PDF written by matplotlib (its page objects are not compressed)."""
    data = Path(path).read_bytes()
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
