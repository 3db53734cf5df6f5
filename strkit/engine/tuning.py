"""Training-protocol search on Optuna: a base config + a YAML search space, short proxy trials with pruning.

A *search space* file (``configs/tune/*.yaml``)::

    base: ../train/default_model.yaml     # the training config searched around (relative to this file)
    overrides: [data.workers=1]           # fixed settings, part of every protocol (and of best.yaml)
    proxy: [train.val_every=100]          # settings of the proxy trials only (not part of the protocol)
    space:
      train.optimizer.lr: {type: logfloat, low: 3.0e-4, high: 1.0e-2}
      train.batch_size: {type: categorical, choices: [16, 32, 64]}
      data.augment: {type: categorical, choices: [none, light, strong, randaug]}
      data.augment_options.m: {type: int, low: 1, high: 10, when: {data.augment: randaug}}
      curriculum_step: {type: int, low: 300, high: 1200, step: 100,
                        keys: [data.train.synth_clean.ratio_schedule.0.0, ...]}

Each entry of ``space`` is one Optuna parameter (``categorical``, ``int``, ``float`` or ``logfloat``) named by
its key; it sets the config key of that name, or every key of ``keys`` (tied settings). Keys are dotted config
keys; inside a list a part is an index or the ``name`` of a data source (``data.train.IC15_train.ratio``).
``when: {other: value or [values]}`` makes a parameter conditional on an earlier one. Every key is checked
against the config schema and every value (each choice, both ends of each range) against its type and range
before a trial runs; so is the benchmark guard: no benchmark test set may be training or validation data, in
the base config or in any choice of the space.

A *trial* trains the base config with the trial's protocol (the fixed overrides and the suggested values)
and the proxy settings, for a short budget (``train.max_minutes`` or ``train.steps``), optionally on a
subset of each training source (``data.train_subset``), in ``<out>/trials/<number>``. Its objective is the
best validation accuracy it saw (validation = the held-out part of the *training* data); each validation is
reported to the pruner through the trainer's ``on_validation`` observer (the resource is the training step
for step budgets, the elapsed second for time budgets), and a losing trial stops there.

The study lives in an Optuna RDB storage (SQLite in ``<out>/study.db`` by default, PostgreSQL or any other
RDB URL for many machines); trials of killed processes are failed by heartbeat and retried once, and
running the same command again continues until the requested number of finished trials.
:func:`write_report` writes the ready-to-run protocols, the trials table, parameter importances and the
optimisation history; :func:`fidelity_check` retrains chosen protocols at a multiple of the proxy budget and
gives the rank correlation of proxy and long scores.

Optuna is an optional dependency (``pip install 'strkit[tune]'``), imported only when a study runs.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import os
import random
import time
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from strkit.config import Config, ConfigError, apply_overrides, from_dict, load_yaml_tree, merge, parse_override
from strkit.data.benchmarks import BenchmarkLeakError, assert_not_benchmark
from strkit.registry import Registry

log = logging.getLogger("strkit")

TUNE_EXTRA = "pip install 'strkit[tune]'"
#: Config keys a search space may not set, and why.
RESERVED_KEYS = {
    "train.out_dir": "each trial writes into <out>/trials/<number>",
    "train.max_minutes": "the trial budget is --minutes",
    "train.steps": "the trial budget is --steps (or the base config's train.steps with --minutes)",
    "train.progress": "trials run without a progress bar",
    "data.train_subset": "the proxy subset is --subset",
    "data.benchmark_root": "the benchmark guard's root is not searchable",
}
#: Source kinds whose ``path`` is not a file or folder (not checked by the benchmark guard).
NON_FILE_KINDS = ("synth",)


class TuneError(ValueError):
    """A search space, study or storage problem the user can fix; the message names the thing."""


def import_optuna() -> Any:
    """The ``optuna`` module, or :class:`TuneError` saying how to install it."""
    try:
        return importlib.import_module("optuna")
    except ImportError:
        raise TuneError(f"protocol search needs Optuna, which is not installed: {TUNE_EXTRA}") from None


# ----------------------------------------------------------------------------------------------
# Config trees with list parts
# ----------------------------------------------------------------------------------------------
def _list_index(items: list, part: str, key: str) -> int:
    """The element of ``items`` that ``part`` names: an index, or the ``name`` of a mapping in the list."""
    if part.isdigit():
        if int(part) >= len(items):
            raise TuneError(f"config key '{key}': index {part} is past the end of a list of {len(items)}")
        return int(part)
    names = [item.get("name") for item in items if isinstance(item, Mapping)]
    if part in names:
        return names.index(part)
    raise TuneError(f"config key '{key}': no list element named '{part}' (names: "
                    f"{', '.join(str(n) for n in names if n) or 'none'}; or use an index)")


def get_key(tree: Any, key: str) -> Any:
    """The value at the dotted ``key`` of a config tree (list parts: index or source name)."""
    node = tree
    for part in key.split("."):
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            raise TuneError(f"config key '{key}': '{part}' is not set in the config")
    return node


def set_key(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of a config tree in place (missing mappings are created; list parts: index
    or source name)."""
    parts = key.split(".")
    node: Any = tree
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
        else:
            if not isinstance(node.get(part), dict | list):
                node[part] = {}
            node = node[part]
    if isinstance(node, list):
        node[_list_index(node, parts[-1], key)] = value
    else:
        node[parts[-1]] = value


