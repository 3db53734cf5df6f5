"""The search space of a training-protocol search: dotted config keys in config trees with list parts,
Optuna parameters (``categorical``, ``int``, ``float``, ``logfloat``) and the checks run before any trial
(schema keys, value types and ranges, the benchmark guard). The file format is described in
:mod:`strkit.engine.tuning`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import importlib.util
import json
import logging
import typing
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
