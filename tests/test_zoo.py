"""Model zoo names: Recognizer.from_pretrained(NAME), tools/eval.py NAME,
tools/export.py NAME, strkit models / python -m strkit models, unknown names; and the calibration flags of
tools/eval.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_BENCHMARK, word_accuracy

from strkit.api import Recognizer
from strkit.checkpoint import CheckpointError
from strkit.models.zoo import UnknownModelError, get_zoo_model, resolve_model_arg, zoo_models

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def test_zoo_lists_the_bundled_model_and_resolves_names(bundled_checkpoint, tmp_path, monkeypatch):
    models = zoo_models()
    assert "default" in models and models["default"].checkpoint == bundled_checkpoint
    assert models["default"].onnx is not None and models["default"].onnx.name == "default.onnx"
    monkeypatch.chdir(tmp_path)
    assert resolve_model_arg("default") == (bundled_checkpoint, "default", True)
    with pytest.raises(UnknownModelError) as err:
        resolve_model_arg("nosuch")
    assert "unknown model 'nosuch'" in str(err.value) and "bundled models: default" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        resolve_model_arg("nosuch.pt")  # written as a file: the file is missing
    (tmp_path / "default").mkdir()  # an existing path wins over the zoo name
    with pytest.raises(CheckpointError, match="no best.pt"):
        resolve_model_arg("default")


def test_from_pretrained_takes_a_zoo_name(bundled_checkpoint, synth_words, tmp_path):
    rec = Recognizer.from_pretrained("default", backend="torch")
    assert rec.recognize(synth_words.images[0])[0].text == synth_words.labels[0]
    with pytest.raises(UnknownModelError, match="unknown model 'nosuch'.*bundled models: default"):
        Recognizer.from_pretrained("nosuch")
    # a bundle folder with a second model: both names resolve there
    shutil.copyfile(bundled_checkpoint, tmp_path / "default.pt")
    shutil.copyfile(bundled_checkpoint, tmp_path / "small.pt")
    assert sorted(zoo_models(tmp_path)) == ["default", "small"]
    small = Recognizer.from_pretrained("small", bundle=tmp_path, backend="torch")
    assert small.recognize(synth_words.images[0])[0].text == synth_words.labels[0]
    by_path = Recognizer.from_pretrained(str(tmp_path / "small.pt"), backend="torch")  # a checkpoint path works too
    assert by_path.recognize(synth_words.images[0])[0].text == synth_words.labels[0]
    with pytest.raises(FileNotFoundError, match="holds no other.pt"):
        Recognizer.from_pretrained("other", bundle=tmp_path)
    with pytest.raises(UnknownModelError, match=f"bundled models in {tmp_path}: default, small"):
        get_zoo_model("other", tmp_path)


def test_strkit_models_lists_models_configs_and_modules(capsys):
    from strkit.cli.models import main
    from strkit.data.augment import AUGMENTATIONS
    from strkit.data.synth.config import PRESET_NAMES
    from strkit.inference.teachers import TEACHERS
    from strkit.models.registry import BACKBONES, DECODERS, RECTIFIERS, SEQUENCES

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "default: none-searched-bilstm-ctc" in out and "default.onnx" in out and "M params" in out
    # the accuracy recorded in each bundled checkpoint, with the protocol it was scored under: `fast` (the first
    # default model) reads 36 characters, `default` (model v2) is case-sensitive with punctuation, scored under 94
    assert "word accuracy (36 protocol): IIIT5K_3000 76.70%" in out
    assert "default: none-searched-bilstm-ctc" in out and "charset 94_full" in out
    assert "word accuracy (94 protocol): IIIT5K_3000 " in out
    for path in sorted((REPO / "configs" / "models").glob("*.yaml")):
        assert f"  {path.stem}: " in out
    for registry in (RECTIFIERS, BACKBONES, SEQUENCES, DECODERS):
        assert all(f"    {name}" in out for name in registry.names())
    for names in (AUGMENTATIONS.names(), TEACHERS.names(), PRESET_NAMES):
        assert ", ".join(names) in out
    assert main(["--json"]) == 0
    cat = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in cat["bundled"]] == ["default", "fast"] and cat["bundled"][0]["params_m"] > 0
    assert set(cat["stages"]["decoder"]) == set(DECODERS.names())
    assert main(["nosuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown model 'nosuch'" in err and "bundled models: default" in err


def test_the_bundle_holds_default_and_fast_within_30_mb(shared_benchmarks):
    """The package ships two zoo models, ``default`` (model v2) and ``fast`` (the first default model, which
    every later default keeps available), each with its fp32 ONNX export, 30 MB in all; each reads real crops
    through ONNX Runtime and PyTorch alike (its .pt holds fp16 weights: at most one reading may differ)."""
    models = zoo_models()
    assert {"default", "fast"} <= set(models)
    for name in ("default", "fast"):
        assert models[name].onnx is not None, name
    files = [p for m in models.values() for p in m.files]
    assert sum(p.stat().st_size for p in files) <= 30e6, {p.name: p.stat().st_size for p in files}
    lines = (shared_benchmarks / "IIIT5K_3000" / "labels.tsv").read_text(encoding="utf-8").splitlines()[:40]
    paths = [str(shared_benchmarks / "IIIT5K_3000" / line.split("\t", 1)[0]) for line in lines]
    labels = [line.split("\t", 1)[1] for line in lines]
    read = {}
    for name, charset in (("fast", "36_lowercase"), ("default", "94_full")):
        onnx = Recognizer.from_pretrained(name, backend="onnx", threads=1)
        torch_rec = Recognizer.from_pretrained(name, backend="torch", threads=1)  # fp16 weights, run in fp32
        assert torch_rec.model.charset.name == charset, name
        onnx_texts = [r.text for r in onnx.recognize(paths)]
        torch_texts = [r.text for r in torch_rec.recognize(paths)]
        assert sum(a != b for a, b in zip(onnx_texts, torch_texts, strict=True)) <= 1, name
        read[name] = onnx_texts
    # two different models: `default` (v2, case-sensitive) reads these 40 crops better than `fast`
    assert read["default"] != read["fast"] and any(t != t.lower() for t in read["default"])
    assert word_accuracy(read["fast"], labels) >= 0.5, read["fast"]
    assert word_accuracy(read["default"], labels) >= 0.65, read["default"]


def test_python_dash_m_strkit_models(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "strkit", "models", "default"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "default: none-searched-bilstm-ctc" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "strkit", "nosuch"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and "unknown command 'nosuch'" in bad.stderr


def test_eval_takes_zoo_names_and_fits_a_temperature(tiny_benchmarks, tmp_path, capsys, monkeypatch):
    from strkit.cli.eval import main
    from strkit.models.pretrained import load_model

    monkeypatch.chdir(tmp_path)
    assert main(["nosuch", "--root", str(tiny_benchmarks)]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    cal = tmp_path / "calibrated.pt"
    code = main(["default", "--benchmarks", TINY_BENCHMARK, "--root", str(tiny_benchmarks), "--no-speed",
                 "--fit-temperature", "--val-source", str(tiny_benchmarks / "IIIT5K_train"), "--out",
                 str(tmp_path / "ev"), "--save-calibrated", str(cal)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "ev" / "calibration.json").read_text())
    t = report["fit"]["temperature"]
    assert 0 < t <= 100 and report["fit"]["count"] == 32
    assert report["before"]["benchmarks"][0]["ece"] >= 0 and "ece" in report["after"]["total"]
    assert "ECE (T=1)" in out and "default ECE" in out
    assert load_model(cal)[0].temperature == pytest.approx(t)
    # never fitted on a benchmark test set
    assert main(["default", "--benchmarks", TINY_BENCHMARK, "--root", str(tiny_benchmarks), "--no-speed",
                 "--fit-temperature", "--val-source", str(tiny_benchmarks / TINY_BENCHMARK)]) == 2
    assert "benchmark" in capsys.readouterr().err.lower()
    assert main(["default", "--fit-temperature"]) == 2
    assert "--val-source" in capsys.readouterr().err


def test_export_takes_a_zoo_name(tmp_path, capsys):
    from strkit.cli.export import main
    from strkit.inference.onnx_backend import read_onnx_metadata

    assert main(["default", "--out", str(tmp_path / "out"), "--parity-count", "0"]) == 0
    meta = read_onnx_metadata(tmp_path / "out" / "model.onnx")
    assert meta.pipeline == "none-searched-bilstm-ctc" and meta.temperature == 1.0
    assert main(["nosuch", "--out", str(tmp_path / "x"), "--parity-count", "0"]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
