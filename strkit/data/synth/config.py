"""The synthetic-data configuration: one typed schema, YAML presets and ``a.b=value`` overrides.

A synth config is a YAML mapping with the sections of :class:`SynthConfig` (``output``, ``text``,
``fonts``, ``layout``, ``style``, ``geometry``, ``background``, ``degrade``). Presets are the files
``configs/synth/<name>.yaml`` (``clean``, ``mjsynth``, ``hard``, ``realistic``); ``_base_`` inheritance works as in
the training configs. The schema defaults *are* the ``mjsynth`` preset, so ``mjsynth`` renders even
where the ``configs/`` folder is absent (an installed wheel).

Conventions of the fields: ``*_p`` is a probability per sample; a two-element list ``[lo, hi]`` is a
range sampled uniformly; a mapping of names to weights (``text.kinds``, ``background.kinds`` ...) is
a categorical distribution (weights need not sum to one, a weight of 0 disables the entry).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from strkit.config import apply_overrides, load_yaml_tree, relative_note
from strkit.schema import SYNTH_RULES, ConfigError, build_dataclass

PRESET_NAMES: tuple[str, ...] = ("clean", "mjsynth", "hard", "realistic")


def preset_dir() -> Path:
    """Where the named presets live: package data ``strkit/data/synth/presets`` (``configs/synth`` in the
    repository links to it), so that presets work from an installed wheel too."""
    return Path(__file__).resolve().parent / "presets"


def _rng2(lo: float, hi: float) -> Any:
    return field(default_factory=lambda: [float(lo), float(hi)])


def _weights(**kw: float) -> Any:
    return field(default_factory=lambda: dict(kw))


@dataclass
class OutputConfig:
    """Size and colour of the produced images.

    ``keep_ratio=False``: every image is ``height × width``; text shorter than the box is not
    stretched by more than a factor drawn from ``max_stretch`` (the crop is widened instead).
    ``keep_ratio=True``: the width follows the text, clipped to ``[min_width, max_width]``.
    ``supersample``: the text is warped on a canvas this many times the output height, then
    area-downscaled (anti-aliasing). ``storage_quality``: JPEG quality of the stored image.
    """

    height: int = 32
    width: int = 128
    keep_ratio: bool = False
    min_width: int = 16
    max_width: int = 512
    gray: bool = False
    supersample: float = 2.0
    max_stretch: list[float] = _rng2(1.0, 1.5)
    storage_quality: int = 95


@dataclass
class TextConfig:
    """What is written.

    ``lexicon``: ``wordfreq:<lang>:<n>`` (optionally ``:large``) or a UTF-8 file, one word per line.
    ``rank_power``: word weight ∝ (rank+1)^-rank_power; 0 = every word equally likely (MJSynth).
    ``kinds``: mixture of text generators (see :mod:`strkit.data.synth.text`). ``case``: case
    variant of lexicon words. ``affix_p``: chance to attach punctuation to a word.
    ``charset``: labels lie in this charset (preset name or file); for a case-insensitive charset
    (``36_lowercase``) the drawn text keeps its case and the label is lowercased.
    ``length_balance``: lexicon words by length: 0 = as the lexicon (and ``rank_power``) give them, 1 =
    every word length in ``min_len..max_len`` that the lexicon has equally likely, in between = that
    mixture. ``char_balance``: 0..1, words are weighted by (frequency of the commonest character /
    frequency of their rarest character) ** char_balance, so words with rare letters come more often.
    Both change only which lexicon word is drawn (one draw per word, as without them).
    ``focus_chars``: characters to train (e.g. ``€£`` added to a charset); with probability
    ``focus_p`` a sample holds one or two of them, placed as such characters are written: a currency
    sign before or after an amount, a letter inside a word, another symbol before, after or inside it.
    Each must be a charset character that some usable font draws (else an error names it); only faces
    that draw every character of a sample render it.
    """

    charset: str = "94_full"
    lexicon: str = "wordfreq:en:100000"
    rank_power: float = 0.0
    min_len: int = 1
    max_len: int = 24
    kinds: dict[str, float] = _weights(word=0.78, digits=0.06, alnum=0.04, date=0.02, price=0.03,
                                       code=0.04, punct=0.03)
    case: dict[str, float] = _weights(lower=0.40, title=0.35, upper=0.25)
    affix_p: float = 0.05
    length_balance: float = 0.0
    char_balance: float = 0.0
    focus_chars: str = ""
    focus_p: float = 0.0


@dataclass
class FontConfig:
    """Which fonts are used.

    ``system``: scan the standard font folders (matplotlib's bundled fonts, ``/usr/share/fonts``,
    ``~/.fonts`` ...). ``dirs``: extra folders (``@matplotlib`` names matplotlib's font folder).
    ``sampling``: ``family`` draws a family uniformly, then a face of it; ``file`` draws a face
    uniformly. ``lists``: apply the reviewed lists in ``data/fonts/``. ``coverage``: what a face must
    draw to be used at all: ``charset`` (every charset character), ``alnum`` (every letter and
    digit; texts with punctuation it lacks go to other faces) or ``letters`` (every letter).
    ``min_template_score``: drop fonts whose glyphs look less like Latin letters than this (0..1).
    ``family_weights``: ``{shell pattern of a font path: relative weight}`` (default 1 per family);
    the default halves the weight of the 350 display families of Debian's ``fonts-aenigma``, so that
    they make about half of the samples when all recommended packages are installed.
    """

    system: bool = True
    dirs: list[str] = field(default_factory=list)
    sampling: str = "family"
    lists: bool = True
    coverage: str = "alnum"
    min_template_score: float = 0.15
    family_weights: dict[str, float] = _weights(**{"*/aenigma/*": 0.5})


@dataclass
class LayoutConfig:
    """Placement of the text in the crop (before perspective).

    ``fill``: text height / (text height + top and bottom margins); a rotated or curved text's crop
    also holds its slant. ``margin_x``: left and right margins, in text heights.
    ``tracking``: extra space between characters in em, used with probability ``tracking_p``.
    ``size_jitter``: the rendered font size relative to the canvas text height (quality only).
    ``border_text_p``: distractor text: fragments of other words (same or another font, same colour)
    beside or above/below the word, cut by the crop's edges, as neighbouring words and lines in real
    crops. They never touch the word's box and never enter the label or the geometry.
    ``border_text_size``: their text height relative to the word's.
    """

    fill: list[float] = _rng2(0.55, 0.9)
    margin_x: list[float] = _rng2(0.05, 0.6)
    tracking_p: float = 0.15
    tracking: list[float] = _rng2(-0.04, 0.35)
    underline_p: float = 0.03
    size_jitter: list[float] = _rng2(0.8, 1.2)
    border_text_p: float = 0.0
    border_text_size: list[float] = _rng2(0.6, 1.1)


@dataclass
class StyleConfig:
    """Colours, contrast and decorations.

    ``dark_text_p``: polarity (dark text on a lighter background). ``contrast``: |ΔY| between text and
    the background under it (0..255) for most samples, ``low_contrast`` with ``low_contrast_p``;
    ``min_contrast`` is enforced on the final luminance. ``alpha``: text opacity.
    ``outline_width`` and ``shadow_offset`` are in text heights; ``shadow_blur`` in output pixels.
    ``texture_p``: the text colour is modulated by a texture (MJSynth "blend onto texture").
    ``weight_p``: the strokes are thickened or thinned by a pixel (weight jitter).
    ``gray_p``: a colourless (gray-scale) sample; ``saturation``: colour saturation range.
    ``palette``: a colour map of (text, background) pairs fitted on real training crops (``real``: the
    shipped one, see :mod:`strkit.data.synth.palette`; or a palette JSON file); with probability
    ``palette_p`` a sample takes its colours and background texture strength from a pair drawn by
    weight, each channel jittered by up to ``palette_jitter``. Pairs with less contrast than
    ``min_contrast`` are not used, and ``min_contrast`` is enforced as for random colours.
    """

    dark_text_p: float = 0.65
    contrast: list[float] = _rng2(50, 200)
    low_contrast_p: float = 0.1
    low_contrast: list[float] = _rng2(25, 50)
    min_contrast: float = 25.0
    alpha: list[float] = _rng2(0.8, 1.0)
    outline_p: float = 0.12
    outline_width: list[float] = _rng2(0.03, 0.08)
    shadow_p: float = 0.08
    shadow_offset: list[float] = _rng2(0.03, 0.1)
    shadow_blur: list[float] = _rng2(0.0, 1.5)
    texture_p: float = 0.1
    weight_p: float = 0.1
    gray_p: float = 0.2
    saturation: list[float] = _rng2(0.0, 0.8)
    palette: str = "real"
    palette_p: float = 0.0
    palette_jitter: float = 6.0


@dataclass
class GeometryConfig:
    """Rotation, perspective and curved baselines.

    ``rotate_std`` (degrees) of a normal clipped at ``rotate_max``. ``perspective``: corner jitter of
    the text box, in text heights. ``curve``: weights of the curve kinds (``arc``: the text follows a
    circle, letters turn with it; ``sine``: a vertical sine displacement). ``arc_angle``: the angle
    the text spans on its circle (degrees, either direction). ``sine_amplitude`` in text heights,
    ``sine_periods`` over the text width. ``points``: points per boundary polyline when geometry is
    recorded.
    """

    rotate_p: float = 0.5
    rotate_std: float = 3.0
    rotate_max: float = 10.0
    perspective_p: float = 0.6
    perspective: list[float] = _rng2(0.0, 0.2)
    curve_p: float = 0.12
    curve: dict[str, float] = _weights(arc=0.6, sine=0.4)
    arc_angle: list[float] = _rng2(20.0, 120.0)
    sine_amplitude: list[float] = _rng2(0.05, 0.3)
    sine_periods: list[float] = _rng2(0.3, 1.2)
    points: int = 10


@dataclass
class BackgroundConfig:
    """Backgrounds: weights of the kinds (see :mod:`strkit.data.synth.background`).

    ``image`` draws crops of the pictures under ``image_dirs`` (its weight is ignored when no folder is
    given; never point it at benchmark test sets). ``image_pool``: how many pictures are held in memory.
    ``distractor_p``: random lines, bars or dots over the background.
    """

    kinds: dict[str, float] = _weights(flat=0.25, gradient=0.2, noise=0.3, texture=0.25, image=0.4)
    image_dirs: list[str] = field(default_factory=list)
    image_pool: int = 400
    distractor_p: float = 0.1


@dataclass
class DegradeConfig:
    """Degradations of the output-size image, in this order. Sizes are in output pixels."""

    blur_p: float = 0.4
    blur_sigma: list[float] = _rng2(0.3, 1.0)
    motion_p: float = 0.08
    motion_length: list[float] = _rng2(2.0, 5.0)
    lowres_p: float = 0.25
    lowres_factor: list[float] = _rng2(1.3, 2.5)
    noise_p: float = 0.35
    noise_std: list[float] = _rng2(2.0, 10.0)
    jpeg_p: float = 0.4
    jpeg_quality: list[float] = _rng2(30.0, 90.0)


@dataclass
class SynthConfig:
    """The whole synthetic-data configuration (defaults = the ``mjsynth`` preset)."""

    output: OutputConfig = field(default_factory=OutputConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fonts: FontConfig = field(default_factory=FontConfig)
    layout: LayoutConfig = field(default_factory=LayoutConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    name: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)

    def dump(self) -> str:
        """The config as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _check_semantics(cfg: SynthConfig) -> None:
    """Ranges ordered, probabilities in [0, 1], weights non-negative, sizes sensible."""
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(sub):
            continue
        for f in dataclasses.fields(sub):
            key = f"{section.name}.{f.name}"
            v = getattr(sub, f.name)
            if f.name.endswith("_p") and not 0.0 <= v <= 1.0:
                raise ConfigError(f"synth config '{key}' is a probability and must lie in [0, 1], got {v}")
            if isinstance(v, list) and f.name not in ("dirs", "image_dirs"):
                if len(v) != 2 or v[0] > v[1]:
                    raise ConfigError(f"synth config '{key}' must be a range [lo, hi] with lo <= hi, got {v}")
            if isinstance(v, dict):
                if any(w < 0 for w in v.values()):
                    raise ConfigError(f"synth config '{key}': weights must be >= 0, got {v}")
    o = cfg.output
    if o.height < 8 or o.width < 8 or o.min_width < 1 or o.max_width < o.min_width:
        raise ConfigError(f"synth config 'output': height and width must be >= 8 and min_width <= max_width, "
                          f"got height={o.height} width={o.width} min_width={o.min_width} "
                          f"max_width={o.max_width}")
    if not 1.0 <= o.supersample <= 4.0:
        raise ConfigError(f"synth config 'output.supersample' must lie in [1, 4], got {o.supersample}")
    if not 1 <= o.storage_quality <= 100:
        raise ConfigError(f"synth config 'output.storage_quality' must lie in [1, 100], "
                          f"got {o.storage_quality}")
    t = cfg.text
    if not 1 <= t.min_len <= t.max_len:
        raise ConfigError(f"synth config 'text': need 1 <= min_len <= max_len, got {t.min_len}, {t.max_len}")
    if t.focus_p > 0 and not t.focus_chars:
        raise ConfigError(f"synth config 'text.focus_p' is {t.focus_p} but 'text.focus_chars' is empty; give the "
                          f"characters to train (--focus-chars or text.focus_chars) or set text.focus_p=0")
    if cfg.fonts.coverage not in ("charset", "alnum", "letters"):
        raise ConfigError(f"synth config 'fonts.coverage' must be 'charset', 'alnum' or 'letters', got "
                          f"'{cfg.fonts.coverage}'")
    if cfg.fonts.sampling not in ("family", "file"):
        raise ConfigError(f"synth config 'fonts.sampling' must be 'family' or 'file', got "
                          f"'{cfg.fonts.sampling}'")
    for key, v in (("text.length_balance", t.length_balance), ("text.char_balance", t.char_balance)):
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"synth config '{key}' must lie in [0, 1], got {v}")
    if not 0.0 <= cfg.style.palette_jitter <= 64.0:
        raise ConfigError(f"synth config 'style.palette_jitter' must lie in [0, 64], got {cfg.style.palette_jitter}")
    if cfg.layout.border_text_size[0] <= 0.1 or cfg.layout.border_text_size[1] > 3.0:
        raise ConfigError(f"synth config 'layout.border_text_size' must lie in (0.1, 3], got "
                          f"{cfg.layout.border_text_size}")
    if cfg.geometry.points < 2:
        raise ConfigError(f"synth config 'geometry.points' must be >= 2, got {cfg.geometry.points}")
    if cfg.layout.fill[0] <= 0.05 or cfg.layout.fill[1] > 1.0:
        raise ConfigError(f"synth config 'layout.fill' must lie in (0.05, 1], got {cfg.layout.fill}")


