"""Synthetic data at scale: LMDB output identical for any worker count, resume, on-the-fly dataset, CLI."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lmdb
import numpy as np
import pytest

from strkit.charset import Charset, LabelFilter
from strkit.cli.synth import main
from strkit.config import SourceConfig
from strkit.data.lmdb.format import PartialLmdbError, decode_image
from strkit.data.lmdb.reader import LmdbDataset
from strkit.data.sources import SOURCES, build_source
from strkit.data.synth.config import load_synth_config
from strkit.data.synth.dataset import SynthDataset
from strkit.data.synth.generate import generate_lmdb
from strkit.data.synth.renderer import Renderer

FONTS_ONLY_MPL = {"fonts.system": False, "fonts.dirs": ["@matplotlib"]}
MPL_ARGS = ["--no-system-fonts", "--fonts", "@matplotlib", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(private_cache_dir: Path) -> None:
    """Font audits and other caches of this module go to a fresh folder (see conftest)."""


@pytest.fixture(scope="module")
def lexicon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("lex") / "words.txt"
    f.write_text("\n".join(["north", "south", "Main", "avenue", "bakery", "closed", "hello", "stop", "42nd"]))
    return f


@pytest.fixture(scope="module")
def renderer(lexicon: Path) -> Renderer:
    return Renderer(load_synth_config("mjsynth", {**FONTS_ONLY_MPL, "text.lexicon": str(lexicon)}))


def records(path: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        out = {bytes(k): bytes(v) for k, v in txn.cursor()}
    env.close()
    return out


def test_lmdb_is_identical_for_any_worker_count(renderer: Renderer, tmp_path: Path) -> None:
    kw = {"seed": 7, "geometry": True, "progress": False, "chunk": 8}
    a = generate_lmdb(renderer, tmp_path / "w1", 40, workers=1, **kw)
    b = generate_lmdb(renderer, tmp_path / "w2", 40, workers=2, **kw)
    ra, rb = records(a.path), records(b.path)
    assert ra == rb
    assert ra[b"num-samples"] == b"40" and b"image-000000040" in ra and b"image-000000041" not in ra
    meta = json.loads(ra[b"meta"])
    assert meta["run"] == {"seed": 7, "start_index": 0, "count": 40, "geometry": True}
    assert meta["fonts"]["count"] == len(renderer.fonts) and "freetype" in meta["versions"]
    geom = json.loads(ra[b"geom-000000001"])
    assert len(geom["top"]) == len(geom["bottom"]) == 10
    # record k is sample k-1 of the seed, readable by the project's LMDB dataset
    ds = LmdbDataset(a.path, channels=3)
    assert len(ds) == 40
    img, label = ds[4]
    s = renderer.render(4, seed=7)
    assert label == s.label and np.array_equal(img, decode_image(renderer.encode(s.image), channels=3))


def test_start_index_and_resume(renderer: Renderer, tmp_path: Path) -> None:
    ref = records(generate_lmdb(renderer, tmp_path / "ref", 12, seed=1, start_index=5, progress=False).path)

    class Failing(Renderer):
        def render(self, index: int, seed: int = 0, geometry: bool = False):  # type: ignore[override]
            if index == 5 + 9:
                raise KeyboardInterrupt
            return super().render(index, seed, geometry)

    failing = Failing.__new__(Failing)
    failing.__dict__.update(renderer.__dict__)
    with pytest.raises(KeyboardInterrupt):
        generate_lmdb(failing, tmp_path / "out", 12, seed=1, start_index=5, progress=False, chunk=4)
    assert (tmp_path / "out.partial").is_dir() and not (tmp_path / "out").exists()
    src = SourceConfig(path=str(tmp_path / "out.partial" / "data.mdb"), kind="lmdb")
    with pytest.raises(PartialLmdbError, match=r"interrupted write: rerun with --resume \(tools/synth\.py"):
        build_source(src, None, 3, None)  # the synth output names its own tool, not create_lmdb
    with pytest.raises(FileExistsError, match="resume"):
        generate_lmdb(renderer, tmp_path / "out", 12, seed=1, start_index=5, progress=False)
    with pytest.raises(ValueError, match="run.seed"):
        generate_lmdb(renderer, tmp_path / "out", 12, seed=2, start_index=5, resume=True, progress=False)
    res = generate_lmdb(renderer, tmp_path / "out", 12, seed=1, start_index=5, resume=True, progress=False)
    assert res.resumed_from == 8 and res.written == 4  # whole chunks of 4 before the failing one
    assert records(res.path) == ref


def test_synth_dataset_is_deterministic_and_filters_labels(lexicon: Path) -> None:
    over = {**FONTS_ONLY_MPL, "text.lexicon": str(lexicon)}
    ds = SynthDataset("clean", seed=3, length=100, channels=1, overrides=over)
    img, label = ds[17]
    assert img.ndim == 2 and img.shape == (32, 128) and img.dtype == np.uint8
    img2, label2 = SynthDataset("clean", seed=3, length=100, channels=1, overrides=over)[17]
    assert label == label2 and np.array_equal(img, img2)
    assert ds[-1][1] == ds[99][1]
    clone = pickle.loads(pickle.dumps(ds))  # what a spawn DataLoader worker receives
    assert np.array_equal(clone[17][0], img) and clone[17][1] == label
    with pytest.raises(IndexError):
        ds[100]
    lf = LabelFilter(Charset.from_spec("36_lowercase"), max_length=5)
    rgb = SynthDataset("mjsynth", seed=0, length=50, channels=3, overrides=over, label_filter=lf)
    for i in range(10):
        im, lab = rgb[i]
        assert im.shape == (32, 128, 3) and 1 <= len(lab) <= 5 and lab == lab.lower() and lab.isalnum()


def test_registered_as_data_source(lexicon: Path, tmp_path: Path) -> None:
    assert "synth" in SOURCES.names()
    cfg = tmp_path / "synth.yaml"
    cfg.write_text(f"_base_: {Path(__file__).resolve().parents[1] / 'configs/synth/clean.yaml'}\n"
                   f"fonts: {{system: false, dirs: ['@matplotlib']}}\ntext: {{lexicon: {lexicon}}}\n")
    lf = LabelFilter(Charset.from_spec("36_lowercase"), max_length=25)
    ds = build_source(SourceConfig(path=str(cfg), kind="synth"), label_filter=lf, channels=1,
                      benchmark_root=None)
    img, label = ds[0]
    assert img.ndim == 2 and label and set(label) <= set(Charset.from_spec("36_lowercase").chars)
    assert len(ds) >= 10**6


def test_cli_preview_bench_list_and_lmdb(lexicon: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    args = [*MPL_ARGS, "--lexicon", str(lexicon)]
    png = tmp_path / "sheet.png"
    assert main(["--preset", "hard", "--preview", str(png), "--preview-count", "6", "--geometry", *args]) == 0
    assert png.stat().st_size > 1000
    assert main(["--list-fonts", *args]) == 0
    out = capsys.readouterr().out
    assert "usable:" in out and "rejected" in out and "usable words" in out
    assert main(["--bench", "--count", "10", *args]) == 0
    assert "img/s" in capsys.readouterr().out
    out_dir = tmp_path / "db"
    assert main(["--out", str(out_dir), "--count", "6", "--workers", "1", "--gray",
                 "--charset", "36_lowercase", *args]) == 0
    ds = LmdbDataset(out_dir, channels=1)
    assert len(ds) == 6 and all(ds.label(i) == ds.label(i).lower() for i in range(6))
    assert main(["--out", str(out_dir), "--count", "6", *args]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["--preset", "nonexistent", "--preview", str(png), *args]) == 2
    assert main(["--out", str(out_dir), *args]) == 2  # --count missing


def test_sigterm_to_the_process_group_stops_with_a_resumable_partial(lexicon: Path, tmp_path: Path) -> None:
    """``timeout`` or a scheduler signals the whole group, pool workers included: the tool commits what it
    rendered, says how to continue on one line and exits 128 + 15; ``--resume`` then finishes the same
    records as a run that was never stopped."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    out, count = tmp_path / "db", 2400
    args = ["--preset", "mjsynth", "--count", str(count), "--seed", "4", *MPL_ARGS, "--lexicon", str(lexicon)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # STRKIT_CACHE_DIR: this module's private cache
    proc = subprocess.Popen([sys.executable, str(repo / "tools" / "synth.py"), *args, "--workers", "2",
                             "--out", str(out)], cwd=repo, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300  # a hang guard: the test waits for the first commit of 1,000 records
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"synth ended before the first commit: {proc.communicate()}")
            if (out.parent / "db.partial" / "data.mdb").is_file():
                written = records(out.parent / "db.partial").get(b"num-samples", b"0")
                if int(written) >= 1000:
                    break
            if time.monotonic() > deadline:
                pytest.fail("no commit of 1,000 records within 300 s")
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "--resume" in err and err.strip().count("\n") == 0
    assert main([*args, "--workers", "1", "--out", str(out), "--resume"]) == 0
    assert main([*args, "--workers", "1", "--out", str(tmp_path / "ref")]) == 0
    assert records(out) == records(tmp_path / "ref")
