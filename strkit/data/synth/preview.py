"""Contact sheets: a grid of samples with their labels, and one line per font for a human review."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from strkit.data.synth.fonts import FontFace, matplotlib_font_dir


def _label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    d = matplotlib_font_dir()
    if d is not None and (d / "DejaVuSans.ttf").is_file():
        return ImageFont.truetype(str(d / "DejaVuSans.ttf"), size)
    return ImageFont.load_default()


def contact_sheet(samples: Sequence[tuple[np.ndarray, str]], cols: int = 8, scale: float = 1.0,
                  geometry: Sequence[dict | None] | None = None) -> Image.Image:
    """A grid of images (uint8 H×W or H×W×3 RGB) with their labels underneath.

    Args:
        samples: (image, label) pairs; images may differ in width.
        cols: images per row.
        scale: zoom of every image (nearest neighbour).
        geometry: optional boundary polylines per sample (drawn red = top, blue = bottom).

    Returns:
        an RGB PIL image.
    """
    if not samples:
        raise ValueError("contact_sheet needs at least one sample")
    font = _label_font(11)
    tiles = []
    for k, (img, label) in enumerate(samples):
        im = Image.fromarray(img).convert("RGB")
        if scale != 1.0:
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.NEAREST)
        g = geometry[k] if geometry is not None else None
        if g:
            d = ImageDraw.Draw(im)
            sx, sy = im.width / g["width"], im.height / g["height"]
            for key, col in (("top", (255, 40, 40)), ("bottom", (40, 120, 255))):
                d.line([(x * sx, y * sy) for x, y in g[key]], fill=col, width=1)
        tiles.append((im, label))
    tw = max(t.width for t, _ in tiles)
    th = max(t.height for t, _ in tiles)
    lh, gap = 14, 4
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (tw + gap) + gap, rows * (th + lh + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, (im, label) in enumerate(tiles):
        x = gap + (k % cols) * (tw + gap)
        y = gap + (k // cols) * (th + lh + gap)
        sheet.paste(im, (x, y))
        draw.text((x + 1, y + th + 1), label, fill=(0, 0, 0), font=font)
    return sheet


def save_sheet(sheet: Image.Image, path: str | Path, colors: int = 0) -> Path:
    """Save a sheet as PNG; ``colors > 0`` quantises to that many colours (much smaller files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if colors:
        sheet = sheet.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    sheet.save(path, optimize=True)
    return path


def font_sheets(faces: Sequence[FontFace], path: str | Path, text: str = "Hamburgefonstiv 0123456789 ?!&",
                per_page: int = 60, size: int = 28) -> list[Path]:
    """Render ``text`` in every face, one line each with its name, into PNG pages (for a review).

    Pages are ``<stem>-001.png``, ``<stem>-002.png`` ... beside ``path``.
    """
    path = Path(path)
    name_font = _label_font(12)
    pages = []
    for p in range(0, len(faces), per_page):
        chunk = faces[p:p + per_page]
        line_h = int(size * 1.6)
        sheet = Image.new("L", (1400, line_h * len(chunk) + 8), 255)
        d = ImageDraw.Draw(sheet)
        for k, face in enumerate(chunk):
            y = 4 + k * line_h
            d.text((4, y + 4), f"{p + k + 1}. {face.family} {face.style}"[:52], fill=0, font=name_font)
            d.text((4, y + 18), Path(face.path).name[:52], fill=110, font=name_font)
            try:
                f = ImageFont.truetype(face.path, size, index=face.index)
                shown = "".join(c for c in text if c in face.covered or c == " ")
                d.text((400, y + 2), shown, fill=0, font=f)
            except OSError as exc:
                d.text((400, y + 2), f"(cannot render: {exc})", fill=0, font=name_font)
        out = path.with_name(f"{path.stem}-{p // per_page + 1:03d}.png")
        out.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(out, optimize=True)
        pages.append(out)
    return pages
