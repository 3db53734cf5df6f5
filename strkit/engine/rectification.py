"""What the rectifiers do to real crops: before/after images, a "how much it moved" score, a figure.

Used by ``tools/rectify.py`` (the picture of ten curved benchmark crops before and after each rectifier
in ``docs/``). Every function works with any rectifier (``none``, ``tps``, ``scrn``): the rectifier of a
:class:`~strkit.models.recognizer.RecognitionModel` maps its normalised input B×C×H×W to B×C×H×W. For
``scrn`` the predicted text boundaries (its spline control points) are drawn on the input as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from strkit.atomic import atomic_path
from strkit.data.transforms import ImageTransform
from strkit.models.recognizer import RecognitionModel


def to_uint8(images: Tensor) -> np.ndarray:
    """Normalised images B×C×H×W in [-1, 1] -> uint8 B×H×W×C."""
    arr = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return arr.permute(0, 2, 3, 1).cpu().numpy()


@torch.inference_mode()
def rectify(model: RecognitionModel, images: Tensor) -> tuple[Tensor, Tensor | None]:
    """Run only the rectifier. Returns (rectified B×C×H×W, control points B×N×2 in [-1, 1] or None).

    The points are the ``scrn`` rectifier's upper, lower and centre-line control points (K each, in that
    order); other rectifiers give None.
    """
    model.eval()
    rectifier = model.rectifier
    points = rectifier.control_points(images) if callable(getattr(rectifier, "control_points", None)) else None
    return rectifier(images), points


def movement_scores(model: RecognitionModel, images: Tensor) -> Tensor:
    """Mean absolute change the rectifier makes to each image (B×C×H×W -> B), in normalised units:
    0 for the identity. Used to pick the crops a rectifier acts on most."""
    out, _ = rectify(model, images)
    return (out.float() - images.float()).abs().mean(dim=(1, 2, 3))


def load_crops(dataset: Sequence, transform: ImageTransform, indices: Sequence[int]) -> tuple[Tensor, list[str]]:
    """Items ``indices`` of a benchmark dataset: (model inputs B×C×H×W, labels)."""
    labels, tensors = [], []
    for i in indices:
        image, label = dataset[int(i)][:2]
        labels.append(label)
        tensors.append(transform(image))
    return torch.stack(tensors), labels


@dataclass
class Column:
    """One column of the figure: a title and the B images (uint8 H×W×C) it shows."""

    title: str
    images: np.ndarray
    polylines: list[list[np.ndarray]] = field(default_factory=list)  # per image: point arrays (pixels)


def boundary_polylines(points: Tensor, height: int, width: int) -> list[list[np.ndarray]]:
    """``scrn`` control points B×3K×2 in [-1, 1] -> per image [upper, lower, centre] pixel polylines."""
    k = points.shape[1] // 3
    pix = (points.detach().float().cpu().numpy() + 1.0) / 2.0 * np.array([width - 1, height - 1])
    return [[p[:k], p[k:2 * k], p[2 * k:]] for p in pix]


def save_figure(columns: Sequence[Column], labels: Sequence[str], path: str | Path, scale: float = 2.0) -> Path:
    """A rows × columns grid (one row per crop, one column per stage/model) written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(labels)
    h, w = columns[0].images.shape[1:3]
    fig, axes = plt.subplots(rows, len(columns), squeeze=False,
                             figsize=(len(columns) * w / 40 * scale / 2 + 0.4, rows * h / 40 * scale / 2 + 0.6))
    for c, col in enumerate(columns):
        for r in range(rows):
            ax = axes[r][c]
            img = col.images[r]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255,
                      interpolation="bilinear")
            if col.polylines:
                for line, colour in zip(col.polylines[r], ("tab:red", "tab:blue", "tab:green"), strict=False):
                    ax.plot(line[:, 0], line[:, 1], "-o", color=colour, markersize=1.5, linewidth=0.8)
                ax.set_xlim(-0.5, img.shape[1] - 0.5)  # boundaries outside the crop do not resize the panel
                ax.set_ylim(img.shape[0] - 0.5, -0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col.title, fontsize=7)
            if c == 0:
                ax.set_ylabel(labels[r], fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.3)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")  # the row labels stay inside
    finally:
        plt.close(fig)
    return Path(path)
