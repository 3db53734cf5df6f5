"""Realistic synthesis: colour palettes fitted on real crops, distractor text at the
crop borders, length and character balancing, the ``realistic`` preset and the font install command.

Only matplotlib's bundled fonts are used (as in ``test_synth.py``); the font audit cache lives in a
temporary folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import mpl_fonts

from strkit.charset import Charset
from strkit.cli.synth import main as synth_main
from strkit.config import ConfigError
from strkit.data.benchmarks import BenchmarkLeakError
from strkit.data.synth import renderer as renderer_module
from strkit.data.synth.colors import LUMA
from strkit.data.synth.config import PRESET_NAMES, load_synth_config
from strkit.data.synth.fonts import FontSet, lists_dir
from strkit.data.synth.generate import _same_run
from strkit.data.synth.palette import crop_colors, fit_palette, load_palette, palette_dir, write_palette
from strkit.data.synth.renderer import Renderer
from strkit.data.synth.text import TextSampler, load_lexicon

REPO = Path(__file__).resolve().parents[1]
WORDS = ["hello", "world", "Street", "coffee", "open", "market", "station", "taxi", "information", "pizza",
         "Bank", "road", "exit", "museum", "parking", "hotel", "sale", "jazz", "quiz", "oxygen"]
FONTS_ONLY_MPL = {"fonts.system": False, "fonts.dirs": ["@matplotlib"]}
PLAIN = {"background.kinds": {"flat": 1.0}, "background.distractor_p": 0.0, "style.outline_p": 0.0,
         "style.shadow_p": 0.0, "style.texture_p": 0.0, "style.weight_p": 0.0, "style.alpha": [1.0, 1.0],
         "style.gray_p": 0.0, "layout.underline_p": 0.0, "degrade.blur_p": 0.0, "degrade.motion_p": 0.0,
         "degrade.lowres_p": 0.0, "degrade.noise_p": 0.0, "degrade.jpeg_p": 0.0}


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(private_cache_dir: Path) -> None:
    """Font audits and other caches of this module go to a fresh folder (see conftest)."""


@pytest.fixture(scope="module")
def fonts94() -> FontSet:
    return mpl_fonts("94_full")


def make(preset: str, fonts: FontSet, **over: object) -> Renderer:
    return Renderer(load_synth_config(preset, {**FONTS_ONLY_MPL, **over}), fonts=fonts, words=WORDS)


# ----------------------------------------------------------------------------------------------
# palette fitting
# ----------------------------------------------------------------------------------------------
PAIRS = [((20, 20, 20), (235, 230, 220)), ((250, 250, 250), (30, 60, 140)), ((200, 30, 30), (245, 240, 200)),
         ((240, 220, 40), (20, 90, 40))]


def word_crop(text_rgb: tuple[int, int, int], bg_rgb: tuple[int, int, int], seed: int = 0,
              word: str = "Word") -> np.ndarray:
    """A hand-made crop: ``word`` in ``text_rgb`` on ``bg_rgb`` with a little noise (uint8 RGB)."""
    img = np.zeros((48, 160, 3), np.float32) + np.array(bg_rgb, np.float32)
    mask = np.zeros((48, 160), np.uint8)
    cv2.putText(mask, word, (14, 36), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 255, 4, cv2.LINE_AA)
    a = (mask.astype(np.float32) / 255)[:, :, None]
    img = img * (1 - a) + np.array(text_rgb, np.float32) * a
    img += np.random.default_rng(seed).normal(0, 3, img.shape[:2])[:, :, None]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def test_crop_colors_recovers_text_and_background() -> None:
    for k, (t, b) in enumerate(PAIRS):
        c = crop_colors(word_crop(t, b, seed=k))
        assert c is not None
        assert np.abs(np.subtract(c.text, t)).max() <= 8, (c, t)  # not swapped, close to the truth
        assert np.abs(np.subtract(c.bg, b)).max() <= 8, (c, b)
        assert 0.05 < c.text_share < 0.5 and c.noise < 6
    assert crop_colors(np.full((32, 100, 3), 128, np.uint8)) is None  # nothing to separate


def write_folder(root: Path, name: str, pairs: list, per_pair: int = 6) -> Path:
    folder = root / name
    (folder / "images").mkdir(parents=True)
    lines = []
    for k, (t, b) in enumerate(pairs):
        for j in range(per_pair):
            rel = f"images/{k:02d}_{j:02d}.png"
            cv2.imwrite(str(folder / rel), cv2.cvtColor(word_crop(t, b, seed=10 * k + j), cv2.COLOR_RGB2BGR))
            lines.append(f"{rel}\tWord")
    (folder / "labels.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_fit_palette_on_a_folder_and_load_it(tmp_path: Path) -> None:
    folder = write_folder(tmp_path, "MY_train", PAIRS[:2], per_pair=6)
    doc = fit_palette([folder], size=2)
    assert doc["sources"] == [{"name": "MY_train", "crops": 12, "used": 12}]
    assert len(doc["pairs"]) == 2 and sum(p["weight"] for p in doc["pairs"]) == pytest.approx(1.0)
    for t, b in PAIRS[:2]:
        assert any(np.abs(np.subtract(p["text"], t)).max() <= 8 and np.abs(np.subtract(p["bg"], b)).max() <= 8
                   for p in doc["pairs"]), (t, b, doc["pairs"])
    path = write_palette(doc, tmp_path / "pal.json")
    pal = load_palette(str(path))
    assert len(pal) == 2 and pal.weight.sum() == pytest.approx(1.0)
    assert json.loads(path.read_text())["summary"]["crops"] == 12
    # the command line writes the same palette
    out = tmp_path / "cli.json"
    assert synth_main(["--fit-palette", str(out), "--from", str(folder), "--palette-size", "2"]) == 0
    assert json.loads(out.read_text())["pairs"] == doc["pairs"]


def test_fit_palette_refuses_benchmark_test_sets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    test_set = write_folder(tmp_path, "IIIT5K_3000", PAIRS[:1], per_pair=2)
    with pytest.raises(BenchmarkLeakError, match="IIIT5K_3000"):
        fit_palette([test_set])
    assert synth_main(["--fit-palette", str(tmp_path / "x.json"), "--from", str(test_set)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "IIIT5K_3000" in err and "\n" not in err
    assert not (tmp_path / "x.json").exists()
    root = tmp_path / "bench"
    other = write_folder(root, "crops", PAIRS[:1], per_pair=2)  # under the benchmark root, not a *_train split
    train = write_folder(root, "SVT_train", PAIRS[:1], per_pair=2)
    with pytest.raises(BenchmarkLeakError, match="_train"):
        fit_palette([other], benchmark_root=root)
    assert len(fit_palette([train], benchmark_root=root)["pairs"]) == 1


def test_shipped_palette_is_fitted_on_training_sets_only() -> None:
    pal = load_palette("real")
    doc = json.loads((palette_dir() / "real.json").read_text())
    assert {s["name"] for s in doc["sources"]} == {"IIIT5K_train", "SVT_train", "IC15_train"}
    assert 100 <= len(pal) <= 512 and pal.weight.sum() == pytest.approx(1.0)
    assert 0.2 < doc["summary"]["dark_text_share"] < 0.8 and np.median(pal.contrast) > 40
    with pytest.raises(ConfigError, match="style.palette 'nope'"):
        load_palette("nope")


# ----------------------------------------------------------------------------------------------
# palette in the renderer
# ----------------------------------------------------------------------------------------------
def test_renderer_takes_colours_from_the_palette(fonts94: FontSet, tmp_path: Path) -> None:
    pairs = [{"text": [20, 20, 20], "bg": [230, 225, 200], "weight": 1},
             {"text": [250, 240, 60], "bg": [30, 40, 120], "weight": 1},
             {"text": [180, 30, 40], "bg": [240, 240, 240], "weight": 1},
             {"text": [128, 128, 128], "bg": [132, 128, 128], "weight": 50}]  # too little contrast: unused
    doc = {"format": "strkit-synth-palette", "version": 1, "pairs": pairs}
    path = tmp_path / "pal.json"
    path.write_text(json.dumps(doc))
    jitter = 4.0
    r = make("mjsynth", fonts94, **PLAIN, **{"style.palette": str(path), "style.palette_p": 1.0,
                                               "style.palette_jitter": jitter})
    assert len(r.palette) == 3
    for i in range(24):
        img = r.render(i, seed=5).image.reshape(-1, 3).astype(np.float32)
        bg = np.median(img, axis=0)
        dist = np.abs(img - bg).max(axis=1)
        text = np.median(img[dist >= 0.99 * dist.max()], axis=0)  # the strokes' fully covered pixels
        ok = [j for j, p in enumerate(pairs[:3]) if np.abs(bg - p["bg"]).max() <= jitter + 1
              and np.abs(text - p["text"]).max() <= jitter + 3]
        assert ok, (i, bg, text)
        assert abs(float((text - bg) @ LUMA)) >= r.cfg.style.min_contrast
    with pytest.raises(ConfigError, match="min_contrast"):
        make("mjsynth", fonts94, **{"style.palette": str(path), "style.palette_p": 1.0,
                                    "style.min_contrast": 200.0})
    # the LMDB meta records the pairs in use; resuming with other pairs is refused
    meta = r.meta()
    assert meta["palette"]["pairs"] == 3 and len(meta["palette"]["sha1"]) == 40
    other = make("mjsynth", fonts94, **{"style.palette": "real", "style.palette_p": 1.0}).meta()
    run = {"seed": 0, "start_index": 0, "geometry": False}
    assert _same_run({**meta, "run": run}, {**other, "config": meta["config"], "run": run}) == ["palette"]
    assert "palette" not in make("mjsynth", fonts94).meta()


# ----------------------------------------------------------------------------------------------
# distractor text at the borders
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("placed_onto_the_word", [False, True])
def test_border_text_stays_outside_the_word_and_the_label(fonts94: FontSet, placed_onto_the_word: bool,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if placed_onto_the_word:  # negative gaps put the fragments over the word: the guard must remove them
        monkeypatch.setattr(renderer_module, "_BORDER_GAP", {k: (-0.6, -0.3) for k in renderer_module._BORDER_GAP})
    # strong rotation, perspective and curves: fragments placed beside a slanted word would reach into it
    over = {**PLAIN, "geometry.curve_p": 0.4, "geometry.rotate_p": 1.0, "geometry.rotate_std": 10.0,
            "geometry.rotate_max": 20.0, "geometry.perspective_p": 1.0, "geometry.perspective": [0.2, 0.5],
            "layout.fill": [0.5, 0.7], "layout.margin_x": [0.3, 1.0], "text.kinds": {"word": 1.0}}
    without = make("mjsynth", fonts94, **over)
    with_ = make("mjsynth", fonts94, **over, **{"layout.border_text_p": 1.0})
    drawn = 0
    for i in range(40):
        a, b = without.render(i, seed=2, geometry=True), with_.render(i, seed=2, geometry=True)
        assert (a.label, a.text, a.geometry) == (b.label, b.text, b.geometry)
        diff = np.argwhere(np.abs(a.image.astype(int) - b.image.astype(int)).max(axis=2) > 0)
        if not len(diff):
            continue
        drawn += 1
        poly = np.concatenate([b.geometry["top"], b.geometry["bottom"][::-1]]).astype(np.float32)
        inside = [cv2.pointPolygonTest(poly, (float(x) + 0.5, float(y) + 0.5), False) >= 0 for y, x in diff]
        assert not any(inside), (i, b.label)
    assert drawn >= 10  # the fragments are really drawn


# ----------------------------------------------------------------------------------------------
# length and character balancing
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lexicon() -> list[str]:
    return load_lexicon("wordfreq:en:20000")


def draw_texts(words: list[str], n: int = 2000, **over: float) -> list[str]:
    cfg = load_synth_config("mjsynth", {"text.kinds": {"word": 1.0}, "text.case": {"lower": 1.0},
                                        **{f"text.{k}": v for k, v in over.items()}})
    ts = TextSampler(cfg.text, Charset.from_spec("94_full"), words=words)
    rng = np.random.default_rng(7)
    return [ts.sample(rng)[0] for _ in range(n)]


def test_length_balance_flattens_the_length_histogram(lexicon: list[str]) -> None:
    base, half, flat = (draw_texts(lexicon, length_balance=b) for b in (0.0, 0.5, 1.0))

    def long_share(texts: list[str]) -> float:
        return float(np.mean([len(t) >= 11 for t in texts]))

    def peak(texts: list[str]) -> float:
        return float(np.bincount([len(t) for t in texts]).max() / len(texts))

    assert long_share(base) < long_share(half) < long_share(flat)
    assert peak(flat) < peak(base)
    assert draw_texts(lexicon, length_balance=0.5) == half  # deterministic


def test_char_balance_raises_the_share_of_rare_characters(lexicon: list[str]) -> None:
    def rare_share(texts: list[str]) -> float:
        chars = "".join(texts)
        return sum(chars.count(c) for c in "jqxzkv") / len(chars)

    base, strong = draw_texts(lexicon), draw_texts(lexicon, char_balance=1.0)
    assert rare_share(strong) > 1.3 * rare_share(base)
    with pytest.raises(ConfigError, match="text.char_balance"):
        load_synth_config("mjsynth", {"text.char_balance": 1.5})


# ----------------------------------------------------------------------------------------------
# the preset
# ----------------------------------------------------------------------------------------------
def test_realistic_preset_turns_the_levers_on_and_is_deterministic(fonts94: FontSet) -> None:
    assert "realistic" in PRESET_NAMES
    cfg = load_synth_config("realistic")
    assert cfg.name == "realistic" and cfg.style.palette == "real" and cfg.style.palette_p > 0
    assert cfg.layout.border_text_p > 0 and cfg.text.length_balance > 0 and cfg.text.char_balance > 0
    assert 0 < cfg.geometry.curve_p < load_synth_config("hard").geometry.curve_p
    a, b = make("realistic", fonts94), make("realistic", fonts94)
    first = {i: a.render(i, seed=4, geometry=True) for i in (6, 1, 3)}
    for i in (3, 1, 6):
        s = b.render(i, seed=4, geometry=True)
        assert np.array_equal(s.image, first[i].image) and s.label == first[i].label
        assert s.geometry == first[i].geometry


# ----------------------------------------------------------------------------------------------
# fonts: one package list, one command
# ----------------------------------------------------------------------------------------------
SCRIPT = REPO / "tools" / "install_fonts.sh"


def package_list() -> list[str]:
    text = (lists_dir() / "debian-packages.txt").read_text()
    return [w for line in text.splitlines() for w in line.split("#")[0].split()]


def test_font_list_docs_and_script_agree() -> None:
    packages = package_list()
    assert len(packages) == len(set(packages)) >= 50 and all(p.startswith("fonts-") for p in packages)
    printed = subprocess.run([str(SCRIPT), "--print"], capture_output=True, text=True, check=True).stdout.split()
    assert printed == packages
    doc = (REPO / "docs" / "fonts.md").read_text()
    assert "sudo tools/install_fonts.sh" in doc and "debian-packages.txt" in doc
    for block in re.findall(r"```bash\n(.*?)```", doc, flags=re.S):  # the list is not copied into the docs
        assert not re.search(r"\bfonts-[a-z]", block), block
    named = set(re.findall(r"(?<![\w-])fonts-[a-z0-9-]*[a-z0-9]", doc))
    assert named - set(packages) <= {"fonts-noto-core", "fonts-dejavu-core"}  # left out on purpose / base


def fake_tools(tmp_path: Path, uid: int) -> tuple[dict[str, str], Path]:
    bin_dir = tmp_path / f"bin{uid}"
    bin_dir.mkdir()
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    log = tmp_path / f"apt{uid}.log"
    (bin_dir / "fake-apt-get").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "APT_GET": str(bin_dir / "fake-apt-get")}
    return env, log


def test_install_fonts_script(tmp_path: Path) -> None:
    env, log = fake_tools(tmp_path, 1000)  # not root: one line, nothing installed
    res = subprocess.run([str(SCRIPT)], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "root" in res.stderr
    assert not log.exists()
    res = subprocess.run([str(SCRIPT)], capture_output=True, text=True,
                         env={**env, "APT_GET": str(tmp_path / "no-such-apt-get")})
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "not found" in res.stderr
    env, log = fake_tools(tmp_path, 0)  # root: apt-get update, then one install of the whole list
    res = subprocess.run([str(SCRIPT)], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert log.read_text().splitlines() == ["update", "install -y --no-install-recommends " + " ".join(package_list())]
    assert "installing" in res.stdout
