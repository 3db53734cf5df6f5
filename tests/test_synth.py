"""The synthetic-data renderer: presets, determinism, labels in the charset, geometry, fonts, config.

Only matplotlib's bundled fonts are used (a declared dependency), so the tests behave the same on a
machine with or without extra font packages; the font audit cache lives in a temporary folder.
"""

from __future__ import annotations

import string
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import mpl_fonts
from hypothesis import given, settings
from hypothesis import strategies as st

from strkit.charset import Charset
from strkit.config import ConfigError
from strkit.data.synth.config import SynthConfig, load_synth_config, preset_dir, synth_config_from_dict
from strkit.data.synth.font_audit import ASCII94, TemplateBank, audit_face
from strkit.data.synth.fonts import FontSet, discover_fonts, matplotlib_font_dir
from strkit.data.synth.geometry import centerline
from strkit.data.synth.renderer import Renderer
from strkit.data.synth.text import TextSampler, drawable_chars, load_lexicon

WORDS = ["hello", "world", "Street", "coffee", "open", "market", "station", "don't", "café", "x", "taxi",
         "information", "pizza", "Bank", "road", "exit", "museum", "parking", "hotel", "sale"]
FONTS_ONLY_MPL = {"fonts.system": False, "fonts.dirs": ["@matplotlib"]}


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(private_cache_dir: Path) -> None:
    """Font audits and other caches of this module go to a fresh folder (see conftest)."""


@pytest.fixture(scope="module")
def fonts94() -> FontSet:
    return mpl_fonts("94_full")


def make(preset: str, fonts: FontSet | None = None, charset: str = "94_full", **over: object) -> Renderer:
    cfg = load_synth_config(preset, {**FONTS_ONLY_MPL, "text.charset": charset, **over})
    return Renderer(cfg, fonts=fonts if charset == "94_full" else None, words=WORDS)


# ----------------------------------------------------------------------------------------------
# presets and determinism
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["clean", "mjsynth", "hard"])
def test_every_preset_renders(preset: str, fonts94: FontSet) -> None:
    r = make(preset, fonts94)
    c94 = set(Charset.from_spec("94_full").chars)
    for i in range(8):
        s = r.render(i, seed=3)
        assert s.image.dtype == np.uint8 and s.image.shape == (32, 128, 3)
        assert s.label and set(s.label) <= c94 and s.label == s.text
        assert s.image.std() > 1.0  # not a blank image


def test_gray_and_keep_ratio(fonts94: FontSet) -> None:
    r = make("mjsynth", fonts94, **{"output.gray": True, "output.keep_ratio": True, "output.height": 24})
    widths = set()
    for i in range(10):
        img = r.render(i).image
        assert img.ndim == 2 and img.shape[0] == 24 and 16 <= img.shape[1] <= 512
        widths.add(img.shape[1])
    assert len(widths) > 3


def test_sample_is_a_pure_function_of_seed_and_index(fonts94: FontSet) -> None:
    a = make("mjsynth", fonts94)
    order = [5, 0, 9, 5, 2]
    first = {i: a.render(i, seed=11, geometry=True) for i in order}
    b = make("mjsynth", fonts94)  # a fresh renderer, other call order
    for i in sorted(set(order), reverse=True):
        s = b.render(i, seed=11, geometry=True)
        assert np.array_equal(s.image, first[i].image) and s.label == first[i].label
        assert s.geometry == first[i].geometry
    assert not np.array_equal(a.render(0, seed=11).image, a.render(0, seed=12).image)
    assert a.render(1, seed=11).label != a.render(2, seed=11).label or \
        not np.array_equal(a.render(1, seed=11).image, a.render(2, seed=11).image)


def test_picture_backgrounds(fonts94: FontSet, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "pics" / "sub").mkdir(parents=True)
    for k in range(3):
        img = rng.integers(0, 255, (40 + 10 * k, 90, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "pics" / ("sub" if k else "") / f"p{k}.png"), img)
    r = make("clean", fonts94, **{"background.kinds": {"image": 1.0},
                                  "background.image_dirs": [str(tmp_path / "pics")]})
    assert len(r.bg.pool) == 3
    assert all(r.render(i).image.shape == (32, 128, 3) for i in range(4))
    with pytest.raises(FileNotFoundError, match="nothing"):
        make("clean", fonts94, **{"background.kinds": {"image": 1.0},
                                  "background.image_dirs": [str(tmp_path / "nothing")]})


# ----------------------------------------------------------------------------------------------
# labels
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def r36() -> Renderer:
    return make("mjsynth", charset="36_lowercase")


