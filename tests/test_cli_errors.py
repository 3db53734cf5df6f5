"""Command-line behaviour: every user error is one line on stderr and exit status 2,
arguments are checked before any work, eval of the bundled model, streamed results and progress bars.

The tools run in-process (``main([...])``) on generated data and the bundled default model."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_folder_dataset

import strkit

REPO = Path(__file__).resolve().parents[1]
MODEL_CFG = str(REPO / "configs" / "models" / "mbv2-ctc.yaml")
TINY = ["data.workers=0", "train.steps=2", "train.batch_size=4", "train.progress=false", "train.tensorboard=false",
        "train.device=cpu", "data.val=[]", "data.val_fraction=0"]
PACKAGE = Path(strkit.__file__).resolve().parent
DEFAULT_PT = PACKAGE / "assets" / "default.pt"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")


@pytest.fixture(autouse=True)
def _fresh_log_handler():
    """``setup_logging`` binds its handler to the stderr of its first call: give each test its own (captured)
    one and put the old ones back afterwards."""
    logger = logging.getLogger("strkit")
    saved = logger.handlers[:]
    logger.handlers.clear()
    yield
    logger.handlers[:] = saved


def one_error(capsys, rc: int, *expected: str) -> str:
    """Assert exit status 2 and exactly one error line on stderr (log lines aside) holding ``expected``."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, lines
    assert "error: " in lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A copy of the bundled default checkpoint in a run folder (``run/best.pt``)."""
    run = tmp_path_factory.mktemp("run")
    shutil.copy(DEFAULT_PT, run / "best.pt")
    return run / "best.pt"


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    """Files that are not checkpoints: text, random bytes, an LMDB's data.mdb; and a run folder without best.pt."""
    from strkit.data.lmdb.writer import LmdbWriter

    root = tmp_path_factory.mktemp("bad")
    (root / "text.pt").write_text("hello\n")
    (root / "random.pt").write_bytes(bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).tolist()))
    with LmdbWriter(root / "lmdb") as writer:
        writer.put(b"\x89PNG", "x")
    (root / "empty_run").mkdir()
    return {"text": root / "text.pt", "random": root / "random.pt", "lmdb": root / "lmdb" / "data.mdb",
            "folder": root / "empty_run"}


@pytest.fixture(scope="module")
def cute_root(tmp_path_factory) -> Path:
    """A benchmark root holding a generated CUTE80_288 (the smallest benchmark: 288 rendered words)."""
    root = tmp_path_factory.mktemp("benchmarks")
    write_folder_dataset(root / "CUTE80_288", 288, seed=3)
    return root


# -- item 10: library errors are one line -----------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("model.backbone.name=nope", "unknown backbone 'nope'. Known backbones: itervm, mobilenetv2"),
    ("model.backbone.nmae=1", "unknown key 'nmae'"),
    ("model.decodr.name=ctc", "unknown config key 'model.decodr'"),
])
def test_train_bad_model_section(capsys, override, expected):
    from strkit.cli.train import main

    one_error(capsys, main([MODEL_CFG, override, "--print-config"]), expected)


def test_train_gt_line_without_tab(capsys, tmp_path):
    from strkit.cli.train import main

    data = write_folder_dataset(tmp_path / "words", 8)
    with (data / "labels.tsv").open("a") as fh:
        fh.write("images/00000.png cat\n")
    rc = main([MODEL_CFG, *TINY, f"data.train=[{{path: {data}, kind: folder}}]", f"train.out_dir={tmp_path / 'r'}"])
    one_error(capsys, rc, "labels.tsv:9: expected 'path<TAB>label'")


def test_train_source_that_is_not_an_lmdb(capsys, tmp_path):
    from strkit.cli.train import main

    (tmp_path / "plain").mkdir()
    rc = main([MODEL_CFG, *TINY, f"data.train=[{{path: {tmp_path / 'plain'}, kind: lmdb}}]",
               f"train.out_dir={tmp_path / 'r'}"])
    one_error(capsys, rc, "holds no LMDB")


def test_train_missing_relative_path(capsys, tmp_path, monkeypatch):
    from strkit.cli.train import main

    monkeypatch.chdir(tmp_path)
    rc = main([MODEL_CFG, *TINY, "data.train=[{path: nothere/words, kind: folder}]", "train.out_dir=r"])
    one_error(capsys, rc, "nothere/words does not exist", f"relative to the current directory {tmp_path}")


@pytest.mark.parametrize("kind", ["text", "random", "lmdb"])
@pytest.mark.parametrize("tool", ["eval", "recognize", "export", "rectify"])
def test_not_a_checkpoint(capsys, bad_files, tmp_path, tool, kind):
    import importlib

    main = importlib.import_module(f"strkit.cli.{tool}").main
    path = str(bad_files[kind])
    argv = {"eval": [path], "recognize": [path, "x.png", "--backend", "torch"],
            "export": [path, "--out", str(tmp_path / "x")], "rectify": [path]}[tool]
    one_error(capsys, main(argv), f"{path} is not a strkit checkpoint")


