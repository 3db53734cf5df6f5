"""The one schema validator (strkit.schema) as the train and synth configs use it."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from strkit.schema import CONFIG_RULES, SYNTH_RULES, ConfigError, build_dataclass


@dataclass
class Inner:
    rate: float = 0.1
    name: str = "x"
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Outer:
    steps: int = 1
    inner: Inner = field(default_factory=Inner)


def test_config_rules_read_numbers_leniently_and_name_the_file() -> None:
    cfg = build_dataclass(Outer, {"steps": 4.0, "inner": {"rate": "1e-3", "name": 7}}, rules=CONFIG_RULES)
    assert cfg == Outer(4, Inner(0.001, "7"))
    with pytest.raises(ConfigError, match=r"'steps' \(set in a.yaml\) must be an integer"):
        build_dataclass(Outer, {"steps": 1.5}, prov={"steps": "a.yaml"})
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.rat'.*Known keys of inner.*'rate'"):
        build_dataclass(Outer, {"inner": {"rat": 1}})


def test_synth_rules_are_strict_and_type_the_weights() -> None:
    cfg = build_dataclass(Outer, {"inner": {"weights": {"a": 1}}}, rules=SYNTH_RULES)
    assert cfg.inner.weights == {"a": 1.0} and isinstance(cfg.inner.weights["a"], float)
    with pytest.raises(ConfigError, match=r"synth config 'inner.rate' must be a number"):
        build_dataclass(Outer, {"inner": {"rate": "1e-3"}}, rules=SYNTH_RULES)
    with pytest.raises(ConfigError, match=r"synth config 'inner.weights.a' must be a number"):
        build_dataclass(Outer, {"inner": {"weights": {"a": "x"}}}, rules=SYNTH_RULES)
    with pytest.raises(ConfigError, match=r"synth config 'inner.weights' must be a mapping of names to weights"):
        build_dataclass(Outer, {"inner": {"weights": [1]}}, rules=SYNTH_RULES)
    with pytest.raises(ConfigError, match=r"unknown synth config key 'stepz'.*Did you mean 'steps'"):
        build_dataclass(Outer, {"stepz": 1}, rules=SYNTH_RULES)