@settings(max_examples=25, deadline=None)
@given(index=st.integers(0, 10**6))
def test_labels_lie_in_the_charset(r36: Renderer, fonts94: FontSet, index: int) -> None:
    c36 = set(Charset.from_spec("36_lowercase").chars)
    s = r36.render(index)
    assert s.label and set(s.label) <= c36 and s.label == s.text.lower() and len(s.label) <= 24
    r94 = make("mjsynth", fonts94, **{"text.max_len": 6})
    s = r94.render(index)
    assert 1 <= len(s.label) <= 6 and set(s.label) <= set(ASCII94)


def test_case_insensitive_charset_draws_both_cases(r36: Renderer) -> None:
    texts = [r36.render(i).text for i in range(60)]
    assert any(t != t.lower() for t in texts)  # capitals are drawn, labels are lowercase


def test_text_kinds_cover_numbers_and_punctuation() -> None:
    kinds = {"digits": 1, "date": 1, "price": 1, "code": 1, "punct": 1}
    cfg = load_synth_config("mjsynth", {"text.kinds": kinds})
    ts = TextSampler(cfg.text, Charset.from_spec("94_full"), words=WORDS)
    rng = np.random.default_rng(0)
    texts = [ts.sample(rng)[0] for _ in range(300)]
    assert any(t.isdigit() for t in texts)
    assert any(set(t) & set(string.punctuation) for t in texts)
    assert "café" not in ts.words and "don't" in ts.words  # filtered by the charset


def test_drawable_chars_and_lexicon_errors(tmp_path: Path) -> None:
    assert drawable_chars(Charset.from_spec("36_lowercase")) == set(string.digits + string.ascii_letters)
    with pytest.raises(ConfigError, match="wordfreq"):
        load_lexicon("wordfreq:en")
    with pytest.raises(ConfigError, match="nope.txt"):
        load_lexicon(str(tmp_path / "nope.txt"))
    f = tmp_path / "words.txt"
    f.write_text("# comment\nalpha\n\n beta \n")
    assert load_lexicon(str(f)) == ["alpha", "beta"]
    assert len(load_lexicon("wordfreq:en:500")) == 500  # the default lexicon source works offline


# ----------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------
def test_geometry_is_inside_the_image_and_encloses_the_text(fonts94: FontSet) -> None:
    over = {"geometry.curve_p": 0.6, "geometry.perspective_p": 1.0, "geometry.rotate_p": 1.0,
            "background.kinds": {"flat": 1.0}, "background.distractor_p": 0.0, "style.outline_p": 0.0,
            "style.shadow_p": 0.0, "style.texture_p": 0.0, "style.weight_p": 0.0, "style.alpha": [1.0, 1.0],
            "style.min_contrast": 80.0, "style.contrast": [120.0, 200.0], "style.low_contrast_p": 0.0,
            "layout.underline_p": 0.0, "degrade.blur_p": 0.0, "degrade.motion_p": 0.0,
            "degrade.lowres_p": 0.0, "degrade.noise_p": 0.0, "degrade.jpeg_p": 0.0}
    r = make("mjsynth", fonts94, **over)
    for i in range(30):
        s = r.render(i, geometry=True)
        g = s.geometry
        h, w = s.image.shape[:2]
        top, bottom = np.array(g["top"]), np.array(g["bottom"])
        assert top.shape == bottom.shape == (10, 2) and (g["width"], g["height"]) == (w, h)
        for pts in (top, bottom):
            assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= w).all()
            assert (pts[:, 1] >= 0).all() and (pts[:, 1] <= h).all()
        assert top[:, 1].mean() < bottom[:, 1].mean()
        mid, heights, angles = centerline(g)
        assert mid.shape == (10, 2) and (heights > 2).all() and (np.abs(angles) < np.pi / 2).all()
        # nearly all ink lies in the polygon top -> reversed bottom (grown by 1.5 px for anti-aliasing)
        bg = s.image[0, 0].astype(np.int32)
        ink = np.abs(s.image.astype(np.int32) - bg).max(axis=2) > 40
        poly = np.concatenate([top, bottom[::-1]])
        region = np.zeros((h * 4, w * 4), np.uint8)
        cv2.fillPoly(region, [np.round(poly * 4).astype(np.int32)], 1)
        region = cv2.dilate(region, np.ones((13, 13), np.uint8))
        region = cv2.resize(region, (w, h), interpolation=cv2.INTER_AREA) > 0
        assert ink.sum() > 20
        assert (ink & region).sum() >= 0.97 * ink.sum(), (i, s.text)