def protocol_path(tree: Mapping[str, Any], key: str) -> str:
    """The part of ``key`` above its first list (``data.train.IC15_train.ratio`` -> ``data.train``): a
    protocol file sets that whole list, since merging replaces lists."""
    node: Any = tree
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, list):
            return ".".join(parts[:i])
        node = node.get(part) if isinstance(node, Mapping) else None
    return key


def check_schema_key(key: str, tree: Mapping[str, Any]) -> None:
    """Refuse a dotted key that the config schema does not have (``tree``: the resolved base config).

    Raises:
        TuneError: naming the key, the unknown part and the keys known there.
    """
    tp: Any = Config
    node: Any = tree
    parts = key.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the config"
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp)
            if part not in hints:
                raise TuneError(f"unknown config key '{key}': {where} has no key '{part}' "
                                f"(known: {', '.join(hints)})")
            tp, node = hints[part], node.get(part) if isinstance(node, Mapping) else None
        elif origin is list:
            if not isinstance(node, list):
                raise TuneError(f"config key '{key}': {where} is not a list in the base config")
            node = node[_list_index(node, part, key)]
            tp = (typing.get_args(tp) or (Any,))[0]
        elif origin is dict or tp is Any:
            return  # free-form below here: module keyword arguments, preset options
        else:
            raise TuneError(f"config key '{key}': {where} is a single value, it has no key '{part}'")


# ----------------------------------------------------------------------------------------------
# Search space
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched parameter.

    Attributes:
        name: the Optuna parameter name (the ``space`` key).
        kind: ``categorical``, ``int``, ``float`` or ``logfloat`` (see :data:`PARAM_TYPES`).
        keys: the config keys it sets (default: its name).
        choices: the values of a categorical parameter.
        low, high, step: the range of a numeric one (``step`` optional).
        when: ``{earlier parameter: allowed values}``: suggested only when those hold.
    """

    name: str
    kind: str
    keys: tuple[str, ...]
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def candidates(self) -> list[Any]:
        """Values to check before any trial: every choice, or both ends of the range."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether the ``when`` conditions hold for the values suggested so far."""
        return all(name in values and values[name] in allowed for name, allowed in self.when)


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _suggest_categorical(trial: Any, p: Param) -> Any:
    if all(_scalar(c) for c in p.choices):
        return trial.suggest_categorical(p.name, list(p.choices))
    # Optuna stores only scalars: lists/mappings are suggested as their JSON text.
    return json.loads(trial.suggest_categorical(p.name, [json.dumps(c) for c in p.choices]))


def _check_categorical(p: Param, where: str) -> None:
    if not p.choices:
        raise TuneError(f"{where}: a categorical parameter needs a non-empty list 'choices'")


def _check_range(p: Param, where: str, integer: bool = False, log_scale: bool = False) -> None:
    for end in ("low", "high"):
        value = getattr(p, end)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float) or \
                (integer and not float(value).is_integer()):
            raise TuneError(f"{where}: '{end}' must be {'an integer' if integer else 'a number'}, got {value!r}")
    assert p.low is not None and p.high is not None
    if not p.low < p.high:
        raise TuneError(f"{where}: bad range: low ({p.low:g}) must be below high ({p.high:g})")
    if log_scale and p.low <= 0:
        raise TuneError(f"{where}: bad range: a logfloat range must be above 0, got low={p.low:g}")
    if p.step is not None:
        if log_scale:
            raise TuneError(f"{where}: a logfloat parameter takes no 'step'")
        if isinstance(p.step, bool) or not isinstance(p.step, int | float) or p.step <= 0 or \
                (integer and not float(p.step).is_integer()) or p.step > p.high - p.low:
            raise TuneError(f"{where}: bad step {p.step!r}: must be > 0, at most high - low"
                            + (", and an integer" if integer else ""))


@dataclass(frozen=True)
class ParamType:
    """How to check and suggest one kind of parameter."""

    check: Callable[[Param, str], None]
    suggest: Callable[[Any, Param], Any]


PARAM_TYPES: Registry[ParamType] = Registry("search-space parameter type")
PARAM_TYPES.register("categorical")(lambda: ParamType(_check_categorical, _suggest_categorical))
PARAM_TYPES.register("int")(lambda: ParamType(
    lambda p, w: _check_range(p, w, integer=True),
    lambda t, p: t.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1))))
PARAM_TYPES.register("float")(lambda: ParamType(
    _check_range, lambda t, p: t.suggest_float(p.name, p.low, p.high, step=p.step)))
