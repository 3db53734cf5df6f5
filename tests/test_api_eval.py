"""Python API (every input kind, bad input), evaluator tables, and the eval / recognize tools."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from strkit.api import Recognizer, load_image
from strkit.charset import protocol_filter
from strkit.checkpoint import CheckpointError, save_checkpoint
from strkit.config import load_config
from strkit.models.recognizer import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained mbv2-ctc model saved as a self-describing checkpoint."""
    cfg = load_config(REPO / "configs" / "models" / "mbv2-ctc.yaml", ["data.channels=1"])
    model = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, config=cfg.to_dict(), charset=model.charset.to_dict(), state_dict=model.state_dict())
    return path


def test_recognize_every_input_kind(checkpoint, tmp_path):
    rec = Recognizer.from_checkpoint(checkpoint)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 60, 3), dtype=np.uint8)
    png = tmp_path / "word.png"
    Image.fromarray(rgb).save(png)
    inputs = [
        str(png), png, Image.fromarray(rgb), Image.fromarray(rgb).convert("L"),
        Image.fromarray(rgb).convert("RGBA"), rgb, rgb[:, :, 0], rgb[:, :, :1],
        np.dstack([rgb, np.full((20, 60), 255, np.uint8)]),  # RGBA array
        (rgb[:, :, 0].astype(np.uint16) * 257),  # 16-bit gray
    ]
    results = rec.recognize(inputs, batch_size=4)
    assert len(results) == len(inputs)
    for r in results:
        assert r.ok, r.error
        assert 0.0 <= r.confidence <= 1.0
        assert len(r.char_probs) == len(r.text)
    # the same pixels give the same text whatever the container
    assert len({r.text for r in results[:3]}) == 1
    single = rec.recognize(str(png))
    assert len(single) == 1 and single[0].text == results[0].text


def test_every_input_kind_of_a_word_reads_that_word(bundled_checkpoint, synth_words, tmp_path):
    """The same word crop in every container reads as that word; the containers that hold the very same
    pixels (file, PIL RGB/RGBA, RGB(A) array) give the same confidence too. That one is checked on a
    coloured crop read with middling confidence, where a change of pixels (e.g. BGR for RGB) shows."""
    rec = Recognizer.from_checkpoint(bundled_checkpoint, backend="torch")
    reads = rec.recognize(synth_words.images)

    def colourful(img: np.ndarray) -> bool:
        return float(np.abs(img[:, :, 0].astype(int) - img[:, :, 2]).mean()) > 10

    right = [i for i, r in enumerate(reads) if r.text == synth_words.labels[i] and colourful(synth_words.images[i])]
    for i in (min(right, key=lambda i: reads[i].confidence), max(right, key=lambda i: reads[i].confidence)):
        rgb, word = synth_words.images[i], synth_words.labels[i]
        png = tmp_path / f"word{i}.png"
        Image.fromarray(rgb).save(png)
        same_pixels = [str(png), png, Image.fromarray(rgb), Image.fromarray(rgb).convert("RGBA"), rgb,
                       np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])]
        results = rec.recognize(same_pixels, batch_size=4)
        assert [r.text for r in results] == [word] * len(results)
        confidences = [r.confidence for r in results]
        assert max(confidences) - min(confidences) < 1e-5, (word, confidences)
    assert reads[i].confidence > 0.9  # the confident one: it survives a conversion to gray in any container
    gray = [Image.fromarray(rgb).convert("L"), rgb[:, :, 1], rgb[:, :, 1:2], rgb[:, :, 1].astype(np.uint16) * 257]
    assert [r.text for r in rec.recognize(gray)] == [word] * len(gray)
    assert rec.recognize(str(png))[0].text == word


def test_bad_inputs_give_per_item_errors(checkpoint, tmp_path):
    rec = Recognizer.from_checkpoint(checkpoint)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    good = np.zeros((32, 100), np.uint8)
    results = rec.recognize([tmp_path / "missing.png", empty, text, np.zeros((0, 5), np.uint8), good, 42])
    errors = [r.error for r in results]
    assert "no such file" in errors[0]
    assert "empty" in errors[1]
    assert "not a decodable image" in errors[2]
    assert "empty" in errors[3]
    assert errors[4] is None
    assert "unsupported image type" in errors[5]


