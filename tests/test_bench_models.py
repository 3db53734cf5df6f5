"""Tests of the training / inference speed benchmarks and of Conv+BN folding (tiny runs, no timing asserts)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from strkit.bench import infer_speed, tables
from strkit.cli.bench import BENCH_COMMANDS, main
from strkit.config import ConfigError, load_config
from strkit.engine import train_timing
from strkit.models.optimize import cast_for_inference, fuse_for_inference
from strkit.models.recognizer import build_model
from strkit.models.registry import SEQUENCES

REPO = Path(__file__).resolve().parents[1]

# Never wait for a quiet machine in tests.
NO_WAIT = ["--max-busy", "1000", "--retries", "0"]


def test_subcommands_are_registered() -> None:
    assert {"train", "infer"} <= set(BENCH_COMMANDS.names())


def test_train_subcommand_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One case in a fresh process: the table and the JSON fields, the architecture's parameter count."""
    out = tmp_path / "train.json"
    assert main(["train", "--models", "mbv2-ctc", "--precision", "fp32", "--channels-last", "off",
                 "--batch-size", "4", "--steps", "2", "--warmup", "1", "--windows", "2", "--threads", "1",
                 "--json", str(out), *NO_WAIT]) == 0
    printed = capsys.readouterr().out
    assert "| mbv2-ctc | none-mobilenetv2-bilstm-ctc | 4,574,437 | fp32 | off | off | 4 |" in printed
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "train" and "tools/bench.py train" in payload["command"]
    (result,) = payload["results"]
    assert result["params"] == 4_574_437
    assert result["case"]["model"] == "mbv2-ctc" and result["case"]["batch_size"] == 4
    assert len(result["window_images_per_s"]) == 2 and result["images_per_s"] > 0
    assert result["peak_rss_mib"] > 50  # a process that imported torch
    assert result["threads"] == 1 and result["data_wait_fraction"] is None
    assert result["final_loss"] is not None and result["final_loss"] == result["final_loss"]  # finite


def test_train_with_real_loader_in_process(word_folder: Path) -> None:
    case = train_timing.TrainCase(model="mbv2-ctc", precision="bf16", channels_last=True, lstm_autocast=True,
                           batch_size=4, steps=2,
                           warmup=1, windows=1, threads=1, data=str(word_folder), data_kind="folder",
                           workers=0)
    result = train_timing.run_case(train_timing.measure_train, case, gate=None, isolate=False)
    assert result.data_wait_fraction is not None and 0.0 <= result.data_wait_fraction < 1.0
    assert result.images_per_s > 0 and result.window_images_per_s and result.busy_cores != -1
    table = tables.train_table([result])
    assert "data wait" in table and "bf16 + bf16 LSTM" in table
    assert result.params == 4_574_437  # the LSTM option changes no parameter
    assert train_timing.train_config(case).model.sequence["autocast"] is True


