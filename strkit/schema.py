"""The one schema validator of strkit's configs: a plain mapping -> a tree of typed dataclasses.

The training, search and synth configs are dataclass trees validated by :func:`build_dataclass`: an
unknown key names the known ones (and the closest match), a value of the wrong type names the dotted
key and, for the training config, the file or ``command line`` that set it (the *provenance*). The
configs differ only in how strictly a scalar is read and how their messages name a key, which
:class:`SchemaRules` states:

- :data:`CONFIG_RULES` (train and search configs): numbers given as strings (YAML reads ``1e-3`` as a
  string) are read as floats, numbers as strings; mapping values are not typed; keys are named
  ``'train.steps' (set in FILE)``.
- :data:`SYNTH_RULES` (synth configs): scalars must have their exact type; mappings are names to
  weights (``dict[str, float]``); keys are named ``synth config 'text.max_len'``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Provenance = dict[str, str]  # dotted key -> file (or "command line") that set it last


class ConfigError(ValueError):
    """A config file, key or value is invalid. The message names the key and where it was set."""


@dataclass(frozen=True)
class SchemaRules:
    """How one kind of config is read.

    Attributes:
        label: what the messages call the config (``config``, ``synth config``).
        label_keys: name a key as ``<label> '<key>'`` (else ``'<key>' (set in <file>)``).
        lenient_scalars: read numbers given as strings as floats, and numbers as strings.
        typed_mappings: check the values of a ``dict[K, V]`` field against ``V``.
        mapping_note: what the message says a mapping field must be.
    """

    label: str = "config"
    label_keys: bool = False
    lenient_scalars: bool = True
    typed_mappings: bool = False
    mapping_note: str = "a mapping"

    def where(self, key: str, prov: Provenance) -> str:
        """The key as messages name it."""
        if self.label_keys:
            return f"{self.label} '{key}'"
        src = prov.get(key)
        return f"'{key}' (set in {src})" if src else f"'{key}'"

    def unknown(self, key: str, prov: Provenance) -> str:
        """The start of the message about an unknown key."""
        if self.label_keys:
            return f"unknown {self.label} key '{key}'"
        return f"unknown {self.label} key {self.where(key, prov)}"


CONFIG_RULES = SchemaRules()
SYNTH_RULES = SchemaRules(label="synth config", label_keys=True, lenient_scalars=False, typed_mappings=True,
                          mapping_note="a mapping of names to weights")


def type_name(tp: Any) -> str:
    """A schema type as messages show it (``int``, ``list[str]`` ...)."""
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str, prov: Provenance, rules: SchemaRules = CONFIG_RULES) -> Any:
    """``value`` checked against (and converted to) the schema type ``tp``.

    Raises:
        ConfigError: naming ``key`` (and where it was set) and the expected type.
    """
    where = rules.where
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key, prov, rules)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where(key, prov)}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where(key, prov)} must be a mapping, got {value!r}")
        return build_dataclass(tp, value, key, prov, rules)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where(key, prov)} must be a list, got {value!r}")
        (item_tp,) = args or (Any,)
        return [coerce(v, item_tp, f"{key}[{i}]", prov, rules) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where(key, prov)} must be {rules.mapping_note}, got {value!r}")
        if rules.typed_mappings and args:
            return {str(k): coerce(v, args[1], f"{key}.{k}", prov, rules) for k, v in value.items()}
        return dict(value)
    return _scalar(value, tp, key, prov, rules)


def _scalar(value: Any, tp: Any, key: str, prov: Provenance, rules: SchemaRules) -> Any:
    """``value`` as the scalar type ``tp`` (``bool``, ``int``, ``float`` or ``str``)."""
    where = rules.where(key, prov)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if rules.lenient_scalars and isinstance(value, str):  # YAML reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if rules.lenient_scalars and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported schema type {type_name(tp)}")


def build_dataclass(cls: type, data: Mapping[str, Any], prefix: str = "", prov: Provenance | None = None,
                    rules: SchemaRules = CONFIG_RULES) -> Any:
    """An instance of the dataclass ``cls`` from ``data`` (missing keys take the defaults).

    Args:
        cls: the schema (a dataclass whose fields may be dataclasses, lists, mappings or scalars).
        data: the plain mapping read from YAML and overrides.
        prefix: the dotted key of ``data`` in the whole config (``""`` at the top).
        prov: where each dotted key was set, for the messages.
        rules: how strictly values are read and how keys are named (:class:`SchemaRules`).

    Raises:
        ConfigError: an unknown key (the known ones and the closest are named) or a bad value.
    """
    prov = prov if prov is not None else {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{rules.unknown(key, prov)}. "
                              f"Known keys{' of ' + prefix if prefix else ''}: {', '.join(names)}.{hint}")
        kwargs[k] = coerce(v, hints[k], key, prov, rules)
    return cls(**kwargs)
