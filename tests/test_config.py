from pathlib import Path

import pytest
import yaml

from strkit.config import Config, ConfigError, load_config, merge, parse_override


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_defaults_are_a_valid_config():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.model.charset == "36_lowercase"
    assert cfg.data.img_h == 32


def test_base_inheritance_merges_in_order(tmp_path):
    write(tmp_path / "a.yaml", {"train": {"steps": 10, "batch_size": 8}, "model": {"backbone": {"name": "vgg"}}})
    write(tmp_path / "b.yaml", {"train": {"steps": 20}, "model": {"backbone": {"name": "resnet"}}})
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.yaml", {"_base_": ["../a.yaml", "../b.yaml"], "train": {"seed": 3}})
    cfg = load_config(tmp_path / "sub" / "c.yaml")
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.seed) == (20, 8, 3)
    assert cfg.model.backbone == {"name": "resnet"}


def test_single_base_string_and_delete(tmp_path):
    write(tmp_path / "a.yaml", {"model": {"backbone": {"name": "vgg", "width": 3}}})
    write(tmp_path / "b.yaml", {"_base_": "a.yaml", "model": {"backbone": {"_delete_": True, "name": "resnet"}}})
    assert load_config(tmp_path / "b.yaml").model.backbone == {"name": "resnet"}


def test_overrides_are_typed(tmp_path):
    cfg = load_config(None, ["train.steps=7", "train.optimizer.lr=3e-4", "train.channels_last=true",
                             "eval.benchmarks=[IIIT5K_3000, SVT_647]", "model.decoder.beam_width=5"])
    assert cfg.train.steps == 7
    assert cfg.train.optimizer.lr == pytest.approx(3e-4)
    assert cfg.train.channels_last is True
    assert cfg.eval.benchmarks == ["IIIT5K_3000", "SVT_647"]
    assert cfg.model.decoder == {"name": "ctc", "beam_width": 5}


def test_unknown_key_names_key_and_file(tmp_path):
    f = write(tmp_path / "bad.yaml", {"train": {"stepz": 3}})
    with pytest.raises(ConfigError, match=r"'train.stepz' \(set in .*bad.yaml\).*Did you mean 'steps'"):
        load_config(f)


def test_wrong_type_names_key_and_source(tmp_path):
    f = write(tmp_path / "bad.yaml", {"train": {"batch_size": "big"}})
    with pytest.raises(ConfigError, match=r"'train.batch_size' \(set in .*bad.yaml\) must be an integer"):
        load_config(f)
    with pytest.raises(ConfigError, match=r"'train.precision' \(set in command line\) must be a string"):
        load_config(None, ["train.precision=[1]"])
    with pytest.raises(ConfigError, match="must be true/false"):
        load_config(None, ["train.progress=3"])


def test_list_of_dataclasses(tmp_path):
    f = write(tmp_path / "d.yaml", {"data": {"train": [{"path": "x", "kind": "folder", "ratio": 0.5},
                                                       {"path": "y", "bogus": 1}]}})
    with pytest.raises(ConfigError, match=r"'data.train\[1\].bogus'"):
        load_config(f)
    f = write(tmp_path / "d.yaml", {"data": {"train": [{"path": "x", "kind": "folder", "ratio": 0.5}]}})
    assert load_config(f).data.train[0].ratio == 0.5


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path / "list.yaml", "[1, 2]"))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path / "broken.yaml", "a: [1,"))
    write(tmp_path / "x.yaml", {"_base_": "y.yaml"})
    write(tmp_path / "y.yaml", {"_base_": "x.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_override("novalue")


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["train.steps=11", "model.backbone={name: resnet}"])
    out = tmp_path / "resolved.yaml"
    cfg.dump(out)
    again = load_config(out)
    assert again == cfg


def test_merge_does_not_mutate_inputs():
    a = {"x": {"y": 1}}
    b = {"x": {"z": 2}}
    assert merge(a, b) == {"x": {"y": 1, "z": 2}}
    assert a == {"x": {"y": 1}}


def test_overrides_address_list_entries_by_position():
    from strkit.config import ConfigError, load_config

    cfg = load_config("configs/train/default_model.yaml", ["data.train.2.concat_p=0.2", "data.train.-1.ratio=0.5"])
    assert cfg.data.train[2].concat_p == 0.2 and cfg.data.train[0].concat_p == 0.0
    assert cfg.data.train[-1].ratio == 0.5 and cfg.data.train[-1].name == "IC15_train"
    with pytest.raises(ConfigError, match="position 0..4"):
        load_config("configs/train/default_model.yaml", ["data.train.5.ratio=1"])
    with pytest.raises(ConfigError, match="position"):
        load_config("configs/train/default_model.yaml", ["data.train.first.ratio=1"])