PARAM_TYPES.register("logfloat")(lambda: ParamType(
    lambda p, w: _check_range(p, w, log_scale=True), lambda t, p: t.suggest_float(p.name, p.low, p.high, log=True)))

_PARAM_FIELDS = {"type", "choices", "low", "high", "step", "keys", "when"}


def _parse_param(name: str, spec: Any, earlier: Mapping[str, Param], where: str) -> Param:
    where = f"{where}: space.{name}"
    if not isinstance(spec, Mapping):
        raise TuneError(f"{where}: expected a mapping like {{type: float, low: 0.1, high: 1}}, got {spec!r}")
    unknown = set(spec) - _PARAM_FIELDS
    if unknown:
        raise TuneError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))} "
                        f"(known: {', '.join(sorted(_PARAM_FIELDS))})")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise TuneError(f"{where}: bad type {kind!r}: use one of {', '.join(PARAM_TYPES.names())}")
    keys = spec.get("keys", [name])
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
        raise TuneError(f"{where}: 'keys' must be a non-empty list of config keys")
    choices = spec.get("choices", [])
    if not isinstance(choices, list):
        raise TuneError(f"{where}: 'choices' must be a list, got {choices!r}")
    when = spec.get("when", {})
    if not isinstance(when, Mapping):
        raise TuneError(f"{where}: 'when' must be a mapping {{earlier parameter: value or [values]}}")
    conditions = []
    for other, allowed in when.items():
        if other not in earlier:
            raise TuneError(f"{where}: 'when' names '{other}', which is not a parameter listed before it")
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        conditions.append((str(other), allowed))
    param = Param(name=str(name), kind=kind, keys=tuple(keys), choices=tuple(choices), low=spec.get("low"),
                  high=spec.get("high"), step=spec.get("step"), when=tuple(conditions))
    PARAM_TYPES.get(kind)().check(param, where)
    return param


def config_tree(base: str | Path) -> dict[str, Any]:
    """The base config file resolved into a plain tree (schema defaults + ``_base_`` files)."""
    return merge(Config().to_dict(), load_yaml_tree(base))