def test_train_with_the_configs_own_recipe(word_folder: Path, tmp_path: Path) -> None:
    """--with-data config: the training config's sources, mixing and augmentation feed the timed steps,
    and its image geometry is kept (not the case's --img-h/--img-w)."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"_base_: [{REPO / 'configs' / 'models' / 'mbv2-ctc.yaml'}]\n"
        "data:\n  img_w: 96\n  augment: randaug\n  augment_options: {n: 2, m: 5}\n  val_fraction: 0\n"
        f"  train:\n    - {{path: {word_folder}, kind: folder, name: a, ratio: 0.5}}\n"
        f"    - {{path: {word_folder}, kind: folder, name: b, ratio: 0.5}}\n")
    case = train_timing.TrainCase(model=str(recipe), batch_size=4, steps=2, warmup=1, windows=1, threads=1,
                                  data=train_timing.RECIPE_DATA, workers=0, start_step=3)
    cfg = train_timing.train_config(case)
    assert cfg.data.img_w == 96 and [s.name for s in cfg.data.train] == ["a", "b"] and cfg.data.augment == "randaug"
    result = train_timing.run_case(train_timing.measure_train, case, gate=None, isolate=False)
    assert result.images_per_s > 0 and result.data_wait_fraction is not None
    assert result.final_loss is not None and result.final_loss == result.final_loss


def test_train_profile_lists_operator_shares() -> None:
    case = train_timing.TrainCase(model="mbv2-ctc", batch_size=2, steps=1, warmup=1, windows=1, threads=1,
                                  profile_steps=2)
    result = train_timing.run_case(train_timing.measure_train, case, gate=None, isolate=False)
    shares = list((result.profile or {}).values())
    assert shares and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.01
    assert any("conv" in name for name in result.profile)  # a MobileNetV2 step spends time in convolutions


def test_recipe_mode_needs_a_training_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--models", "mbv2-ctc", "--with-data", "config", "--in-process", *NO_WAIT]) == 2
    assert "needs a training config with data.train" in capsys.readouterr().err
    assert main(["train", "--models", "mbv2-ctc", "--with-data", "config", "--start-step", "-1", *NO_WAIT]) == 2
    assert "--start-step must be >= 0" in capsys.readouterr().err


def test_infer_subcommand_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "infer.json"
    assert main(["infer", "--models", "mbv2-ctc", "--precision", "fp32", "bf16", "bf16-weights",
                 "--channels-last", "on",
                 "--fuse", "on", "--threads", "1", "--repeats", "2", "--warmup", "1", "--batch", "3",
                 "--batch-repeats", "1",
                 "--in-process", "--json", str(out), *NO_WAIT]) == 0
    printed = capsys.readouterr().out
    assert "images/s (batch 3)" in printed and "bf16 + channels-last + fused" in printed
    results = json.loads(out.read_text())["results"]
    assert [r["case"]["precision"] for r in results] == ["fp32", "bf16", "bf16-weights"]
    for r in results:
        assert r["params"] == 4_574_437  # the unfused architecture
        assert r["fused_pairs"] > 0 and r["ms_per_image"] > 0 and r["images_per_s"] > 0


def test_infer_onnxruntime_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "infer.json"
    assert main(["infer", "--models", "crnn", "--precision", "fp32", "--channels-last", "off",
                 "--backend", "torch", "onnxruntime", "--threads", "1", "--repeats", "2", "--warmup", "1",
                 "--batch", "2", "--batch-repeats", "1", "--in-process", "--json", str(out), *NO_WAIT]) == 0
    assert "onnxruntime fp32" in capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    assert [r["case"]["backend"] for r in results] == ["torch", "onnxruntime"]
    assert results[1]["pipeline"] == "none-vgg-bilstm-ctc" and results[1]["params"] == 8_451_621
    assert results[1]["ms_per_image"] > 0 and results[1]["images_per_s"] > 0 and results[1]["threads"] == 1


def _untrained_checkpoint(folder: Path) -> tuple[torch.nn.Module, Path]:
    """An mbv2-ctc model at 32×64 with random weights, saved as ``folder/best.pt``."""
    from strkit.checkpoint import save_checkpoint

    cfg = load_config("configs/models/mbv2-ctc.yaml", ["data.img_w=64"])
    model = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels)
    ckpt = folder / "best.pt"
    save_checkpoint(ckpt, config=cfg.to_dict(), charset=model.charset.to_dict(), state_dict=model.state_dict())
    return model, ckpt


def test_infer_times_trained_checkpoints_and_onnx_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    from strkit.export import export_onnx

    model, ckpt = _untrained_checkpoint(tmp_path)
    onnx_file = tmp_path / "model.onnx"
    export_onnx(model.eval(), onnx_file)
    out = tmp_path / "infer.json"
    assert main(["infer", "--models", str(ckpt), str(onnx_file), "--precision", "fp32", "--channels-last", "off",
                 "--backend", "torch", "onnxruntime", "--threads", "1", "--repeats", "2", "--warmup", "1",
                 "--batch", "2", "--batch-repeats", "1", "--in-process", "--json", str(out), *NO_WAIT]) == 0
    results = json.loads(out.read_text())["results"]
    # the checkpoint with both backends, the .onnx file with ONNX Runtime only; all at the model's own size
    assert [(Path(r["case"]["model"]).name, r["case"]["backend"]) for r in results] == [
        ("best.pt", "torch"), ("best.pt", "onnxruntime"), ("model.onnx", "onnxruntime")]
    assert all(r["case"]["img_w"] == 64 and r["pipeline"] == model.pipeline for r in results)
    assert results[0]["params"] == results[1]["params"] == model.num_parameters()
    assert results[2]["params"] > 0
    assert main(["infer", "--models", str(tmp_path / "missing.pt"), *NO_WAIT]) != 0
    assert "no such file" in capsys.readouterr().err


def test_onnxruntime_backend_refuses_pytorch_levers() -> None:
    case = infer_speed.InferCase(model="crnn", backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="fp32 without the PyTorch levers"):
        infer_speed.measure_infer(case)
    with pytest.raises(ValueError, match="use one of torch, onnxruntime"):
        infer_speed.measure_infer(infer_speed.InferCase(model="crnn", backend="tensorrt"))


def test_cli_precisions_match_the_library() -> None:
    from strkit.cli.bench_infer import BACKENDS, PRECISIONS

    assert PRECISIONS == infer_speed.INFER_PRECISIONS and BACKENDS == infer_speed.INFER_BACKENDS


def test_unknown_model_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--models", "nosuch", "--steps", "1", *NO_WAIT]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "crnn" in err
    with pytest.raises(ConfigError, match="configs/models"):
        train_timing.model_config_path("nosuch")


def test_missing_data_source_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--models", "mbv2-ctc", "--with-data", str(tmp_path / "absent"), *NO_WAIT]) == 2
    assert "absent" in capsys.readouterr().err


@given(steps=st.integers(1, 200), windows=st.integers(1, 20))
def test_window_sizes_cover_all_steps(steps: int, windows: int) -> None:
    sizes = train_timing.window_sizes(steps, windows)
    assert sum(sizes) == steps and len(sizes) == min(steps, windows)
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=30)
@given(count=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_random_words_are_realistic_labels(count: int, seed: int) -> None:
    chars = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = train_timing.random_words(count, chars, random.Random(seed))
    assert len(words) == count
    assert all(3 <= len(w) <= 10 and set(w) <= set(chars) for w in words)


def test_synthetic_batches_shape() -> None:
    ((images, labels),) = train_timing.synthetic_batches(1, 5, 1, 32, 100, "abc")
    assert images.shape == (5, 1, 32, 100) and len(labels) == 5
    assert images.min() >= -1 and images.max() <= 1


def _randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine parameters, so that folding them is really tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)


@pytest.mark.parametrize("name", ["crnn", "tps-mbv2-attn"])
def test_fuse_for_inference_keeps_outputs(name: str) -> None:
    cfg = load_config(f"configs/models/{name}.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, 32, 100, 1)
    _randomise_batchnorm(model)
    model.eval()
    x = torch.rand(2, 1, 32, 100) * 2 - 1
    with torch.inference_mode():
        ref = model(x).logits
        fused = fuse_for_inference(model)
        out = fused(x).logits
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fused.fused_pairs == n_bn > 0  # every BN of these models follows a conv
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert [p.text for p in fused.predict(x)] == [p.text for p in model.predict(x)]


def test_fuse_for_inference_skips_unfusable_pairs() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(4),
                              torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4, track_running_stats=False))
    fused = fuse_for_inference(net)
    assert fused.fused_pairs == 0
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules()) == 2


@pytest.mark.parametrize("name", ["crnn", "tps-mbv2-attn"])
def test_cast_for_inference_runs_in_bf16(name: str) -> None:
    cfg = load_config(f"configs/models/{name}.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, 32, 100, 1).eval()
    x = torch.rand(2, 1, 32, 100) * 2 - 1
    with torch.inference_mode():
        ref = model(x).logits
        cast = cast_for_inference(fuse_for_inference(model))
        out = cast(x.bfloat16()).logits
        preds = cast.predict(x.bfloat16())
    assert out.dtype == torch.bfloat16 and len(preds) == 2
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched
    for module in cast.modules():
        for p in module.parameters(recurse=False):
            norm = isinstance(module, torch.nn.BatchNorm2d)
            assert p.dtype == (torch.float32 if norm else torch.bfloat16)
    for buffer in cast.buffers():
        assert buffer.dtype in (torch.float32, torch.int64)  # BN statistics, TPS grid basis, masks
    assert (out.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 1e-3


def test_bilstm_autocast_option() -> None:
    x = torch.randn(2, 7, 24)
    default = SEQUENCES.build({"name": "bilstm", "hidden_size": 16}, input_size=24)
    follow = SEQUENCES.build({"name": "bilstm", "hidden_size": 16, "autocast": True}, input_size=24)
    follow.load_state_dict(default.state_dict())  # same parameters, same names
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, full = follow(x), default(x)
    assert low.dtype == torch.bfloat16 and full.dtype == torch.float32
    torch.testing.assert_close(low.float(), full, rtol=0.05, atol=0.05)
    low.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in follow.parameters())
    assert follow(x).dtype == torch.float32  # without autocast: the weights' dtype


def test_compare_reads_real_crops_with_every_reader(tmp_path: Path, shared_benchmarks: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    ckpt = _untrained_checkpoint(tmp_path)[1]
    out = tmp_path / "compare.json"
    assert main(["compare", "--readers", str(ckpt), f"{ckpt}:torch", "--root", str(shared_benchmarks),
                 "--benchmark", "SVT_647", "--count", "5", "--rounds", "2", "--warmup", "1",
                 "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["reader"] for r in results] == [str(ckpt), f"{ckpt}:torch"]
    assert "onnxruntime" in results[0]["info"] and "torch" in results[1]["info"]
    # the same untrained weights through both backends: the same readings, so the same accuracy
    assert results[0]["accuracy"] == results[1]["accuracy"] and all(r["images"] == 5 for r in results)
    assert all(r["ms_per_image"] >= r["ms_per_image_min"] > 0 for r in results)
    capsys.readouterr()
    assert main(["compare", "--readers", str(tmp_path / "nope.pt"), "--root", str(shared_benchmarks)]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["compare", "--readers", f"{ckpt}:tensorrt", "--root", str(shared_benchmarks)]) == 2
    assert "a backend, torch or onnx" in capsys.readouterr().err


def test_compare_reads_generated_crops_with_the_bundled_model(tmp_path: Path, tiny_benchmarks: Path,
                                                             bundled_checkpoint: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``bench.py compare`` on a benchmark root rendered on the fly (runs without ../shared/benchmarks):
    the bundled model through every backend reads the words, PyTorch and ONNX Runtime alike."""
    from conftest import TINY_BENCHMARK

    pytest.importorskip("onnxruntime")
    out = tmp_path / "compare.json"
    readers = ["default", "default:torch", "default:int8", f"{bundled_checkpoint}:torch"]
    assert main(["compare", "--readers", *readers, "--root", str(tiny_benchmarks), "--benchmark", TINY_BENCHMARK,
                 "--count", "24", "--rounds", "1", "--warmup", "0", "--json", str(out)]) == 0
    results = {r["reader"]: r for r in json.loads(out.read_text())["results"]}
    assert list(results) == readers and all(r["images"] == 24 for r in results.values())
    assert results["default"]["accuracy"] >= 80.0, results["default"]
    # fp32 in ONNX Runtime, in PyTorch, and the checkpoint given by its path: the same readings
    assert results["default"]["accuracy"] == results["default:torch"]["accuracy"] == \
        results[f"{bundled_checkpoint}:torch"]["accuracy"]
    assert results["default:int8"]["accuracy"] >= results["default"]["accuracy"] - 10.0
    assert f"{TINY_BENCHMARK} accuracy (24 crops)" in capsys.readouterr().out


