"""YAML configuration: ``_base_`` inheritance, ``a.b.c=value`` overrides and one typed schema.

A config file is a YAML mapping. ``_base_`` (a path or a list of paths, relative to the file) names
files merged first, in order; the file's own keys are merged on top (mappings merge recursively,
everything else replaces). Command-line overrides ``a.b.c=value`` are applied last; ``value`` is
parsed as YAML (``3`` is an int, ``[1,2]`` a list, ``null`` None).

The merged mapping is validated against :class:`Config`, a tree of dataclasses, by the one schema
validator (:mod:`strkit.schema`). An unknown key or a value of the wrong type raises
:class:`~strkit.schema.ConfigError` naming the dotted key and the file (or ``command line``) that set it.
Slots that select a registered module (``model.backbone`` ...) are plain mappings
``{name: ..., **kwargs}``; their keys are checked against the module's constructor when the model is
built (see :meth:`strkit.registry.Registry.build`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from strkit.schema import CONFIG_RULES, ConfigError, Provenance, build_dataclass


def relative_note(path: str | Path) -> str:
    """`` (relative to the current directory /x/y)`` for a relative ``path``, else ``""``: appended to the
    messages about paths that do not exist, since a relative path in a config or on the command line is
    read from wherever the tool runs."""
    return "" if Path(path).is_absolute() else f" (relative to the current directory {Path.cwd()})"


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------
@dataclass
class SourceConfig:
    """One training / validation data source.

    ``kind`` is ``lmdb`` (a folder holding an LMDB, or a folder of LMDB folders), ``folder``
    (``images/`` + ``labels.tsv``), ``synth`` (on-the-fly synthetic rendering, ``path`` is a preset
    name or YAML file) or ``benchmark`` (evaluation only).
    """

    path: str = ""
    kind: str = "lmdb"
    ratio: float = 1.0
    name: str = ""
    # Fraction held out for validation; None = ``data.val_fraction``, 0 = none from this source.
    val_fraction: float | None = None
    # Training sources of kind ``lmdb`` only: the LMDB carries the synthetic generator's word geometry
    # (``geom-%09d``, written by ``tools/synth.py --geometry``), used by ``model.geometry_loss``.
    geometry: bool = False
    # Curriculum: [[from_step, ratio], ...] changes ``ratio`` from those steps on, e.g.
    # ``ratio: 1.0, ratio_schedule: [[1500, 0.2]]`` (clean synthetic text first, a fifth of each batch later).
    ratio_schedule: list[list[float]] = field(default_factory=list)
    # Crop concatenation (strkit.data.concat_augment): probability that an item is joined with another of
    # this source; the join may be at most ``concat_max_aspect`` wide (width / height; 0 = 1.5x the model
    # input's ratio, e.g. 6 for 32x128).
    concat_p: float = 0.0
    concat_max_aspect: float = 0.0


@dataclass
class ReplayConfig:
    """Replay of synthetic data while fine-tuning, rendered on the fly (nothing to prepare), so that what the
    model could read before is not forgotten."""

    preset: str = "mjsynth"  # a synth preset name or YAML file
    ratio: float = 0.0       # share of every training batch (0 = off); the other sources share the rest
    val_samples: int = 0     # a fixed rendered validation set (val_replay_* metrics, forgetting made visible)
    seed: int = 777          # of that validation set (training replay draws from other seeds)


#: Default pixel limit (width × height) of one image: 40 megapixels, far above any word crop, far below a
#: decompression bomb (``data.max_pixels``; :mod:`strkit.data.image_limits` applies it).
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass
class DataConfig:
    """Data sources, image geometry and loading."""

    train: list[SourceConfig] = field(default_factory=list)
    val: list[SourceConfig] = field(default_factory=list)
    # Fraction of the training sources held out for validation when ``val`` is empty.
    val_fraction: float = 0.0
    # Fraction of each training source (lmdb / folder) trained on, a seeded subset of what validation leaves;
    # 1 = all. Proxy trials of protocol search (tools/tune.py --subset) train on less data this way.
    train_subset: float = 1.0
    img_h: int = 32
    img_w: int = 100
    channels: int = 1  # 1 = gray, 3 = RGB
    keep_ratio: bool = False
    augment: str = "none"
    # Options of the augmentation preset, e.g. {n: 2, m: 5} for ``randaug`` (N ops per sample, magnitude 0-10).
    augment_options: dict[str, Any] = field(default_factory=dict)
    workers: int = 2
    # Images of a training or validation source (lmdb / folder) whose header announces more pixels than this
    # are unusable records, refused before decoding (a guard against decompression bombs); 0 = no limit of
    # strkit's own (PIL's ``Image.MAX_IMAGE_PIXELS`` still applies).
    max_pixels: int = DEFAULT_MAX_PIXELS
    benchmark_root: str = "../shared/benchmarks"
    replay: ReplayConfig = field(default_factory=ReplayConfig)


@dataclass
class ModelConfig:
    """The four stages, each ``{name: <registered name>, **kwargs}``, and the charset."""

    charset: str = "36_lowercase"
    max_length: int = 25  # longest label (characters); longer training labels are skipped and counted
    rectifier: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    backbone: dict[str, Any] = field(default_factory=lambda: {"name": "vgg"})
    sequence: dict[str, Any] = field(default_factory=lambda: {"name": "bilstm"})
    decoder: dict[str, Any] = field(default_factory=lambda: {"name": "ctc"})
    # Weight of an auxiliary CTC loss on the visual features (a Linear head on the backbone output,
    # training only: inference and export never use it). 0 = off. Lets a model leave the blank-only /
    # most-frequent-character plateau sooner; works with every decoder (attention and iterative_vl models
    # get a CTC codec of their own for it).
    aux_ctc: float = 0.0
    # Weight of the ScRN rectifier's auxiliary geometry loss (training only): its predicted centre line,
    # scale and orientation are pulled towards the word geometry of training sources marked
    # ``geometry: true`` (LMDBs written by ``tools/synth.py --geometry``). 0 = off; > 0 needs the
    # ``scrn`` rectifier and at least one such source.
    geometry_loss: float = 0.0


@dataclass
class OptimizerConfig:
    name: str = "adamw"  # adamw | adadelta | adam | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    momentum: float = 0.9
    rho: float = 0.95
    eps: float = 1e-8


@dataclass
class SchedulerConfig:
    name: str = "onecycle"  # onecycle | cosine | constant
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01


#: ``train.compile`` values: ``off`` or a ``torch.compile`` mode (``default`` = torch's default mode); see
#: :mod:`strkit.engine.compilation`.
COMPILE_MODES: tuple[str, ...] = ("off", "default", "reduce-overhead", "max-autotune",
                                  "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    """Optimisation, precision, logging and checkpointing."""

    steps: int = 1000
    batch_size: int = 32
    seed: int = 0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip: float = 5.0
    # Decay of the exponential moving average of the weights (strkit.engine.ema), e.g. 0.999; 0 = off. With
    # it, validation, best.pt and the snapshots use the averaged weights (the raw ones are validated too, as
    # val_raw_*), and last.pt keeps both.
    ema: float = 0.0
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = False
    # Stages kept in fp32 under bf16/fp16 autocast, e.g. [backbone] (depthwise convolutions are slower in bf16
    # on CPUs) with model.sequence.autocast=true for a bf16 LSTM; [] = every stage follows train.precision.
    fp32_stages: list[str] = field(default_factory=list)
    # torch.compile the training forward pass: off | default | reduce-overhead | max-autotune |
    # max-autotune-no-cudagraphs, or false / true (= off / default; YAML reads a bare `off` as false)
    # (strkit.engine.compilation; eager fallback with one warning).
    compile: str | bool = "off"
    threads: int = 0  # 0 = leave torch's default
    val_every: int = 500
    val_batches: int = 0  # 0 = the whole validation set
    save_every: int = 500
    # Every N steps an inference-only copy of the weights in out_dir/snapshots/ (0 = none): the points of a
    # long run's learning curve (tools/plot_curve.py evaluates them).
    snapshot_every: int = 0
    log_every: int = 50
    # Wall-clock budget, summed over resumes; 0 = no limit. With a budget the LR schedule is fitted to the
    # steps it allows (from the measured step rate), so such runs are not bit-reproducible.
    max_minutes: float = 0.0
    out_dir: str = "runs/default"
    # Start from another run's weights (staged training, fine-tuning): the weights of ``init_from``
    # whose names start with one of ``init_prefixes`` ("" = all), e.g. ["decoder.language."] to take a
    # pre-trained language model. Ignored when resuming.
    init_from: str = ""
    init_prefixes: list[str] = field(default_factory=lambda: [""])
    # Take the model section and image geometry from ``init_from`` (fine-tuning any model with one config);
    # ``model.charset`` stays the config's when set ("" = the checkpoint's). ``init_from`` may also name a
    # bundled model (``default``) or a run folder.
    init_config: bool = False
    # Parameters kept fixed for the first steps: {name prefix: step}, e.g. {"rectifier.": 1200} trains
    # the rest of the network while an identity-initialised rectifier stays the identity, then lets it learn.
    freeze: dict[str, int] = field(default_factory=dict)
    # Learning-rate factors by parameter-name prefix, e.g. {"rectifier.": 0.1}: a rectifier's localisation
    # network at a tenth of the rate, so that its first updates do not wreck the sampling grid.
    lr_scale: dict[str, float] = field(default_factory=dict)
    tensorboard: bool = True
    progress: bool = True


@dataclass
class DistillConfig:
    """Knowledge distillation from a teacher (strkit.engine.distill, strkit.inference.teachers); off while
    ``teacher`` is empty. Teacher outputs are cached on disk (one read per training crop, ever); the time a
    run spends reading crops with the teacher counts against its ``train.max_minutes``."""

    teacher: str = ""           # "" = off | rapidocr | strkit
    teacher_model: str = ""     # rapidocr: a recogniser file in rapidocr/models; strkit: a .pt / .onnx path
    threads: int = 1
    batch_size: int = 32        # crops per teacher call while the cache is filled
    # Teacher cache folder; "" = teacher_cache/<teacher>-<charset> beside the first distilled source.
    cache: str = ""
    # Training sources (by name) whose samples get teacher targets; [] = every lmdb / folder source.
    sources: list[str] = field(default_factory=list)
    bag_weight: float = 0.0       # bag-of-characters KL (any teacher; CTC students)
    frame_weight: float = 0.0     # frame-wise KL (a teacher with the student's frames and charset)
    sequence_weight: float = 0.0  # the teacher's reading as a second label (every decoder)
    min_confidence: float = 0.9   # sequence targets: weakest teacher character at least this
    temperature: float = 1.0
    include_blank: bool = False   # bag KL: compare the blank share too (same frame rate only)


@dataclass
class EvalConfig:
    benchmarks: list[str] = field(default_factory=lambda: ["IIIT5K_3000", "SVT_647", "IC13_857",
                                                            "IC13_1015", "IC15_2077"])
    protocol: str = "36"
    batch_size: int = 64


@dataclass
class Config:
    """The whole, resolved configuration of a run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # Sections owned by later stages of the product (search, synthetic data); validated there.
    search: dict[str, Any] = field(default_factory=dict)
    synth: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable)."""
        return dataclasses.asdict(self)

    def dump(self, path: str | Path | None = None) -> str:
        """Return the resolved config as YAML, and write it to ``path`` if given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text