def build_config(base: str | Path, protocol: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """The config of a run: ``base``, the ``protocol`` mapping merged over it, then ``overrides`` (the
    same steps as ``tools/train.py BASE --protocol FILE OVERRIDES``)."""
    return from_dict(apply_overrides(merge(config_tree(base), protocol), overrides))


@dataclass
class SearchSpace:
    """A parsed, checked search-space file (see the module docstring)."""

    path: Path
    base: Path
    overrides: list[str]
    proxy: list[str]
    params: list[Param]
    fingerprint: str = ""
    base_tree: dict[str, Any] = field(default_factory=dict, repr=False)

    def protocol(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The protocol of suggested ``values`` (parameter name -> value): the fixed overrides and the values
        as a mapping to merge over the base config; a key inside a list sets the whole list."""
        resolved = apply_overrides(self.base_tree, self.overrides)
        out = apply_overrides({}, self.overrides)
        for p in self.params:
            if p.name in values:
                for key in p.keys:
                    set_key(resolved, key, copy.deepcopy(values[p.name]))
        for p in self.params:
            if p.name in values:
                for key in p.keys:
                    top = protocol_path(self.base_tree, key)
                    set_key(out, top, copy.deepcopy(get_key(resolved, top)))
        return out

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` for a value of every active parameter (in file order)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = PARAM_TYPES.get(p.kind)().suggest(trial, p)
        return values


def check_no_benchmark(cfg: Config, where: str) -> None:
    """The benchmark guard, before any trial: no training or validation source of ``cfg`` may be a benchmark
    set, by kind, name or place (the data layer checks content again when a trial reads the data).

    Raises:
        BenchmarkLeakError: naming ``where`` and the source.
    """
    for purpose, sources in (("training", cfg.data.train), ("validation", cfg.data.val)):
        for src in sources:
            if src.kind == "benchmark":
                raise BenchmarkLeakError(f"{where}: {purpose} source '{src.name or src.path}' has kind "
                                         f"'benchmark': benchmarks are for evaluation only, never protocol-search "
                                         f"data (the objective is the held-out part of the training data)")
            if src.path and src.kind not in NON_FILE_KINDS:
                try:
                    assert_not_benchmark(src.path, cfg.data.benchmark_root)
                except BenchmarkLeakError as exc:
                    raise BenchmarkLeakError(f"{where}: {purpose} source: {exc}") from None


def _has_validation(cfg: Config) -> bool:
    d = cfg.data
    return bool(d.val) or any((d.val_fraction if s.val_fraction is None else s.val_fraction) > 0
                              for s in d.train if s.kind not in NON_FILE_KINDS)


def load_space(path: str | Path, extra_overrides: Sequence[str] = ()) -> SearchSpace:
    """Read and check a search-space file; ``extra_overrides`` are appended to its fixed ``overrides``.

    Every key is checked against the schema, every candidate value (each choice, both ends of each range)
    against its type and range, and the base config and each data choice against the benchmark guard.

    Raises:
        TuneError: a malformed file, unknown key, bad range or type, reserved key, or no validation data.
        ConfigError: a candidate value the config refuses (naming the key).
        BenchmarkLeakError: a benchmark set as training or validation data.
    """
    path = Path(path)
    if not path.is_file():
        raise TuneError(f"search space not found: {path}")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise TuneError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise TuneError(f"{path}: a search space must be a mapping with base, overrides, proxy and space")
    unknown = set(data) - {"base", "overrides", "proxy", "space"}
    if unknown:
        raise TuneError(f"{path}: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))} "
                        f"(known: base, overrides, proxy, space)")
    if not isinstance(data.get("base"), str):
        raise TuneError(f"{path}: 'base' must name the training config searched around")
    base = (path.parent / data["base"]).resolve()
    lists = {}
    for name in ("overrides", "proxy"):
        items = data.get(name) or []
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise TuneError(f"{path}: '{name}' must be a list of key=value strings")
        lists[name] = list(items)
    lists["overrides"] += list(extra_overrides)
    space = data.get("space")
    if not isinstance(space, Mapping) or not space:
        raise TuneError(f"{path}: 'space' must map parameter names to {{type: ..., ...}}")
    params: dict[str, Param] = {}
    for name, spec in space.items():
        params[str(name)] = _parse_param(str(name), spec, params, str(path))
    try:
        tree = config_tree(base)
    except ConfigError as exc:
        raise TuneError(f"{path}: base config: {exc}") from None
    proxy_keys = {".".join(parse_override(o)[0]) for o in lists["proxy"]}  # applied after the searched values
    seen: dict[str, str] = {}
    for p in params.values():
        for key in p.keys:
            for reserved, why in RESERVED_KEYS.items():
                if key == reserved or key.startswith(reserved + "."):
                    raise TuneError(f"{path}: space.{p.name}: '{key}' cannot be searched ({why})")
            if key in seen:
                raise TuneError(f"{path}: config key '{key}' is set by two parameters ({seen[key]}, {p.name})")
            if any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in proxy_keys):
                raise TuneError(f"{path}: config key '{key}' is both searched (space.{p.name}) and set by 'proxy'")
            seen[key] = p.name
            check_schema_key(key, tree)
    result = SearchSpace(path=path, base=base, overrides=lists["overrides"], proxy=lists["proxy"],
                         params=list(params.values()), base_tree=tree,
                         fingerprint=hashlib.sha256(json.dumps([text, lists["overrides"]]).encode()).hexdigest()[:16])
    _check_candidates(result)
    return result


def _check_candidates(space: SearchSpace) -> None:
    """Build the config of the base protocol and of each candidate value alone (types, ranges, guard)."""
    where = str(space.path)
    try:
        base_cfg = build_config(space.base, space.protocol({}), space.proxy)
    except ConfigError as exc:
        raise ConfigError(f"{where}: base config + overrides + proxy: {exc}") from None
    check_no_benchmark(base_cfg, f"{where}: the base config")
    if not _has_validation(base_cfg):
        raise TuneError(f"{where}: the study needs validation data: set data.val_fraction > 0 so that part of the "
                        f"training sources is held out (never a benchmark test set)")
    for p in space.params:
        for value in p.candidates():
            if p.kind == "int":
                value = int(value)
            try:
                cfg = build_config(space.base, space.protocol({p.name: value}), space.proxy)
            except (ConfigError, TuneError) as exc:
                raise ConfigError(f"{where}: space.{p.name}={value!r}: {exc}") from None
            if any(k.startswith("data.") for k in p.keys):
                check_no_benchmark(cfg, f"{where}: space.{p.name}={value!r}")


# ----------------------------------------------------------------------------------------------
# Samplers, pruners, storage
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchOptions:
    """How the study searches: sampler and pruner names and their settings."""

    sampler: str = "tpe"
    pruner: str = "asha"
    seed: int = 0
    population: int = 10          # nsga2: individuals per generation
    min_resource: int = 0         # asha / hyperband: 0 = Optuna's automatic choice
    reduction_factor: int = 3


SAMPLERS: Registry[Any] = Registry("sampler")
PRUNERS: Registry[Any] = Registry("pruner")


@SAMPLERS.register("tpe")
def _tpe(optuna: Any, o: SearchOptions) -> Any:
    """Tree-structured Parzen estimator (Optuna's default; handles conditional parameters)."""
    return optuna.samplers.TPESampler(seed=o.seed)


@SAMPLERS.register("nsga2")
def _nsga2(optuna: Any, o: SearchOptions) -> Any:
    """NSGA-II, an evolutionary search (crossover and mutation of the best protocols)."""
    return optuna.samplers.NSGAIISampler(seed=o.seed, population_size=o.population)


@SAMPLERS.register("cmaes")
def _cmaes(optuna: Any, o: SearchOptions) -> Any:
    """CMA-ES, an evolution strategy over the numeric parameters (categorical ones: sampled independently)."""
    if importlib.util.find_spec("cmaes") is None:
        raise TuneError("--sampler cmaes needs the cmaes package: pip install cmaes")
    return optuna.samplers.CmaEsSampler(seed=o.seed, warn_independent_sampling=False)


@PRUNERS.register("asha")
def _asha(optuna: Any, o: SearchOptions) -> Any:
    """Asynchronous successive halving: at each rung only the best 1/reduction_factor go on."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=o.min_resource or "auto",
                                                  reduction_factor=o.reduction_factor)


@PRUNERS.register("hyperband")
def _hyperband(optuna: Any, o: SearchOptions) -> Any:
    """Hyperband: several successive-halving brackets with different minimum budgets."""
    return optuna.pruners.HyperbandPruner(min_resource=o.min_resource or 1, reduction_factor=o.reduction_factor)


@PRUNERS.register("median")
def _median(optuna: Any, o: SearchOptions) -> Any:
    """Stop a trial below the median of the earlier trials at the same resource."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=o.min_resource)


@PRUNERS.register("none")
def _nop(optuna: Any, o: SearchOptions) -> Any:
    """No pruning: every trial uses its whole budget."""
    return optuna.pruners.NopPruner()


def default_storage(out: str | Path) -> str:
    """``sqlite:///<out>/study.db``: the study's default storage."""
    return f"sqlite:///{Path(out).absolute() / 'study.db'}"


def open_storage(url: str) -> Any:
    """An Optuna RDB storage for ``url`` (SQLite, PostgreSQL, MySQL...) with heartbeats (every 30 s): a trial
    whose heartbeat is 90 s old (its process was killed) is failed by the next trial to start, and retried once."""
    optuna = import_optuna()
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    storages = optuna.storages
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if "heartbeat_stale_trial_callback" in inspect.signature(storages.RDBStorage).parameters:  # >= 4.9
                retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
            else:
                retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=1)}
            return storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=90,
                                       **retry)
    except (ImportError, ModuleNotFoundError) as exc:
        raise TuneError(f"storage {url}: a database driver is missing ({exc}); e.g. pip install psycopg2-binary "
                        f"for postgresql://") from None
    except Exception as exc:  # sqlalchemy's errors: bad URL, unreachable server
        raise TuneError(f"cannot open the study storage {url}: {str(exc).splitlines()[0]}") from None