# ----------------------------------------------------------------------------------------------
# fonts
# ----------------------------------------------------------------------------------------------
def test_font_audit_on_matplotlib_fonts() -> None:
    d = matplotlib_font_dir()
    assert d is not None
    bank = TemplateBank(d)
    ok = audit_face(str(d / "DejaVuSans.ttf"), 0, ASCII94, bank)
    assert ok.covered == ASCII94 and not ok.symbol and not ok.duplicates and not ok.caps_only
    assert ok.template_score > 0.9
    assert audit_face(str(d / "cmsy10.ttf"), 0, ASCII94, bank).symbol  # math symbols at letter codes
    cm = audit_face(str(d / "cmr10.ttf"), 0, ASCII94, bank)
    assert not cm.symbol and "<" not in cm.covered and "a" in cm.covered  # '<' draws '¡' in cmr10
    last = audit_face(str(d / "LastResortHE-Regular.ttf"), 0, ASCII94, bank)
    assert last.symbol or last.duplicates  # one box for every character


def test_font_discovery_counts_and_sampling(fonts94: FontSet, tmp_path: Path) -> None:
    rep = fonts94.report
    assert rep.usable == len(fonts94) >= 20 and rep.families >= 5
    assert rep.faces == rep.usable + sum(rep.rejected.values())
    assert rep.rejected["symbol font"] >= 2
    rng = np.random.default_rng(0)
    for _ in range(20):
        i = fonts94.sample(rng, "a<b")
        assert i is not None and {"a", "<", "b"} <= fonts94.faces[i].covered
    assert fonts94.sample(rng, "\u4e2d") is None
    no_dejavu = FontSet(fonts94.faces, weights={"*DejaVu*": 0.0})
    assert all("DejaVu" not in no_dejavu.faces[no_dejavu.draw_index(rng)].path for _ in range(50))
    with pytest.raises(ValueError, match="positive weight"):
        FontSet(fonts94.faces, weights={"*": 0.0})
    cfg = load_synth_config("mjsynth", {"fonts.system": False, "fonts.dirs": [str(tmp_path / "missing")]})
    with pytest.raises(FileNotFoundError, match="missing"):
        discover_fonts(cfg.fonts, Charset.from_spec("94_full"))
    (tmp_path / "empty").mkdir()
    cfg = load_synth_config("mjsynth", {"fonts.system": False, "fonts.dirs": [str(tmp_path / "empty")]})
    with pytest.raises(RuntimeError, match="no usable font"):
        discover_fonts(cfg.fonts, Charset.from_spec("94_full"))



def test_few_system_font_families_warn_with_the_install_command(monkeypatch, caplog) -> None:
    """A bare machine (matplotlib's fonts only) renders, but says how to get the recommended fonts."""
    import strkit.data.synth.fonts as fonts

    monkeypatch.setattr(fonts, "standard_font_dirs", lambda: [matplotlib_font_dir()])
    cfg = load_synth_config("clean", {"fonts.system": True})
    with caplog.at_level("WARNING", logger="strkit"):
        found = discover_fonts(cfg.fonts, Charset.from_spec("36_lowercase"))
    assert found.report.families < fonts.FEW_FAMILIES
    assert any("install_fonts.sh" in r.getMessage() for r in caplog.records)
    caplog.clear()
    cfg = load_synth_config("clean", FONTS_ONLY_MPL)  # the user chose the folders: no advice
    with caplog.at_level("WARNING", logger="strkit"):
        discover_fonts(cfg.fonts, Charset.from_spec("36_lowercase"))
    assert not any("install_fonts.sh" in r.getMessage() for r in caplog.records)

# ----------------------------------------------------------------------------------------------
# config
# ----------------------------------------------------------------------------------------------
def test_mjsynth_preset_equals_the_schema_defaults() -> None:
    data = yaml.safe_load((preset_dir() / "mjsynth.yaml").read_text())
    assert synth_config_from_dict(data, name="mjsynth") == SynthConfig(name="mjsynth")
    for name in ("clean", "hard"):
        assert load_synth_config(name).name == name


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="geometry.curve_q"):
        load_synth_config("mjsynth", ["geometry.curve_q=0.5"])
    with pytest.raises(ConfigError, match="style.outline_p"):
        load_synth_config("mjsynth", ["style.outline_p=2"])
    with pytest.raises(ConfigError, match=r"layout.fill"):
        load_synth_config("mjsynth", {"layout.fill": [0.9, 0.5]})
    with pytest.raises(ConfigError, match="unknown synth preset 'fancy'"):
        load_synth_config("fancy")
    with pytest.raises(ConfigError, match="text.kinds"):
        Renderer(load_synth_config("clean", {**FONTS_ONLY_MPL, "text.kinds": {"poems": 1.0}}), words=WORDS)
    f = tmp_path / "mine.yaml"
    f.write_text(f"_base_: {preset_dir() / 'clean.yaml'}\ngeometry: {{curve_p: 0.5}}\n")
    cfg = load_synth_config(f)
    assert cfg.geometry.curve_p == 0.5 and cfg.name == "mine" and cfg.style.shadow_p == 0.0