def test_run_folder_stands_for_best_pt(capsys, checkpoint, tmp_path, monkeypatch):
    """A run folder is read as its best.pt; a missing relative benchmark root names the folder and --root."""
    from strkit.cli.eval import main

    monkeypatch.chdir(tmp_path)
    rc = main([str(checkpoint.parent), "--benchmarks", "SVT_647", "--root", "nowhere", "--no-speed"])
    one_error(capsys, rc, "benchmark SVT_647 not found under nowhere", "relative to the current directory")
    rc = main([str(checkpoint.parent), "--benchmarks", "SVT_647", "--no-speed"])
    line = one_error(capsys, rc, "not found under")
    assert line.endswith("with --root")


def test_run_folder_without_best_pt(capsys, bad_files):
    from strkit.cli.recognize import main

    one_error(capsys, main([str(bad_files["folder"]), "x.png"]), "is a folder with no best.pt")


def test_other_tools_one_line(capsys, tmp_path, monkeypatch):
    from strkit.cli.bench import main as bench_main
    from strkit.cli.create_lmdb import main as create_main
    from strkit.cli.search import main as search_main
    from strkit.cli.synth import main as synth_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "plain").mkdir()
    one_error(capsys, bench_main(["data", "--lmdb", "plain", "--quick"]), "plain holds no data.mdb")
    (tmp_path / "gt.txt").write_text("a.png\tcat\nb.png\n")
    one_error(capsys, create_main(["gt.txt", "out"]), "gt.txt:2: expected 'path<TAB>label'")
    one_error(capsys, synth_main(["--config", "nothere.yaml", "--preview", "p.png"]),
              "nothere.yaml", "relative to the current directory")
    rc = search_main(["run", str(REPO / "configs" / "search" / "tiny.yaml"), "model.backbone.nope=1", "--print-config"])
    one_error(capsys, rc, "unknown key 'nope'")


# -- item 11: arguments checked up front --------------------------------------------------------------------
@pytest.mark.parametrize("argv, expected", [
    (["--threads", "-1"], "--threads: must be at least 0"),
    (["--batch-size", "0"], "--batch-size: must be at least 1"),
    (["--device", "nope"], "unknown device 'nope'"),
])
@pytest.mark.parametrize("tool", ["eval", "recognize"])
def test_bad_arguments(capsys, tool, argv, expected):
    import importlib

    main = importlib.import_module(f"strkit.cli.{tool}").main
    extra = ["x.png"] if tool == "recognize" else []
    try:
        rc = main(["default", *extra, *argv])
    except SystemExit as exc:  # argparse
        rc = int(exc.code)
    line = one_error(capsys, rc, expected)
    assert "ONNX" not in line and "export" not in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(capsys):
    from strkit.cli.recognize import main

    one_error(capsys, main(["default", "x.png", "--device", "cuda"]), "no CUDA GPU")


@pytest.mark.parametrize("override, expected", [
    ("train.steps=0", "'train.steps' (set in command line) must be at least 1"),
    ("train.threads=-1", "'train.threads' (set in command line) must be at least 0"),
    ("train.device=nope", "unknown device 'nope'"),
    ("data.train=[{path:x}]", "add a space after ':'"),
])
def test_train_config_checked(capsys, override, expected):
    from strkit.cli.train import main

    one_error(capsys, main([MODEL_CFG, override, "--print-config"]), expected)