# ----------------------------------------------------------------------------------------------
# Loading and merging
# ----------------------------------------------------------------------------------------------


def _record(prov: Provenance, data: Any, prefix: str, source: str) -> None:
    if isinstance(data, Mapping):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            prov[key] = source
            _record(prov, v, key, source)


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base`` (mappings merge, other values replace).

    A mapping holding ``_delete_: true`` replaces the base mapping instead of merging into it (useful
    to swap a module: ``backbone: {_delete_: true, name: resnet}``).
    """
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and v.get("_delete_"):
            out[k] = {kk: copy.deepcopy(vv) for kk, vv in v.items() if kk != "_delete_"}
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping a YAML ``what`` file (config, protocol) holds, with one clear error for a missing file,
    invalid YAML or another top-level type."""
    if not path.is_file():
        raise ConfigError(f"{what} file not found: {path}{relative_note(path)}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} file must hold a mapping, got {type(data).__name__}")
    return data


def load_yaml_tree(path: str | Path, prov: Provenance | None = None,
                   _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load ``path`` with its ``_base_`` files merged in, recording where each key came from."""
    path = Path(path).resolve()
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"_base_ cycle: {chain}")
    data = read_yaml_mapping(path, "config")
    prov = {} if prov is None else prov
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for b in bases:
        merged = merge(merged, load_yaml_tree(path.parent / b, prov, (*_stack, path)))
    _record(prov, data, "", str(path))
    return merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (``["a", "b", "c"]``, parsed value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': bad key '{key}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    glued = _glued_key(value)
    if glued is not None:
        raise ConfigError(f"override '{text}': add a space after ':' ('{glued}' reads as one key with no value; "
                          f"write {{{glued.replace(':', ': ', 1)}}})")
    return key.split("."), value


def _glued_key(value: Any) -> str | None:
    """A mapping key like ``path:x`` with no value inside ``value``: YAML's reading of ``{path:x}``, which
    the user meant as ``{path: x}``."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and ":" in k and v is None:
                return k
            found = _glued_key(v)
            if found is not None:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _glued_key(v)
            if found is not None:
                return found
    return None


def _list_index(node: list, part: str, path: list[str], text: str) -> int:
    """The list position ``part`` names in override ``text`` (an error naming the valid range otherwise)."""
    where = ".".join(path[:-1])
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override '{text}': '{where}' is a list of {len(node)} entries; address one by its "
                          f"position 0..{len(node) - 1}, e.g. {where}.0.KEY=VALUE")
    return int(part)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str],
                    prov: Provenance | None = None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a copy of ``data``."""
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):  # a list entry by position: data.train.2.ratio=0.5
                node = node[_list_index(node, p, parts[:i + 1], text)]
                continue
            if not isinstance(node.get(p), dict | list):
                node[p] = {}
            node = node[p]
        if isinstance(node, list):
            node[_list_index(node, parts[-1], parts, text)] = value
        else:
            node[parts[-1]] = value
        if prov is not None:
            prov[".".join(parts)] = "command line"
            _record(prov, value, ".".join(parts), "command line")
    return out


# ----------------------------------------------------------------------------------------------
# Validation against the schema
# ----------------------------------------------------------------------------------------------
#: Range checks run after the types: (dotted key, lowest allowed value, what the value means).
RANGE_CHECKS: tuple[tuple[str, float, str], ...] = (
    ("train.steps", 1, "the number of optimiser steps"),
    ("train.batch_size", 1, "images per step"),
    ("train.threads", 0, "torch threads, 0 = torch's default"),
    ("train.val_every", 1, "steps between validations"),
    ("train.save_every", 1, "steps between checkpoints"),
    ("train.log_every", 1, "steps between log lines"),
    ("data.img_h", 1, "the input height in pixels"),
    ("data.img_w", 1, "the input width in pixels"),
    ("data.workers", 0, "data loader processes, 0 = load in the main process"),
    ("data.max_pixels", 0, "the largest image in pixels, 0 = no limit"),
    ("eval.batch_size", 1, "images per evaluation batch"),
)


def _check_ranges(cfg: Config, prov: Provenance) -> None:
    """Raise :class:`ConfigError` for a value outside its range (see :data:`RANGE_CHECKS`)."""
    for key, lowest, meaning in RANGE_CHECKS:
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value < lowest:
            raise ConfigError(f"{CONFIG_RULES.where(key, prov)} must be at least {lowest:g} ({meaning}), "
                              f"got {value!r}")


def from_dict(data: Mapping[str, Any], prov: Provenance | None = None) -> Config:
    """Validate a plain mapping against :class:`Config` (types, then the ranges of :data:`RANGE_CHECKS`)."""
    prov = prov or {}
    cfg = build_dataclass(Config, data, "", prov)
    _check_ranges(cfg, prov)
    return cfg


def load_protocol(path: str | Path, prov: Provenance | None = None) -> dict[str, Any]:
    """The settings of a protocol file (e.g. the ``best.yaml`` of ``tools/tune.py``): its own mapping, without
    its ``_base_`` (which makes the file runnable as a config of its own), recording where each key came from."""
    path = Path(path).resolve()
    data = read_yaml_mapping(path, "protocol")
    data.pop("_base_", None)
    if prov is not None:
        _record(prov, data, "", str(path))
    return data


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                protocol: str | Path | None = None) -> Config:
    """Load a YAML config (with ``_base_`` files) and apply command-line overrides.

    Args:
        path: the YAML file; ``None`` starts from the schema defaults.
        overrides: ``key.sub=value`` strings, applied in order.
        protocol: a protocol file (:func:`load_protocol`) merged over the config before the overrides.

    Raises:
        ConfigError: naming the bad key and the file that set it.
    """
    prov: Provenance = {}
    data = Config().to_dict()  # defaults first, so that `model.decoder.beam_width=5` extends the default spec
    if path is not None:
        data = merge(data, load_yaml_tree(path, prov))
    if protocol is not None:
        data = merge(data, load_protocol(protocol, prov))
    data = apply_overrides(data, overrides, prov)
    return from_dict(data, prov)
