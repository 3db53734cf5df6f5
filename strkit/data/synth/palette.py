"""Colour maps fitted on real *training* crops: (text colour, background colour) pairs with texture stats.

SynthTIGER-style colour maps: instead of drawing text and background colours at random, a synthetic
sample takes a pair observed in a real crop (``style.palette``, used with probability
``style.palette_p``). A palette is fitted once and shipped as data:

1. :func:`crop_colors` estimates one pair per crop: the crop (at 32 px height) is split into two
   colour clusters by k-means in CIE Lab (initialised at its darkest and brightest tenth); the
   background is the cluster that covers most of the crop's border ring, the text the other one. The
   colours are the per-channel medians of the clusters' core pixels (eroded, so anti-aliased edges do
   not count). Texture statistics of the background cluster: ``bg_std`` (luminance std: gradients,
   shading, texture) and ``noise`` (std of the luminance minus its Gaussian blur, σ = 2 px: grain).
2. :func:`fit_palette` pools the pairs of every crop listed in the given folder datasets and reduces
   them to ``size`` entries by k-means over the 6-D (text Lab, background Lab) vectors; each entry is
   the real pair nearest its cluster centre, weighted by the cluster's share of crops, with the
   median texture statistics of its members.

Only *training* folders may be fitted on: a folder whose name is a benchmark test set (``IIIT5K_3000``,
``SVT_647``, ``IC13_857`` ...) is refused by :func:`strkit.data.benchmarks.assert_not_benchmark`, and
with a ``benchmark_root`` so is anything under it that is not a ``*_train`` split. The shipped palette
``real`` (``strkit/data/synth/palettes/real.json``) was fitted on IIIT5K_train, SVT_train and IC15_train
(``tools/synth.py --fit-palette``; see ``docs/synthetic.md``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from strkit.config import ConfigError
from strkit.data.benchmarks import assert_not_benchmark
from strkit.data.folder import read_gt_file, resolve_gt_file
from strkit.data.image_limits import ImageTooLargeError, check_encoded
from strkit.data.synth.colors import LUMA

log = logging.getLogger("strkit")

PALETTE_FORMAT = "strkit-synth-palette"
PALETTE_VERSION = 1
#: Names of the palettes shipped in ``strkit/data/synth/palettes/`` (``style.palette: real``).
PALETTE_NAMES: tuple[str, ...] = ("real",)


def palette_dir() -> Path:
    """Where the shipped palettes live (package data)."""
    return Path(__file__).resolve().parent / "palettes"


@dataclass(frozen=True)
class CropColors:
    """The colour statistics of one crop (RGB 0..255; luminance std in 0..255 units)."""

    text: tuple[float, float, float]
    bg: tuple[float, float, float]
    text_share: float
    bg_std: float
    noise: float

    @property
    def contrast(self) -> float:
        """|ΔY| between text and background colours."""
        return abs(float(np.asarray(self.text) @ LUMA) - float(np.asarray(self.bg) @ LUMA))


def _lab(rgb: np.ndarray) -> np.ndarray:
    """CIE Lab (L 0..100) of RGB uint8/float 0..255 pixels (…×3)."""
    flat = np.ascontiguousarray(rgb, dtype=np.float32).reshape(-1, 1, 3) / 255.0
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(rgb.shape)


def crop_colors(image: np.ndarray, height: int = 32, iterations: int = 12) -> CropColors | None:
    """The (text, background) colours of a word crop (uint8 H×W×3 RGB), ``None`` for a flat crop.

    See the module docstring for the method. Deterministic (no random initialisation).
    """
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    h, w = image.shape[:2]
    if h < 4 or w < 4:
        return None
    nw = int(np.clip(round(w * height / h), 8, 8 * height))
    img = cv2.resize(image, (nw, height), interpolation=cv2.INTER_AREA)
    lab = _lab(img).reshape(-1, 3)
    lum = lab[:, 0]
    lo, hi = np.percentile(lum, [10, 90])
    if hi - lo < 4.0:  # one colour: nothing to separate
        return None
    centres = np.stack([lab[lum <= lo].mean(0), lab[lum >= hi].mean(0)])
    assign = np.zeros(len(lab), np.int64)
    for _ in range(iterations):
        d = ((lab[:, None, :] - centres[None]) ** 2).sum(-1)
        new = d.argmin(1)
        if (new == assign).all() and _ > 0:
            break
        assign = new
        for k in range(2):
            if (assign == k).any():
                centres[k] = lab[assign == k].mean(0)
    labels = assign.reshape(height, nw)
    b = max(1, height // 8)
    ring = np.zeros((height, nw), bool)
    ring[:b], ring[-b:], ring[:, :b], ring[:, -b:] = True, True, True, True
    share_ring = [(labels[ring] == k).mean() for k in range(2)]
    share_all = [(labels == k).mean() for k in range(2)]
    if abs(share_ring[0] - share_ring[1]) > 1e-9:
        bg_k = int(np.argmax(share_ring))
    else:
        bg_k = int(np.argmax(share_all))
    text_k = 1 - bg_k
    if share_all[text_k] < 0.01:
        return None
    rgb = img.reshape(-1, 3).astype(np.float32)

    def core(k: int) -> np.ndarray:
        m = (labels == k).astype(np.uint8)
        e = cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool).reshape(-1)
        return e if e.sum() >= 4 else m.astype(bool).reshape(-1)

    tmask, bmask = core(text_k), core(bg_k)
    text = np.median(rgb[tmask], axis=0)
    bg = np.median(rgb[bmask], axis=0)
    y = (rgb @ LUMA).reshape(height, nw)
    bgm = bmask.reshape(height, nw)
    m = bgm.astype(np.float32)  # blur of the background only (normalised convolution): text edges are no grain
    smooth = cv2.GaussianBlur(y * m, (0, 0), 2.0) / np.maximum(cv2.GaussianBlur(m, (0, 0), 2.0), 1e-3)
    resid = y - smooth
    return CropColors(tuple(round(float(v), 1) for v in text), tuple(round(float(v), 1) for v in bg),
                      round(float(share_all[text_k]), 4), round(float(y[bgm].std()), 2),
                      round(float(resid[bgm].std()), 2))


def _decode(path: Path) -> np.ndarray | None:
    try:
        data = path.read_bytes()
        check_encoded(data, where=str(path))
    except (OSError, ImageTooLargeError) as exc:
        log.warning("palette: skipped %s (%s)", path, exc)
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 25) -> np.ndarray:
    """Cluster labels of the rows of ``x`` (k-means++ initialisation from ``seed``)."""
    rng = np.random.default_rng(seed)
    centres = [x[int(rng.integers(len(x)))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
        c = x[int(rng.choice(len(x), p=p))]
        centres.append(c)
        d2 = np.minimum(d2, ((x - c) ** 2).sum(1))
    cen = np.stack(centres)
    labels = np.zeros(len(x), np.int64)
    for it in range(iterations):
        d = (x * x).sum(1)[:, None] - 2 * x @ cen.T + (cen * cen).sum(1)[None]
        new = d.argmin(1)
        if it and (new == labels).all():
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                cen[j] = x[labels == j].mean(0)
    return labels


def fit_palette(folders: Sequence[str | Path], size: int = 256, limit: int = 0, seed: int = 0,
                benchmark_root: str | Path | None = None) -> dict[str, Any]:
    """Fit a palette (the JSON document, see :func:`load_palette`) on the crops of folder datasets.

    Args:
        folders: folder datasets (``labels.tsv`` + images) of *training* crops.
        size: number of palette entries (fewer when there are fewer usable crops).
        limit: use at most this many crops per folder, evenly spread (0 = all).
        seed: seed of the k-means initialisation.
        benchmark_root: where the benchmarks live (refuses anything under it but ``*_train`` splits).

    Raises:
        BenchmarkLeakError: a folder is a benchmark test set.
        FolderNotFoundError, GtFormatError: a folder is not a folder dataset.
        ValueError: no crop gave a colour pair.
    """
    if size < 1:
        raise ValueError(f"palette size must be >= 1, got {size}")
    stats: list[CropColors] = []
    sources = []
    for folder in folders:
        assert_not_benchmark(folder, benchmark_root)
        items = read_gt_file(resolve_gt_file(folder))
        if limit and len(items) > limit:
            items = items[:: max(1, len(items) // limit)][:limit]
        used = 0
        for path, _ in items:
            img = _decode(path)
            c = crop_colors(img) if img is not None else None
            if c is not None:
                stats.append(c)
                used += 1
        sources.append({"name": Path(folder).name, "crops": len(items), "used": used})
    if not stats:
        raise ValueError(f"no crop of {', '.join(str(f) for f in folders)} gave a colour pair")
    text = np.array([c.text for c in stats], np.float32)
    bg = np.array([c.bg for c in stats], np.float32)
    feats = np.concatenate([_lab(text), _lab(bg)], axis=1).astype(np.float64)
    k = min(size, len(stats))
    labels = _kmeans(feats, k, seed)
    entries = []
    for j in range(k):
        members = np.flatnonzero(labels == j)
        if not len(members):
            continue
        centre = feats[members].mean(0)
        rep = members[int(((feats[members] - centre) ** 2).sum(1).argmin())]
        entries.append({
            "text": [round(float(v), 1) for v in text[rep]],
            "bg": [round(float(v), 1) for v in bg[rep]],
            "weight": round(len(members) / len(stats), 6),
            "bg_std": round(float(np.median([stats[m].bg_std for m in members])), 2),
            "noise": round(float(np.median([stats[m].noise for m in members])), 2),
        })
    entries.sort(key=lambda e: -e["weight"])
    contrast = np.array([c.contrast for c in stats])
    dark = np.mean([float(np.asarray(c.text) @ LUMA) < float(np.asarray(c.bg) @ LUMA) for c in stats])
    return {"format": PALETTE_FORMAT, "version": PALETTE_VERSION,
            "method": "2-cluster k-means in Lab per crop (background = cluster of the border ring); "
                      f"{k} k-means clusters of the (text Lab, background Lab) pairs; seed {seed}",
            "sources": sources,
            "summary": {"crops": len(stats), "dark_text_share": round(float(dark), 4),
                        "contrast_quantiles": {str(q): round(float(np.percentile(contrast, q)), 1)
                                               for q in (5, 25, 50, 75, 95)},
                        "bg_std_median": round(float(np.median([c.bg_std for c in stats])), 2),
                        "noise_median": round(float(np.median([c.noise for c in stats])), 2)},
            "pairs": entries}


@dataclass(frozen=True)
class Palette:
    """A loaded palette: N (text, background) RGB pairs with weights and background texture stats."""

    text: np.ndarray  # N×3 float32
    bg: np.ndarray  # N×3 float32
    weight: np.ndarray  # N float64, sums to 1
    bg_std: np.ndarray  # N float32
    noise: np.ndarray  # N float32
    name: str = ""

    def __len__(self) -> int:
        return len(self.weight)

    @property
    def contrast(self) -> np.ndarray:
        """|ΔY| of every pair."""
        return np.abs(self.text @ LUMA - self.bg @ LUMA)

    def subset(self, keep: np.ndarray) -> Palette:
        """The entries where ``keep`` is true (weights renormalised)."""
        w = self.weight[keep]
        return Palette(self.text[keep], self.bg[keep], w / w.sum(), self.bg_std[keep], self.noise[keep],
                       self.name)

    def digest(self) -> str:
        """SHA-1 of the entries (recorded in the LMDB meta for reproducibility)."""
        h = hashlib.sha1()
        for a in (self.text, self.bg, self.weight, self.bg_std, self.noise):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def draw(self, rng: np.random.Generator) -> int:
        """The index of an entry drawn by weight (one uniform draw)."""
        cdf = np.cumsum(self.weight)
        return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(cdf) - 1))


def resolve_palette(spec: str) -> Path:
    """The JSON file of a palette name (``real``) or path.

    Raises:
        ConfigError: neither a shipped palette nor an existing file.
    """
    shipped = palette_dir() / f"{spec}.json"
    if spec in PALETTE_NAMES and shipped.is_file():
        return shipped
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    raise ConfigError(f"style.palette '{spec}': give one of {', '.join(PALETTE_NAMES)} (shipped in "
                      f"{palette_dir()}) or the path of a palette JSON file (tools/synth.py --fit-palette)")


def palette_from_dict(doc: dict[str, Any], name: str = "") -> Palette:
    """A :class:`Palette` from its JSON document.

    Raises:
        ConfigError: not a palette document, or malformed entries.
    """
    if not isinstance(doc, dict) or doc.get("format") != PALETTE_FORMAT:
        raise ConfigError(f"palette '{name}' is not a {PALETTE_FORMAT} JSON document")
    if doc.get("version") != PALETTE_VERSION:
        raise ConfigError(f"palette '{name}' has version {doc.get('version')}; this strkit reads version "
                          f"{PALETTE_VERSION}")
    try:
        pairs = doc["pairs"]
        text = np.array([p["text"] for p in pairs], np.float32).reshape(-1, 3)
        bg = np.array([p["bg"] for p in pairs], np.float32).reshape(-1, 3)
        weight = np.array([p.get("weight", 1.0) for p in pairs], np.float64)
        bg_std = np.array([p.get("bg_std", 0.0) for p in pairs], np.float32)
        noise = np.array([p.get("noise", 0.0) for p in pairs], np.float32)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"palette '{name}': malformed pairs ({exc})") from None
    if not len(weight) or (weight < 0).any() or weight.sum() <= 0 or len(text) != len(weight):
        raise ConfigError(f"palette '{name}' needs at least one pair and non-negative weights")
    if ((text < 0) | (text > 255) | (bg < 0) | (bg > 255)).any():
        raise ConfigError(f"palette '{name}': colours must lie in 0..255")
    return Palette(text, bg, weight / weight.sum(), bg_std, noise, name)


def load_palette(spec: str) -> Palette:
    """Load a palette by name (``real``) or path (see :func:`resolve_palette`)."""
    path = resolve_palette(spec)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"palette '{spec}': cannot read {path} ({exc})") from None
    return palette_from_dict(doc, spec)


def write_palette(doc: dict[str, Any], path: str | Path) -> Path:
    """Write a palette document as JSON (one pair per line: small diffs when refitted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {k: v for k, v in doc.items() if k != "pairs"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "pairs": [\n'
    text += ",\n".join("  " + json.dumps(p, separators=(", ", ": ")) for p in doc["pairs"]) + "\n ]\n}\n"
    path.write_text(text, encoding="utf-8")
    return path