def load_study(storage: str, study_name: str | None = None) -> Any:
    """An existing study of ``storage`` (the only one there, when ``study_name`` is not given)."""
    optuna = import_optuna()
    store = open_storage(storage)
    names = [s.study_name for s in store.get_all_studies()]
    if study_name is None:
        if len(names) != 1:
            raise TuneError(f"{storage} holds {len(names)} studies ({', '.join(names) or 'none'}): "
                            f"name one with --study-name")
        study_name = names[0]
    if study_name not in names:
        raise TuneError(f"no study '{study_name}' in {storage} (studies there: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=study_name, storage=store)


# ----------------------------------------------------------------------------------------------
# Trials
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """A proxy trial's budget: wall-clock minutes (``train.max_minutes``) or optimiser steps."""

    minutes: float = 0.0
    steps: int = 0

    def __post_init__(self) -> None:
        if (self.minutes > 0) == (self.steps > 0):
            raise TuneError("give the trial budget as minutes or as steps (one of them, > 0)")

    def scaled(self, factor: float) -> Budget:
        return Budget(self.minutes * factor, int(round(self.steps * factor)))

    def overrides(self) -> list[str]:
        if self.minutes > 0:
            return [f"train.max_minutes={self.minutes:g}"]
        return [f"train.steps={self.steps}", "train.max_minutes=0"]

    def describe(self) -> str:
        return f"{self.minutes:g} min" if self.minutes > 0 else f"{self.steps} steps"


def run_overrides(budget: Budget, out_dir: Path, subset: float, threads: int) -> list[str]:
    """The settings of one proxy (or fidelity) run: budget, folder, subset, threads, no progress bar."""
    out = [*budget.overrides(), f"train.out_dir={out_dir}", "train.progress=false"]
    if subset < 1.0:
        out.append(f"data.train_subset={subset:g}")
    if threads > 0:
        out.append(f"train.threads={threads}")
    return out


class PruningReporter:
    """The trainer's ``on_validation`` observer for one trial: reports the validation accuracy to the
    trial at the training step (step budgets) or the elapsed second (time budgets), and stops the run
    (:class:`strkit.engine.loop.StopTraining`) when the pruner says so."""

    def __init__(self, trial: Any, by_time: bool) -> None:
        self.trial = trial
        self.by_time = by_time
        self.t0 = time.perf_counter()
        self.last_resource = 0
        self.pruned_at: int | None = None

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        from strkit.engine.loop import StopTraining

        resource = int(time.perf_counter() - self.t0) if self.by_time else step
        resource = max(resource, self.last_resource + 1)
        self.last_resource = resource
        self.trial.report(float(metrics["val_accuracy"]), resource)
        if self.trial.should_prune():
            self.pruned_at = resource
            raise StopTraining(f"pruned by the study's pruner at {'second' if self.by_time else 'step'} {resource}")


@dataclass(frozen=True)
class StudyJob:
    """Everything a worker process needs to work on a study (plain values, picklable)."""

    space: str
    extra_overrides: tuple[str, ...]
    out: str
    storage: str
    study_name: str
    budget: Budget
    trials: int
    subset: float = 1.0
    threads: int = 0
    options: SearchOptions = SearchOptions()


class Objective:
    """Optuna objective: train one proxy trial, return its best validation accuracy."""

    def __init__(self, space: SearchSpace, job: StudyJob) -> None:
        self.space = space
        self.job = job

    def __call__(self, trial: Any) -> float:
        optuna = import_optuna()
        from strkit.engine.trainer import Trainer

        values = self.space.suggest(trial)
        protocol = self.space.protocol(values)
        trial.set_user_attr("protocol", protocol)
        out_dir = Path(self.job.out) / "trials" / str(trial.number)
        cfg = build_config(self.space.base, protocol,
                           [*self.space.proxy, *run_overrides(self.job.budget, out_dir, self.job.subset,
                                                              self.job.threads)])
        reporter = PruningReporter(trial, by_time=self.job.budget.minutes > 0)
        # The folder belongs to this trial number of this study (run_study refuses a new study over old trials).
        trainer = Trainer(cfg, overwrite=True, on_validation=reporter)
        trainer.fit()
        trial.set_user_attr("steps", trainer.step)
        if "val_accuracy" not in trainer.best:
            raise TuneError(f"trial {trial.number}: the run validated nothing (no validation data?)")
        trial.set_user_attr("best_step", int(trainer.best["step"]))
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at {reporter.pruned_at}")
        return float(trainer.best["val_accuracy"])


FINISHED = ("COMPLETE", "PRUNED")


def finished_trials(study: Any) -> int:
    """Trials that count towards ``--trials``: complete or pruned (failed ones are retried)."""
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def create_study(job: StudyJob, space: SearchSpace, worker: int = 0) -> Any:
    """Create the study of ``job`` or open it when it exists (a rerun continues it); refuses a study made
    from a different search space, or a new study over the trial folders of an old one."""
    optuna = import_optuna()
    o = job.options
    sampler = SAMPLERS.get(o.sampler)(optuna, o)  # (checks that the sampler is usable before the study is made)
    study = optuna.create_study(storage=open_storage(job.storage), study_name=job.study_name, sampler=sampler,
                                pruner=PRUNERS.get(o.pruner)(optuna, o), direction="maximize", load_if_exists=True)
    # A seed of its own per worker and per (re)start, so that a continued study does not repeat its first trials.
    seed = o.seed + 100_003 * worker + len(study.get_trials(deepcopy=False))
    study.sampler = SAMPLERS.get(o.sampler)(optuna, dataclasses.replace(o, seed=seed))
    attrs = study.user_attrs
    if "space_fingerprint" not in attrs:
        trials_dir = Path(job.out) / "trials"
        if not study.get_trials(deepcopy=False) and trials_dir.is_dir() and any(trials_dir.iterdir()):
            raise TuneError(f"{trials_dir} holds the trials of another study: use another --out, or delete it")
        for key, value in {"space_fingerprint": space.fingerprint, "space": str(space.path.resolve()),
                           "base": str(space.base), "proxy": space.proxy, "overrides": space.overrides,
                           "budget": dataclasses.asdict(job.budget), "subset": job.subset}.items():
            study.set_user_attr(key, value)
    elif attrs["space_fingerprint"] != space.fingerprint:
        raise TuneError(f"study '{job.study_name}' in {job.storage} was made with another search space or other "
                        f"overrides ({attrs.get('space')}): use another --out / --study-name")
    elif attrs.get("budget") != dataclasses.asdict(job.budget) or attrs.get("subset") != job.subset:
        raise TuneError(f"study '{job.study_name}' in {job.storage} runs trials of "
                        f"{Budget(**attrs['budget']).describe()} on subset {attrs.get('subset'):g}, not "
                        f"{job.budget.describe()} on {job.subset:g}: rerun with its budget, or use another --out")
    return study


def run_worker(job: StudyJob, worker: int = 0, pruner: Any = None) -> None:
    """Work on the study until it holds ``job.trials`` finished trials (one process).

    Args:
        pruner: an Optuna pruner object to use instead of ``job.options.pruner`` (tests, library use).
    """
    optuna = import_optuna()
    space = load_space(job.space, job.extra_overrides)
    study = create_study(job, space, worker)
    if pruner is not None:
        study.pruner = pruner
    if finished_trials(study) >= job.trials:
        return
    stop = optuna.study.MaxTrialsCallback(job.trials, states=tuple(getattr(optuna.trial.TrialState, s)
                                                                    for s in FINISHED))
    failures = FailureStreak()
    study.optimize(Objective(space, job), callbacks=[stop, failures], catch=(RuntimeError,), gc_after_trial=True)
    if failures.count >= failures.limit:
        raise TuneError(f"{failures.count} trials in a row failed (see the messages above); the study stopped. "
                        f"Fix the cause and rerun the same command to continue")


class FailureStreak:
    """Optuna callback: stop the study after ``limit`` failed trials in a row (a broken setup, not a bad
    protocol), instead of sampling failing trials forever."""

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.count = 0

    def __call__(self, study: Any, trial: Any) -> None:
        if trial.state.name != "FAIL":
            self.count = 0
            return
        self.count += 1
        if self.count >= self.limit:
            study.stop()


def _worker_main(job: StudyJob, worker: int) -> None:
    """Entry point of a spawned worker process: strkit's messages to stderr, then :func:`run_worker`."""
    logger = logging.getLogger("strkit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s worker {worker} %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    run_worker(job, worker)


def run_study(job: StudyJob, jobs: int = 1) -> Any:
    """Run the study with ``jobs`` worker processes on this machine (threads split between them; one
    worker runs in this process) and return it. Killed and rerun, it continues where it was."""
    space = load_space(job.space, job.extra_overrides)  # every check before any work
    create_study(job, space)
    if jobs <= 1:
        run_worker(job)
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(job, i), name=f"strkit-tune-{i}") for i in range(jobs)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join()
        failed = [p.name for p in procs if p.exitcode]
        if failed:
            raise TuneError(f"worker process(es) {', '.join(failed)} failed (see their messages above); rerun "
                            f"the same command to continue the study")
    return load_study(job.storage, job.study_name)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------
def protocol_yaml(study: Any, trial: Any, out: Path, note: str) -> str:
    """A ready-to-run protocol file of ``trial``: ``_base_`` (the base config, relative to ``out``) and the
    protocol, so that both ``tools/train.py BASE --protocol FILE`` and ``tools/train.py FILE`` run it."""
    base = os.path.relpath(study.user_attrs["base"], Path(out).absolute())
    header = (f"# {note}: trial {trial.number} of study '{study.study_name}', proxy validation accuracy "
              f"{trial.value:.2f} ({Budget(**study.user_attrs['budget']).describe()} per trial)\n"
              f"# run: tools/train.py {study.user_attrs['base']} --protocol THIS_FILE   (or: tools/train.py "
              f"THIS_FILE)\n")
    body = {"_base_": base, **trial.user_attrs.get("protocol", {})}
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)