# -- item 12: eval of the bundled model ---------------------------------------------------------------------
def test_eval_default_writes_to_the_current_directory(capsys, cute_root, tmp_path, monkeypatch):
    from strkit.cli.eval import main

    package = {p: p.stat().st_mtime for p in PACKAGE.rglob("*")}
    monkeypatch.chdir(tmp_path)
    rc = main(["default", "--benchmarks", "CUTE80_288", "--root", str(cute_root), "--no-speed", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    table = (tmp_path / "eval_default" / "results.md").read_text()
    assert "| default |" in table and "| assets |" not in table and "| default |" in out
    after = {p: p.stat().st_mtime for p in PACKAGE.rglob("*")}
    assert after == package  # nothing written into the installed package


# -- item 13: streaming, progress, exit status, the ONNX cache ------------------------------------------------
def test_eval_streams_each_benchmark_with_a_progress_bar(capsys, cute_root, tmp_path):
    from strkit.cli.eval import main

    rc = main(["default", "--benchmarks", "CUTE80_288", "--root", str(cute_root), "--no-speed", "--progress",
               "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 0
    first = captured.out.index("default: CUTE80_288 ")
    assert first < captured.out.index("| Model")  # the benchmark's line comes before the whole table
    assert "CUTE80_288:" in captured.err and "/288 [" in captured.err  # the progress bar, on stderr (tqdm may skip
    # drawing the last update within its refresh interval, so the final count is not asserted)


@pytest.fixture
def images(tmp_path) -> list[str]:
    data = write_folder_dataset(tmp_path / "imgs", 5)
    return sorted(str(p) for p in (data / "images").glob("*.png"))


def test_recognize_streams_batches(capsys, images, monkeypatch):
    """The lines of a batch are printed before the next batch is read."""
    from strkit.api import Recognizer
    from strkit.cli.recognize import main

    original = Recognizer.recognize
    printed_before: list[str] = []

    def spy(self, items, batch_size=32, **kwargs):
        printed_before.append(capsys.readouterr().out)
        return original(self, items, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(Recognizer, "recognize", spy)
    rc = main(["default", *images, "--batch-size", "2", "--backend", "torch", "--progress"])
    captured = capsys.readouterr()
    assert rc == 0
    assert len(printed_before) == 3  # batches of 2, 2, 1
    assert printed_before[1].count("\n") == 2 and images[0] in printed_before[1]
    assert "5/5" in captured.err


def test_recognize_exit_status_and_strict(capsys, images, tmp_path):
    from strkit.cli.recognize import build_parser, main

    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    assert main(["default", images[0], str(broken), "--backend", "torch"]) == 1  # some failed
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 2 and "1 of 2 images could not be read" in captured.err
    rc = main(["default", str(broken), images[0], "--backend", "torch", "--strict"])
    one_error(capsys, rc, f"{broken}: not a decodable image", "--strict")
    assert main(["default", images[0], "--backend", "torch"]) == 0
    help_text = build_parser().format_help()
    assert "exit status" in help_text and "--strict" in help_text


def test_onnx_cache_is_announced_once(capsys, checkpoint, images, tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    from strkit.cli.recognize import main

    ckpt = tmp_path / "model.pt"
    shutil.copy(checkpoint, ckpt)
    caplog.set_level(logging.INFO, logger="strkit")
    for _ in range(2):
        assert main([str(ckpt), images[0], "--backend", "onnx", "--threads", "1"]) == 0
    announced = [r.getMessage() for r in caplog.records if "ONNX" in r.getMessage()]
    assert len(announced) == 1 and f"{ckpt}.onnx" in announced[0]


def test_overrides_may_follow_options_in_every_tool_that_takes_them(capsys):
    """``strkit-search run CONFIG --print-config train.steps=3`` and the like: key=value overrides after an
    option are overrides (in order), for a tool with subcommands too; any other leftover is one error line."""
    import yaml

    from strkit.cli.search import main as search_main
    from strkit.cli.train import main as train_main
    from strkit.cli.tune import build_parser as tune_parser

    search_cfg = str(REPO / "configs" / "search" / "tiny.yaml")
    assert search_main(["run", search_cfg, "train.steps=9", "--print-config", "train.steps=3"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["steps"] == 3  # the later override wins
    assert train_main([MODEL_CFG, "--print-config", "train.batch_size=5", "--overwrite", "train.steps=4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["train"]
    assert (printed["batch_size"], printed["steps"]) == (5, 4)
    args = tune_parser().parse_with_overrides(["run", "space.yaml", "--out", "o", "data.workers=1", "--steps", "2",
                                               "train.seed=3"])
    assert args.overrides == ["data.workers=1", "train.seed=3"] and args.out == "o"
    from strkit.cli.train import build_parser as train_parser

    args = train_parser().parse_with_overrides([MODEL_CFG, "a.b=1", "--resume", "c.d=2", "--overwrite", "e.f=3"])
    assert args.resume == "auto" and args.overrides == ["a.b=1", "c.d=2", "e.f=3"]  # --resume KEY=VALUE: an override
    for argv, expected in ((["run", search_cfg, "--print-config", "train.steps=3", "stray"],
                            "strkit-search: error: unrecognized arguments: stray"),
                           (["lut", search_cfg, "--bogus-option"], "unrecognized arguments: --bogus-option")):
        with pytest.raises(SystemExit) as info:  # argparse's error
            search_main(argv)
        one_error(capsys, int(info.value.code), expected)


def test_sigterm_interrupts_a_long_write_like_ctrl_c(capsys):
    import os
    import signal

    from strkit.cli.common import Terminated, interrupted, sigterm_interrupts

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next bytecode
    assert signal.getsignal(signal.SIGTERM) is before  # put back
    assert interrupted(Terminated(), "kept in OUT.partial; --resume continues") == 143
    assert interrupted(KeyboardInterrupt(), "kept") == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["stopped by SIGTERM: kept in OUT.partial; --resume continues", "", "interrupted: kept"]
