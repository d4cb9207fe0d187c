"""A readable confusion-matrix PNG with Pillow (no matplotlib): class names on both axes, cells
shaded by the row-normalised rate (recall per true class), counts written in the cells, a colour
scale bar, and a title.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable font when Pillow has FreeType
    except TypeError:  # pragma: no cover - very old Pillow
        return ImageFont.load_default()


def _colour(rate: float) -> tuple[int, int, int]:
    """White (0) -> dark blue (1)."""
    lo, hi = np.array([255, 255, 255]), np.array([8, 48, 107])
    return tuple(int(v) for v in lo + (hi - lo) * float(np.clip(rate, 0, 1)))


def confusion_png(cm: np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Draw the (C, C) count matrix `cm` (rows = true, columns = predicted) to `path`."""
    cm = np.asarray(cm)
    C = cm.shape[0]
    cell = 26 if C > 8 else 60
    label_font, cell_font, title_font = _font(13), _font(10 if C > 8 else 16), _font(16)
    labels = [f"{i:2d} {n}" for i, n in enumerate(class_names)]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(measure.textlength(t, font=label_font)) for t in labels) + 12
    top, left = label_w + 40, label_w
    bar_w = 110
    footer = "columns: predicted class    rows: true class (red box: correct)"
    # Wide enough for the title and the footer too (a 2x2 emotion matrix is narrower than its title).
    width = max(left + C * cell + bar_w, int(measure.textlength(title, font=title_font)) + 20,
                left + int(measure.textlength(footer, font=label_font)) + 10)
    height = top + C * cell + 40
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 8), title, fill="black", font=title_font)

    support = cm.sum(1, keepdims=True)
    rates = np.divide(cm, support, out=np.zeros(cm.shape, float), where=support > 0)
    for r in range(C):
        for c in range(C):
            x0, y0 = left + c * cell, top + r * cell
            draw.rectangle([x0, y0, x0 + cell, y0 + cell], fill=_colour(rates[r, c]), outline=(220, 220, 220))
            if cm[r, c]:
                text = str(int(cm[r, c]))
                tw = measure.textlength(text, font=cell_font)
                fg = "white" if rates[r, c] > 0.5 else "black"
                draw.text((x0 + (cell - tw) / 2, y0 + cell / 2 - 6), text, fill=fg, font=cell_font)
        draw.rectangle([left + r * cell, top + r * cell, left + (r + 1) * cell, top + (r + 1) * cell], outline=(200, 0, 0))
        # Row labels (true class) on the left, right-aligned.
        tw = measure.textlength(labels[r], font=label_font)
        draw.text((left - tw - 6, top + r * cell + cell / 2 - 7), labels[r], fill="black", font=label_font)

    # Column labels (predicted class), rotated 90 degrees so long names fit.
    for c in range(C):
        strip = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(strip).text((4, cell / 2 - 7), labels[c], fill="black", font=label_font)
        rotated = strip.rotate(90, expand=True)
        img.paste(rotated, (left + c * cell, top - label_w - 4))
    draw.text((left, top + C * cell + 8), footer, fill="black", font=label_font)
    draw.text((left + C * cell + 10, top - 36), "share of\ntrue class", fill="black", font=label_font)

    # Colour scale: 0% at the bottom, 100% at the top.
    bx, by, bh = left + C * cell + 14, top, C * cell
    for i in range(bh):
        draw.line([bx, by + i, bx + 18, by + i], fill=_colour(1 - i / max(bh - 1, 1)))
    draw.rectangle([bx, by, bx + 18, by + bh], outline="black")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = by + (1 - frac) * bh
        draw.line([bx + 18, y, bx + 23, y], fill="black")
        draw.text((bx + 26, y - 7), f"{frac:.0%}", fill="black", font=label_font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