def trial_rows(study: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """The trials table: number, state, value, steps, seconds and every parameter."""
    trials = study.get_trials(deepcopy=False)
    names = list(dict.fromkeys(n for t in trials for n in t.params))
    rows = []
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else math.nan
        row = {"number": t.number, "state": t.state.name,
               "value": t.value if t.value is not None else (
                   t.intermediate_values[t.last_step] if t.last_step is not None else math.nan),
               "steps": t.user_attrs.get("steps", ""), "seconds": round(seconds, 1)}
        row.update({n: t.params.get(n, "") for n in names})
        rows.append(row)
    return ["number", "state", "value", "steps", "seconds", *names], rows


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def param_importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances ({} when there are too few complete trials to compute them)."""
    optuna = import_optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():  # "few trials" notes: the report says how many trials there are
            warnings.simplefilter("ignore", UserWarning)
            return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        log.warning("parameter importances not computed: %s", exc)
        return {}


def plot_history(study: Any, path: Path) -> None:
    """Optimisation history (PNG, matplotlib): each trial's value (pruned: its last reported value) and the
    best so far."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    _, rows = trial_rows(study)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for state, style in (("COMPLETE", dict(marker="o", color="tab:blue")),
                         ("PRUNED", dict(marker="x", color="tab:gray"))):
        pts = [(r["number"], r["value"]) for r in rows if r["state"] == state and not math.isnan(r["value"])]
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=state.lower(), **style)
    best, xs, ys = -math.inf, [], []
    for r in rows:
        if r["state"] == "COMPLETE":
            best = max(best, r["value"])
        if best > -math.inf:
            xs.append(r["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"study {study.study_name}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def write_report(study: Any, out: str | Path, top: int = 5) -> dict[str, Path]:
    """Write the study's report into ``out``: ``best.yaml`` and ``top/<rank>-trial<n>.yaml`` (ready-to-run
    protocols), ``trials.csv``, ``report.md`` (trials table, importances, cost) and ``history.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    columns, rows = trial_rows(study)
    files["trials.csv"] = out / "trials.csv"
    with files["trials.csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    complete = sorted((t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"),
                      key=lambda t: -t.value)
    if complete:
        files["best.yaml"] = out / "best.yaml"
        files["best.yaml"].write_text(protocol_yaml(study, complete[0], out, "best protocol"))
        (out / "top").mkdir(exist_ok=True)
        for rank, t in enumerate(complete[:top], 1):
            (out / "top" / f"{rank}-trial{t.number}.yaml").write_text(
                protocol_yaml(study, t, out / "top", f"protocol ranked {rank}"))
    importances = param_importances(study)
    files["history.png"] = out / "history.png"
    plot_history(study, files["history.png"])
    states = {s: sum(r["state"] == s for r in rows) for s in dict.fromkeys(r["state"] for r in rows)}
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() / 60 if starts and ends else 0.0
    attrs = study.user_attrs
    lines = [f"# Protocol search: study `{study.study_name}`", "",
             f"- search space: `{attrs.get('space')}`; base config: `{attrs.get('base')}`",
             f"- proxy budget: {Budget(**attrs['budget']).describe()} per trial, subset {attrs.get('subset', 1.0):g}",
             f"- trials: {len(rows)} ({', '.join(f'{n} {s.lower()}' for s, n in states.items())}); "
             f"wall time {wall:.1f} min (first start to last end)",
             f"- best: trial {complete[0].number}, validation accuracy {complete[0].value:.2f} -> `best.yaml`"
             if complete else "- best: no complete trial yet", "",
             "## Parameter importances", ""]
    if importances:
        lines += ["| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in importances.items()]
    else:
        lines.append("(not computed: too few complete trials)")
    lines += ["", "## Trials", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    lines += ["", "![optimisation history](history.png)", ""]
    files["report.md"] = out / "report.md"
    files["report.md"].write_text("\n".join(lines))
    return files


# ----------------------------------------------------------------------------------------------
# Proxy fidelity
# ----------------------------------------------------------------------------------------------
def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 2 pairs or a constant side."""
    if len(a) != len(b):
        raise ValueError("spearman: sequences of different lengths")
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


@dataclass
class FidelityResult:
    """Proxy vs long scores of the chosen protocols and their Spearman rank correlation."""

    rows: list[dict[str, Any]]
    rho: float
    factor: float

    def table(self) -> str:
        lines = [f"| trial | chosen as | proxy accuracy | accuracy at {self.factor:g}x budget |", "|---|---|---|---|"]
        lines += [f"| {r['trial']} | {r['chosen']} | {r['proxy']:.2f} | {r['long']:.2f} |" for r in self.rows]
        return "\n".join(lines) + f"\n\nSpearman rank correlation (proxy vs {self.factor:g}x): {self.rho:.3f}\n"


def fidelity_check(study: Any, out: str | Path, factor: float = 4.0, top: int = 5, random_count: int = 2,
                   seed: int = 0, threads: int = 0) -> FidelityResult:
    """Retrain the ``top`` best and ``random_count`` random other complete protocols at ``factor`` times the
    proxy budget (in ``<out>/fidelity/x<factor>/<trial>``; finished ones are reused, so a rerun continues)
    and compare the rankings. Writes ``fidelity.csv`` and ``fidelity.md`` into ``out``."""
    from strkit.engine.trainer import Trainer

    complete = sorted((t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"),
                      key=lambda t: -t.value)
    if len(complete) < 2:
        raise TuneError(f"study '{study.study_name}' has {len(complete)} complete trial(s): the fidelity check "
                        f"needs at least 2")
    chosen = [(t, "top") for t in complete[:top]]
    rest = complete[top:]
    chosen += [(t, "random") for t in random.Random(seed).sample(rest, min(random_count, len(rest)))]
    attrs = study.user_attrs
    budget = Budget(**attrs["budget"]).scaled(factor)
    rows = []
    for t, why in chosen:
        run_dir = Path(out) / "fidelity" / f"x{factor:g}" / str(t.number)
        result = run_dir / "fidelity.json"
        if result.is_file():
            long = json.loads(result.read_text())["val_accuracy"]
        else:
            cfg = build_config(attrs["base"], t.user_attrs["protocol"],
                               [*attrs["proxy"], *run_overrides(budget, run_dir, attrs.get("subset", 1.0), threads)])
            log.info("fidelity: trial %d (%s) at %s", t.number, why, budget.describe())
            trainer = Trainer(cfg, overwrite=True)
            trainer.fit()
            long = float(trainer.best.get("val_accuracy", math.nan))
            result.write_text(json.dumps({"trial": t.number, "val_accuracy": long, "budget": budget.describe()}))
        rows.append({"trial": t.number, "chosen": why, "proxy": float(t.value), "long": float(long)})
    res = FidelityResult(rows, spearman([r["proxy"] for r in rows], [r["long"] for r in rows]), factor)
    with (Path(out) / "fidelity.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["trial", "chosen", "proxy", "long"])
        writer.writeheader()
        writer.writerows(rows)
    (Path(out) / "fidelity.md").write_text(res.table())
    return res
