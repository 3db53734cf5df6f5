"""Focus characters (``text.focus_chars``, ``text.focus_p``): synthetic words that hold the characters a
fine-tuned model newly reads (``€``, ``£`` added to the 94-character charset).

Only matplotlib's bundled fonts are used: DejaVu and STIX draw ``€`` and ``£``, the Computer Modern faces
(``cmr10`` ...) are usable for the charset's letters and digits but lack both (FreeType draws their
``.notdef`` box), so a focus sample drawn in one of them would show a tofu box.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFont

from strkit.charset import Charset
from strkit.cli.synth import main
from strkit.config import ConfigError
from strkit.data.lmdb.reader import LmdbDataset
from strkit.data.synth.config import load_synth_config
from strkit.data.synth.font_audit import NOTDEF_PROBE
from strkit.data.synth.fonts import FontFace, FontSet, discover_fonts
from strkit.data.synth.renderer import Renderer, glyph_run, sample_rng
from strkit.data.synth.text import TextSampler, focus_kind

WORDS = ["hello", "world", "Street", "coffee", "open", "market", "station", "taxi", "information", "pizza",
         "Bank", "road", "exit", "museum", "parking", "hotel", "sale", "x"]
FONTS_ONLY_MPL = {"fonts.system": False, "fonts.dirs": ["@matplotlib"]}
MPL_ARGS = ["--no-system-fonts", "--fonts", "@matplotlib", "--no-progress"]
EURO = Charset("euro", tuple(string.digits + string.ascii_lowercase + string.ascii_uppercase +
                             string.punctuation + "€£"))
# straight text on a flat background, no degradation, the width following the text: the image's ink has
# the aspect ratio of the font's own rendering of the text
STRAIGHT = {"geometry.rotate_p": 0.0, "geometry.perspective_p": 0.0, "layout.tracking_p": 0.0,
            "style.outline_p": 0.0, "background.kinds": {"flat": 1.0}, "output.height": 64,
            "output.keep_ratio": True, "output.max_width": 1024,
            **{f"degrade.{k}_p": 0.0 for k in ("blur", "lowres", "noise", "jpeg")}}


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("STRKIT_CACHE_DIR", str(tmp_path_factory.mktemp("strkit_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def fonts_euro() -> FontSet:
    return discover_fonts(load_synth_config("clean", FONTS_ONLY_MPL).fonts, EURO)


def make(fonts: FontSet, preset: str = "clean", **over: object) -> Renderer:
    cfg = load_synth_config(preset, {**FONTS_ONLY_MPL, **over})
    return Renderer(cfg, charset=EURO, fonts=fonts, words=WORDS)


def sampler(charset: Charset = EURO, allowed: set[str] | None = None, words: list[str] = WORDS,
            **over: object) -> TextSampler:
    return TextSampler(load_synth_config("mjsynth", over).text, charset, allowed=allowed, words=words)


def holds_focus(label: str, chars: str = "€£") -> bool:
    return any(c in label for c in chars)


# ----------------------------------------------------------------------------------------------
# texts
# ----------------------------------------------------------------------------------------------
def test_focus_p_one_puts_a_focus_char_in_every_label(fonts_euro: FontSet) -> None:
    r = make(fonts_euro, **{"text.focus_chars": "€£", "text.focus_p": 1.0})
    samples = [r.render(i, seed=4) for i in range(200)]
    assert all(holds_focus(s.label) for s in samples)
    assert {c for s in samples for c in s.label} >= {"€", "£"}
    assert all(s.label == s.text and set(s.label) <= set(EURO.chars) for s in samples)
    assert all(1 <= len(s.label) <= 24 for s in samples)
    # currency signs stand before or after an amount
    assert all(any(c.isdigit() for c in s.label) for s in samples)
    assert any(s.label.startswith(("€", "£")) for s in samples)
    assert any(s.label.endswith(("€", "£")) for s in samples)


def test_focus_share_follows_focus_p() -> None:
    s = sampler(**{"text.focus_chars": "€£", "text.focus_p": 0.3})
    n = 2000
    hits = sum(holds_focus(s.sample(sample_rng(7, i))[1]) for i in range(n))
    sd = (0.3 * 0.7 / n) ** 0.5
    assert abs(hits / n - 0.3) < 4.5 * sd, hits / n


def test_focus_texts_are_deterministic_and_off_by_default(fonts_euro: FontSet) -> None:
    over = {"text.focus_chars": "€£", "text.focus_p": 0.5}
    a, b = sampler(**over), sampler(**over)
    order = [9, 0, 31, 9, 4]
    first = {i: a.sample(sample_rng(2, i)) for i in order}
    assert all(b.sample(sample_rng(2, i)) == first[i] for i in sorted(set(order), reverse=True))
    assert any(holds_focus(first[i][1]) for i in order) and not all(holds_focus(first[i][1]) for i in order)
    # focus_p = 0 leaves every existing data set as it was (no extra random draw)
    off, plain = sampler(**{"text.focus_chars": "€£"}), sampler()
    assert all(off.sample(sample_rng(2, i)) == plain.sample(sample_rng(2, i)) for i in range(50))
    # rendered samples: a pure function of (seed, index)
    r1, r2 = make(fonts_euro, **{"text.focus_chars": "€", "text.focus_p": 0.5}), \
        make(fonts_euro, **{"text.focus_chars": "€", "text.focus_p": 0.5})
    for i in (3, 1):
        x, y = r1.render(i, seed=5), r2.render(i, seed=5)
        assert x.label == y.label and x.font == y.font and np.array_equal(x.image, y.image)


def test_focus_placement_by_kind() -> None:
    assert [focus_kind(c) for c in "€£¥$ßä7§°"] == ["currency"] * 4 + ["letter"] * 3 + ["symbol"] * 2
    cs = Charset("de", tuple(string.digits + string.ascii_lowercase + "äß§"))  # case-insensitive
    s = sampler(cs, **{"text.focus_chars": "ß§ä", "text.focus_p": 1.0, "text.max_len": 6})
    texts = [s.sample(sample_rng(0, i)) for i in range(300)]
    assert all(len(label) <= 6 and any(c in label for c in "ß§ä") for _, label in texts)
    assert all(label == text.lower() for text, label in texts)
    # a letter goes into a word, a symbol before, after or inside it
    assert any(t[0] not in "ß§äÄ" and t[-1] not in "ß§äÄ" and "ß" in t for t, _ in texts)
    assert any(t.startswith("§") for t, _ in texts) and any(t.endswith("§") for t, _ in texts)
    assert any("Ä" in t for t, _ in texts)  # capital in an upper-case word, label lowercase
    # a letter never lands in a bare number: a text without letters gets a word holding it
    digits = sampler(cs, words=WORDS[:-1], **{"text.focus_chars": "ß", "text.focus_p": 1.0,  # not "x"
                                              "text.kinds": {"digits": 1.0}})
    texts = [digits.sample(sample_rng(3, i))[0] for i in range(100)]
    assert all("ß" in t and any(c.isalpha() and c != "ß" for c in t) for t in texts)
    # cut to max_len and padded to min_len, the focus character kept
    short = sampler(**{"text.focus_chars": "€", "text.focus_p": 1.0, "text.min_len": 3, "text.max_len": 4})
    labels = [short.sample(sample_rng(1, i))[1] for i in range(200)]
    assert all(3 <= len(lab) <= 4 and "€" in lab for lab in labels)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------
def test_focus_char_outside_the_charset_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"'€' \(U\+20AC\) is not in charset '94_full'.*charset file"):
        sampler(Charset.preset("94_full"), **{"text.focus_chars": "€", "text.focus_p": 0.5})
    with pytest.raises(ConfigError, match="space"):
        sampler(Charset("sp", (*"abc", " ")), **{"text.focus_chars": " ", "text.focus_p": 0.5})
    with pytest.raises(ConfigError, match="text.focus_chars' is empty"):
        load_synth_config("clean", {"text.focus_p": 0.5})
    with pytest.raises(ConfigError, match="text.focus_p"):
        load_synth_config("clean", {"text.focus_chars": "€", "text.focus_p": 1.5})
    # the same charset character is fine: € is drawn when the fonts draw it
    assert sampler(**{"text.focus_chars": "€", "text.focus_p": 0.5}, allowed=set(EURO.chars)).focus == "€"


def test_focus_char_no_font_draws_fails_up_front() -> None:
    btc = Charset("btc", tuple(string.digits + string.ascii_letters + "₿"))
    cfg = load_synth_config("clean", {**FONTS_ONLY_MPL, "text.focus_chars": "₿", "text.focus_p": 0.5})
    with pytest.raises(ConfigError, match=r"no usable font draws '₿' \(U\+20BF\)"):
        Renderer(cfg, charset=btc, words=WORDS)
    # a letter is asked of every face by fonts.coverage=alnum: the error names it too
    cjk = Charset("cjk", tuple(string.digits + string.ascii_lowercase + "字"))
    cfg = load_synth_config("clean", {**FONTS_ONLY_MPL, "text.focus_chars": "字", "text.focus_p": 0.5})
    with pytest.raises(RuntimeError, match=r"no font found draws '字' \(U\+5B57\) of charset 'cjk'"):
        Renderer(cfg, charset=cjk, words=WORDS)


# ----------------------------------------------------------------------------------------------
# fonts and pixels: the € is really drawn
# ----------------------------------------------------------------------------------------------
def _font(face: FontFace, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(face.path, size, index=face.index, layout_engine=ImageFont.Layout.BASIC)


def _aspect(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    return (xs.max() - xs.min() + 1) / (ys.max() - ys.min() + 1)


def test_focus_samples_use_faces_that_draw_the_glyph(fonts_euro: FontSet) -> None:
    lacking = [f for f in fonts_euro.faces if "€" not in f.covered]
    assert len(lacking) >= 3  # the cm* faces: usable, but only a .notdef box for €
    probe = lacking[0]
    tofu, _, _ = glyph_run(_font(probe, 40), "€")
    assert np.array_equal(tofu, glyph_run(_font(probe, 40), NOTDEF_PROBE)[0])  # what a wrong choice shows
    r = make(fonts_euro, **{"text.focus_chars": "€", "text.focus_p": 1.0})
    faces = {f"{f.family} {f.style}": f for f in fonts_euro.faces}
    used = set()
    for i in range(60):
        s = r.render(i, seed=8)
        face = faces[s.font]
        used.add(face.family)
        glyph, _, _ = glyph_run(_font(face, 40), "€")
        notdef, _, _ = glyph_run(_font(face, 40), NOTDEF_PROBE)
        assert glyph.size and glyph.max() > 128, s.font  # ink, not an empty fallback
        assert glyph.shape != notdef.shape or not np.array_equal(glyph, notdef), s.font  # not tofu
    assert len(used) >= 3  # still a mixture of families


def test_rendered_focus_sample_shows_the_glyph(fonts_euro: FontSet, tmp_path: Path) -> None:
    r = make(fonts_euro, **{"text.focus_chars": "€", "text.focus_p": 1.0, **STRAIGHT})
    faces = {f"{f.family} {f.style}": f for f in fonts_euro.faces}
    for i in range(10):
        s = r.render(i, seed=1)
        lum = s.image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        border = np.concatenate([lum[0], lum[-1], lum[:, 0], lum[:, -1]])
        d = np.abs(lum - np.median(border))
        seen = _aspect(d > 0.35 * d.max())
        font = _font(faces[s.font], 160)
        with_euro = _aspect(glyph_run(font, s.text)[0] > 90)
        without = _aspect(glyph_run(font, s.text.replace("€", ""))[0] > 90)
        # the ink spans the € too: the image has the shape of the text with it, not without it
        assert abs(seen / with_euro - 1) < 0.06, (s.text, s.font, seen, with_euro, without)
        assert abs(seen / with_euro - 1) < abs(seen / without - 1)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def test_cli_writes_focus_samples(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    charset = tmp_path / "my_charset.txt"
    EURO.to_file(charset)
    lex = tmp_path / "words.txt"
    lex.write_text("\n".join(WORDS))
    args = ["--preset", "clean", "--charset", str(charset), "--lexicon", str(lex), "--workers", "1", *MPL_ARGS]
    out = tmp_path / "euro"
    assert main(["--focus-chars", "€£", "--focus-p", "0.5", "--count", "60", "--out", str(out), *args]) == 0
    ds = LmdbDataset(out, channels=3)
    labels = [ds.label(i) for i in range(len(ds))]
    assert len(labels) == 60 and all(set(lab) <= set(EURO.chars) for lab in labels)
    assert {"€", "£"} <= {c for lab in labels for c in lab}
    assert 15 <= sum(holds_focus(lab) for lab in labels) <= 45
    out2 = tmp_path / "euro_set"
    assert main(["--set", "text.focus_chars=€", "text.focus_p=1", "--count", "20", "--out", str(out2),
                 *args]) == 0
    ds2 = LmdbDataset(out2, channels=3)
    assert all("€" in ds2.label(i) for i in range(len(ds2)))
    capsys.readouterr()
    assert main(["--list-fonts", "--set", "text.focus_chars=€", "text.focus_p=1", *args]) == 0
    assert "focus character '€' (U+20AC): drawn by 16 of 22 faces" in capsys.readouterr().out
    # errors: one line, exit status 2, before any work
    assert main(["--focus-chars", "€", "--count", "5", "--out", str(tmp_path / "a"), *args]) == 2
    assert "--focus-chars needs --focus-p" in capsys.readouterr().err
    args94 = [a if a != str(charset) else "94_full" for a in args]
    assert main(["--focus-chars", "€", "--focus-p", "0.5", "--count", "5", "--out", str(tmp_path / "b"),
                 *args94]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'€' (U+20AC) is not in charset '94_full'" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