def test_external_reader_without_its_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from strkit.bench.readers import build_reader

    monkeypatch.setitem(sys.modules, "rapidocr", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install rapidocr"):
        build_reader("rapidocr")


def test_readers_take_any_bundled_model_by_its_zoo_name(tmp_path: Path, bundled_checkpoint: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench.py compare --readers default fast ...``: every zoo name is a reader, with the same backend
    suffixes as ``default``; an unknown name lists the bundled ones."""
    import shutil

    import cv2
    import numpy as np

    import strkit.models.zoo
    from strkit.api import Recognizer
    from strkit.bench.readers import build_reader

    zoo = tmp_path / "assets"
    zoo.mkdir()
    (zoo / "default.pt").symlink_to(bundled_checkpoint)
    untrained = _untrained_checkpoint(tmp_path)[1]
    shutil.copyfile(untrained, zoo / "fast.pt")  # a different model under the second name
    monkeypatch.setattr(strkit.models.zoo, "assets_dir", lambda: zoo)
    monkeypatch.chdir(tmp_path)  # no file named 'fast' here: the name is the zoo's
    crop = np.full((32, 100, 3), 255, np.uint8)
    cv2.putText(crop, "strkit", (4, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
    fast, default = build_reader("fast:torch"), build_reader("default:torch")
    assert fast.name == "fast:torch" and "(fast)" in fast.info
    expected = Recognizer.from_checkpoint(untrained, backend="torch", threads=1).recognize(crop)[0].text
    assert fast.read(crop) == expected != default.read(crop)
    with pytest.raises(ValueError, match="use fast, fast:torch, fast:onnx or fast:int8"):
        build_reader("fast:tensorrt")
    with pytest.raises(FileNotFoundError, match=r"bundled models \(default, fast\)"):
        build_reader("fastest")