def test_load_image_conversions(tmp_path):
    assert load_image(np.ones((4, 5, 1), np.uint8)).shape == (4, 5)
    assert load_image(np.full((4, 5), 0.5, np.float32)).dtype == np.uint8
    p = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(p)
    assert load_image(p).shape == (4, 5, 3)


def test_bad_checkpoint_is_reported(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a strkit checkpoint"):
        Recognizer.from_checkpoint(bogus)
    with pytest.raises(CheckpointError, match="not found"):
        Recognizer.from_checkpoint(tmp_path / "nope.pt")


def test_eval_and_recognize_tools(checkpoint, shared_benchmarks, tmp_path, capsys):
    from strkit.cli.eval import main as eval_main
    from strkit.cli.recognize import main as recognize_main

    out = tmp_path / "eval"
    rc = eval_main([str(checkpoint), "--benchmarks", "SVT_647", "--root", str(shared_benchmarks),
                    "--out", str(out), "--wrong", "--batch-size", "128"])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["benchmarks"][0]["name"] == "SVT_647" and data["benchmarks"][0]["count"] == 647
    assert data["speed"]["params_m"] > 0 and data["speed"]["ms_per_image"] > 0
    md = (out / "results.md").read_text()
    assert "SVT_647 (647)" in md and "ms/img" in md
    assert (out / "results.csv").read_text().count("\n") == 3  # header, SVT_647, total
    wrong = (out / "wrong_SVT_647.tsv").read_text().splitlines()
    assert len(wrong) - 1 == 647 - data["benchmarks"][0]["accuracy"] * 647 / 100
    capsys.readouterr()
    rc = recognize_main([str(checkpoint), str(shared_benchmarks / "SVT_647" / "images" / "000001.jpg"),
                         "--format", "json"])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert set(line) == {"image", "text", "confidence", "char_probs", "error", "warning", "rotation"}


def test_eval_and_recognize_tools_on_generated_crops(bundled_checkpoint, tiny_benchmarks, tmp_path, capsys):
    """tools/eval.py and tools/recognize.py with the bundled model on a benchmark root rendered on the fly
    (runs without ../shared/benchmarks): the tables hold what the model reads."""
    from conftest import TINY_BENCHMARK

    from strkit.cli.eval import main as eval_main
    from strkit.cli.recognize import main as recognize_main

    out = tmp_path / "eval"
    rc = eval_main([str(bundled_checkpoint), "--benchmarks", TINY_BENCHMARK, "--root", str(tiny_benchmarks),
                    "--out", str(out), "--wrong", "--no-speed", "--name", "default"])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    row = data["benchmarks"][0]
    assert row["name"] == TINY_BENCHMARK and row["count"] == 288 and data["protocol"] == "36"
    assert row["accuracy"] >= 85.0 and row["ned"] >= row["accuracy"], row  # it reads the rendered words
    wrong = (out / "wrong_CUTE80_288.tsv").read_text().splitlines()[1:]
    assert len(wrong) == round(288 * (1 - row["accuracy"] / 100))
    labels = dict(line.split("\t") for line in (tiny_benchmarks / TINY_BENCHMARK / "labels.tsv").read_text().split("\n")
                  if line)
    for line in wrong:  # each listed image is one whose reading differs from its label
        _, image, label, prediction, _ = line.split("\t")
        assert label == labels[str(Path(image).relative_to(tiny_benchmarks / TINY_BENCHMARK))] != prediction
    assert f"{TINY_BENCHMARK} (288)" in (out / "results.md").read_text()
    capsys.readouterr()
    image = tiny_benchmarks / TINY_BENCHMARK / "images" / "000000.png"
    checkpoint = shutil.copy(bundled_checkpoint, tmp_path / "default.pt")  # its ONNX cache goes beside it
    assert recognize_main([str(checkpoint), str(image), "--format", "json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert set(line) == {"image", "text", "confidence", "char_probs", "error", "warning", "rotation"}
    assert line["text"] == labels["images/000000.png"]


def test_eval_on_your_own_test_sets(bundled_checkpoint, tiny_benchmarks, tmp_path, capsys):
    """--data PATH: any folder dataset or LMDB is a row of the table, named by its folder (parents added
    where two folders share a name), scored like a benchmark; a path that is neither is one line, exit 2."""
    from conftest import TINY_BENCHMARK

    from strkit.cli.eval import main as eval_main

    for parent in ("curved", "persp"):
        shutil.copytree(tiny_benchmarks / TINY_BENCHMARK, tmp_path / parent / "words")
    base = ["--out", str(tmp_path / "eval"), "--no-speed", "--threads", "1"]
    assert eval_main([str(bundled_checkpoint), "--data", str(tmp_path / "curved" / "words"),
                      str(tmp_path / "persp" / "words"), *base]) == 0
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())["benchmarks"]
    assert [r["name"] for r in rows] == ["curved/words", "persp/words"]  # no benchmark without --benchmarks
    assert rows[0]["count"] == 288 and rows[0]["accuracy"] == rows[1]["accuracy"] >= 85.0
    # beside a benchmark: the same crops score the same
    assert eval_main([str(bundled_checkpoint), "--benchmarks", TINY_BENCHMARK, "--root", str(tiny_benchmarks),
                      "--data", str(tmp_path / "curved" / "words"), *base]) == 0
    rows = json.loads((tmp_path / "eval" / "results.json").read_text())["benchmarks"]
    assert [r["name"] for r in rows] == [TINY_BENCHMARK, "words"]
    assert rows[0]["accuracy"] == rows[1]["accuracy"]
    # several protocols from one reading: each in its folder, the first equal to a run of that protocol alone
    assert eval_main([str(bundled_checkpoint), "--data", str(tmp_path / "curved" / "words"), "--protocol", "36",
                      "62", "94", *base]) == 0
    scored = {p: json.loads((tmp_path / "eval" / f"protocol_{p}" / "results.json").read_text())
              for p in ("36", "62", "94")}
    assert [scored[p]["protocol"] for p in scored] == ["36", "62", "94"]
    assert scored["36"]["benchmarks"] == rows[1:]
    # a stricter protocol never scores a reading higher
    assert scored["36"]["total"]["accuracy"] >= scored["62"]["total"]["accuracy"] >= scored["94"]["total"]["accuracy"]
    assert {scored[p]["total"]["count"] for p in scored} == {288}
    capsys.readouterr()
    assert eval_main([str(bundled_checkpoint), "--data", str(tmp_path), *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--data {tmp_path}" in err[0] and "labels.tsv" in err[0]


def test_eval_unknown_benchmark_is_a_clear_error(checkpoint, tmp_path, capsys):
    from strkit.cli.eval import main as eval_main

    rc = eval_main([str(checkpoint), "--benchmarks", "SVTP_645", "--root", str(tmp_path), "--no-speed"])
    assert rc == 2
    assert "SVTP_645" in capsys.readouterr().err


def test_readme_python_snippet_runs(checkpoint, tmp_path, monkeypatch):
    """The README's Python example, run as written, with its checkpoint and image names in place."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    snippet = next(b for b in blocks if "from_checkpoint" in b)
    run_dir = tmp_path / "runs" / "crnn"
    run_dir.mkdir(parents=True)
    (run_dir / "best.pt").symlink_to(checkpoint)
    rgb = np.random.default_rng(0).integers(0, 256, (24, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "word.png")
    monkeypatch.chdir(tmp_path)
    printed: list[tuple] = []
    namespace = {"pil_image": Image.fromarray(rgb), "numpy_array": rgb[:, :, 0], "print": lambda *a: printed.append(a)}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert len(printed) == 3 and all(a[3] is None for a in printed)  # text, confidence, char_probs, error
    assert printed[0][0] == printed[1][0]  # the same pixels from a file and from a PIL image


def test_readme_one_line_with_the_bundled_model_on_rendered_words(synth_words, tmp_path, monkeypatch):
    """The README's one-line quick start, as written, on rendered words (runs without
    ../shared/benchmarks): the bundled model loads with no training or download and reads them."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    snippet = next(b for b in blocks if "from_pretrained" in b)
    monkeypatch.chdir(tmp_path)
    read = []
    for rgb, label in zip(synth_words.images[:24], synth_words.labels[:24], strict=True):
        Image.fromarray(rgb).save(tmp_path / "word.png")
        printed: list[tuple] = []
        exec(compile(snippet, "README.md", "exec"), {"print": lambda *a, out=printed: out.append(a)})
        assert len(printed) == 1 and isinstance(printed[0][0], str)
        # the words are rendered in varied case with lower-case labels: compared under the 36 protocol
        read.append(protocol_filter(printed[0][0], "36") == label)
    assert sum(read) >= 20, f"the bundled model read {sum(read)} of {len(read)} rendered words"


def test_readme_one_line_with_the_bundled_model(shared_benchmarks, tmp_path, monkeypatch):
    """The README's one-line quick start, as written, on real benchmark crops: the bundled default model
    loads with no training or download and reads real words (a floor far below its model-card accuracy,
    so that a broken bundle, charset or preprocessing fails here)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    snippet = next(b for b in blocks if "from_pretrained" in b)
    lines = (shared_benchmarks / "IIIT5K_3000" / "labels.tsv").read_text(encoding="utf-8").splitlines()[:60]
    monkeypatch.chdir(tmp_path)
    read: list[str] = []
    for line in lines:
        rel, label = line.split("\t", 1)
        (tmp_path / "word.png").write_bytes((shared_benchmarks / "IIIT5K_3000" / rel).read_bytes())
        printed: list[tuple] = []
        exec(compile(snippet, "README.md", "exec"), {"print": lambda *a, out=printed: out.append(a)})
        assert len(printed) == 1 and isinstance(printed[0][0], str)
        read.append(protocol_filter(printed[0][0], "36") == protocol_filter(label, "36"))
    # default model v2 reads 79.3 % of all of IIIT5K_3000 under the 36 protocol (docs/model_card.md) and 48 of
    # these first 60 (the first model, `fast`: 44); the floor sits 6 crops below, so a broken bundle fails here
    assert sum(read) >= 42, f"the bundled model read {sum(read)} of {len(read)} IIIT5K crops"
    rec = Recognizer.from_pretrained(backend="torch", threads=1)
    assert rec.backend.name == "torch" and rec.model.pipeline.startswith("none-searched-")
    assert rec.model.charset.name == "94_full"  # default model v2: case-sensitive, with punctuation


def test_evaluation_accepts_any_inference_backend(bundled_checkpoint, tiny_benchmarks):
    """The bundled model scores the same on the benchmark as a PyTorch model, through the PyTorch
    backend and through its ONNX export run by ONNX Runtime."""
    from conftest import TINY_BENCHMARK

    from strkit.engine.evaluator import evaluate_benchmarks
    from strkit.inference.metadata import InputSpec
    from strkit.inference.onnx_backend import OnnxBackend
    from strkit.inference.torch_backend import TorchBackend
    from strkit.models.pretrained import load_model

    model, cfg = load_model(bundled_checkpoint)
    backends = [model, TorchBackend(model, InputSpec.from_data_config(cfg.data), "cpu"),
                OnnxBackend(Path(bundled_checkpoint).with_suffix(".onnx"), threads=1)]
    reports = [evaluate_benchmarks(b, cfg, [TINY_BENCHMARK], str(tiny_benchmarks), batch_size=64, speed=False)
               for b in backends]
    accuracies = {round(r.total.accuracy, 2) for r in reports}
    assert len(accuracies) == 1 and reports[0].total.count == 288


def test_the_pytorch_backend_runs_a_fused_copy(bundled_checkpoint, synth_words):
    """TorchBackend folds every Conv2d + BatchNorm2d pair of a copy (the caller's model keeps its BatchNorms):
    the same logits to float rounding and the same readings as the model itself; fuse=False runs the model."""
    from strkit.inference.metadata import InputSpec
    from strkit.inference.torch_backend import TorchBackend
    from strkit.models.pretrained import load_model

    model, cfg = load_model(bundled_checkpoint)
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    backend = TorchBackend(model, InputSpec.from_data_config(cfg.data), "cpu")
    assert backend.model.fused_pairs == bns > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backend.model.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == bns  # untouched
    assert TorchBackend(model, InputSpec.from_data_config(cfg.data), "cpu", fuse=False).model is model
    images = torch.stack([backend.input_spec.transform()(img) for img in synth_words.images[:32]])
    with torch.inference_mode():
        reference = model.eval()(images).logits
    torch.testing.assert_close(backend.logits(images), reference, atol=1e-4, rtol=1e-4)
    assert [p.text for p in backend.predict(images)] == [p.text for p in model.predict(images)]


def test_loading_a_checkpoint_for_inference_does_not_load_the_exporter(checkpoint):
    """PyTorch inference from a checkpoint goes through models and inference only, never strkit.export."""
    import subprocess
    import sys

    code = ("import sys; from strkit.api import Recognizer; "
            f"r = Recognizer.from_checkpoint({str(checkpoint)!r}, backend='torch'); r.recognize([__import__('numpy')"
            ".zeros((32, 100), 'uint8')]); print(sorted(m for m in sys.modules if m.startswith('strkit.export')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