def synth_config_from_dict(data: Mapping[str, Any], name: str = "custom") -> SynthConfig:
    """Validate a plain mapping (missing keys take the defaults).

    Raises:
        ConfigError: naming the unknown key or the bad value.
    """
    data = dict(data)
    data.setdefault("name", name)
    cfg = build_dataclass(SynthConfig, data, "", rules=SYNTH_RULES)
    _check_semantics(cfg)
    return cfg


def resolve_preset(preset_or_path: str | Path) -> Path | None:
    """The YAML file of a preset name or path; ``None`` for ``mjsynth`` when no file exists.

    Raises:
        ConfigError: neither a known preset nor an existing file.
    """
    text = str(preset_or_path)
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"synth config file not found: {path}{relative_note(path)}")
        return path
    candidate = preset_dir() / f"{text}.yaml"
    if candidate.is_file():
        return candidate
    if text == "mjsynth":
        return None
    raise ConfigError(f"unknown synth preset '{text}': give one of {', '.join(PRESET_NAMES)} "
                      f"(files in {preset_dir()}) or the path of a YAML file")


def set_dotted(data: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with ``{"a.b": value}`` entries set (values are used as they are)."""
    out = copy.deepcopy(dict(data))
    for key, value in values.items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = copy.deepcopy(value)
    return out


def load_synth_config(preset_or_path: str | Path = "mjsynth",
                      overrides: Sequence[str] | Mapping[str, Any] | None = None) -> SynthConfig:
    """Load a preset (``clean``, ``mjsynth``, ``hard``, ``realistic``) or YAML file and apply overrides.

    Args:
        preset_or_path: preset name or path of a YAML file (``_base_`` inheritance allowed).
        overrides: ``["a.b=value", ...]`` strings, or a mapping ``{"a.b": value}``.

    Raises:
        ConfigError: unknown preset, missing file, unknown key or bad value (named).
    """
    path = resolve_preset(preset_or_path)
    data = load_yaml_tree(path) if path is not None else {}
    name = data.pop("name", None) or (path.stem if path is not None else "mjsynth")
    if isinstance(overrides, Mapping):
        data = set_dotted(data, overrides)
    elif overrides:
        data = apply_overrides(data, list(overrides))
    return synth_config_from_dict(data, name=name)
