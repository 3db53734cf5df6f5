"""What the synthetic images say: lexicon words with case variants, numbers, dates, prices, codes.

Every draw comes from the ``numpy.random.Generator`` passed in, so a sample's text is a pure function
of its generator. The label of a drawn text is ``charset.normalize(text)``: for a case-insensitive
charset (``36_lowercase``) the image shows ``Hello`` or ``HELLO`` and the label is ``hello``. Only
characters whose normalised form is one charset character are ever drawn, so no character is dropped
between image and label.

Text kinds are registered in :data:`TEXT_KINDS` (``word``, ``digits``, ``alnum``, ``date``, ``price``,
``code``, ``punct``); ``text.kinds`` in the config weights them.

Focus characters (``text.focus_chars``, ``text.focus_p``): with probability ``focus_p`` a drawn text
gets one or two of them, each placed by the rule of its kind (:data:`FOCUS_PLACEMENTS`, chosen by
:func:`focus_kind`): ``currency`` (Unicode category Sc: ``€ £ ¥ ₹``) an amount with the sign before or
after it, ``letter`` (letters and digits: ``ä ß é``) into a word, ``symbol`` (the rest: ``§ ° ©``)
before, after or inside it.
"""

from __future__ import annotations

import hashlib
import string
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from strkit.charset import Charset
from strkit.config import ConfigError
from strkit.data.synth.config import TextConfig
from strkit.registry import Registry

TextKind = Callable[["TextSampler", np.random.Generator], str]
TEXT_KINDS: Registry[str] = Registry("synthetic text kind")
FocusPlacement = Callable[["TextSampler", np.random.Generator, str, str], str]
FOCUS_PLACEMENTS: Registry[str] = Registry("focus character placement")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PUNCT_WRAPS = (("(", ")"), ("[", "]"), ('"', '"'), ("'", "'"), ("<", ">"), ("{", "}"), ("*", "*"))
_PUNCT_SUFFIX = (".", ",", "!", "?", ":", ";", "'s", "...", "!!", "-", "%", "/", "&", "+")
_PUNCT_PREFIX = ("#", "@", "&", "-", "+", "*", "$", "~", "/", "_")
_PUNCT_ALONE = ("!", "?", "&", "#", "@", "%", "...", "--", "+", "*", "/", "?!", "!!", "(", ")", ":", "=",
                "->", "<<", ">>", "$", "^", "|", "\\", "`", "~", "_")


def load_lexicon(spec: str) -> list[str]:
    """Words of a lexicon, in file or frequency order (not yet filtered by a charset).

    Args:
        spec: ``wordfreq:<lang>:<n>`` (``:large`` appended selects wordfreq's large list, needed for
            n > ~30k in languages other than English) or a UTF-8 file with one word per line
            (blank lines and lines starting with ``#`` are skipped; a line is stripped).

    Raises:
        ConfigError: a malformed spec, an unknown language or a missing file.
    """
    if spec.startswith("wordfreq:"):
        parts = spec.split(":")
        if len(parts) not in (3, 4) or not parts[2].isdigit() or (len(parts) == 4 and parts[3] not in
                                                                    ("small", "large", "best")):
            raise ConfigError(f"lexicon '{spec}': expected wordfreq:<lang>:<n>[:small|large], "
                              f"e.g. wordfreq:en:100000")
        import wordfreq

        lang, n = parts[1], int(parts[2])
        wordlist = parts[3] if len(parts) == 4 else "best"
        if lang not in wordfreq.available_languages(wordlist):
            raise ConfigError(f"lexicon '{spec}': wordfreq has no '{wordlist}' list for language '{lang}'")
        return list(wordfreq.top_n_list(lang, n, wordlist=wordlist, ascii_only=False))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"lexicon '{spec}' is neither wordfreq:<lang>:<n> nor an existing file "
                          f"(one word per line)")
    words = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        w = line.strip()
        if w and not w.startswith("#"):
            words.append(w)
    return words


def drawable_chars(charset: Charset) -> frozenset[str]:
    """Characters that may be drawn: their normalised form is exactly one charset character.

    For a case-insensitive charset this adds the uppercase forms of its letters.
    """
    out = set()
    for ch in charset.chars:
        for cand in {ch, ch.upper(), ch.lower()}:
            if len(cand) == 1 and charset.normalize(cand) == (cand.lower() if charset.case_insensitive
                                                                 else cand, 0):
                out.add(cand)
    return frozenset(c for c in out if not c.isspace())


def focus_kind(ch: str) -> str:
    """How a focus character is placed: ``currency`` (Unicode category Sc), ``letter`` (a letter or
    digit) or ``symbol`` (anything else); the name of its :data:`FOCUS_PLACEMENTS` entry."""
    if unicodedata.category(ch) == "Sc":
        return "currency"
    return "letter" if ch.isalnum() else "symbol"


def _char_name(ch: str) -> str:
    return f"{ch!r} (U+{ord(ch):04X})"


class TextSampler:
    """Draw (text to draw, label) pairs.

    Args:
        cfg: the ``text`` section of the synth config.
        charset: labels lie in this charset.
        allowed: characters the fonts can draw (``None``: no restriction); intersected with the
            charset's drawable characters.
        words: the lexicon (already loaded); ``None`` loads ``cfg.lexicon``.

    Attributes:
        focus: ``text.focus_chars`` without repeats (checked).
        focus_drawn: the drawable forms of the focus characters (both cases for a case-insensitive charset).

    Raises:
        ConfigError: no lexicon word survives the charset filter, unknown text kinds, or a focus
            character that is not in the charset or that no font draws (``allowed``).
    """

    def __init__(self, cfg: TextConfig, charset: Charset, allowed: Iterable[str] | None = None,
                 words: Sequence[str] | None = None) -> None:
        self.cfg = cfg
        self.charset = charset
        chars = drawable_chars(charset)
        if allowed is not None:
            chars = chars & frozenset(allowed)
        self.chars = chars
        self.digits = "".join(c for c in string.digits if c in chars)
        self.upper = "".join(c for c in string.ascii_uppercase if c in chars)
        self.lower = "".join(c for c in string.ascii_lowercase if c in chars)
        self.letters = "".join(sorted(c for c in chars if c.isalpha()))
        self.alnum = "".join(sorted(c for c in chars if c.isalnum()))
        self.focus = self._focus_chars(cfg.focus_chars, allowed is not None)
        labels = {charset.normalize(c)[0] for c in self.focus}
        self.focus_drawn = frozenset(c for c in chars if charset.normalize(c)[0] in labels)
        raw = list(words) if words is not None else load_lexicon(cfg.lexicon)
        self.words = self._filter_words(raw)
        if not self.words:
            raise ConfigError(f"lexicon '{cfg.lexicon}': no word of length {cfg.min_len}..{cfg.max_len} can "
                              f"be drawn in charset '{charset.name}' with the available fonts")
        w = word_weights(self.words, cfg)
        self._word_cdf = np.cumsum(w) / w.sum()
        self._kinds, self._kind_cdf = _categorical(cfg.kinds, TEXT_KINDS.names(), "text.kinds")
        self._cases, self._case_cdf = _categorical(cfg.case, list(_CASES), "text.case")

    def _focus_chars(self, spec: str, fonts_known: bool) -> str:
        """``text.focus_chars`` without repeats, each checked: drawable in the charset, drawn by a font."""
        focus = "".join(dict.fromkeys(spec))
        drawable = drawable_chars(self.charset)
        for ch in focus:
            if ch.isspace():
                raise ConfigError(f"text.focus_chars holds the space {_char_name(ch)}; texts are single words, "
                                  f"give only visible characters")
            if ch not in drawable:
                raise ConfigError(f"text.focus_chars: {_char_name(ch)} is not in charset '{self.charset.name}'; "
                                  f"add it to the charset file (one character per line, --charset FILE) or "
                                  f"remove it from --focus-chars / text.focus_chars")
            if fonts_known and ch not in self.chars:
                raise ConfigError(f"text.focus_chars: no usable font draws {_char_name(ch)}; install a font "
                                  f"that has it (see docs/fonts.md) or add a folder of such fonts with --fonts "
                                  f"(fonts.dirs); tools/synth.py --list-fonts -v lists the usable faces")
        return focus

    def _filter_words(self, raw: Sequence[str]) -> list[str]:
        seen: set[str] = set()
        out = []
        lo, hi = self.cfg.min_len, self.cfg.max_len
        for w in raw:
            if lo <= len(w) <= hi and w not in seen and all(c in self.chars for c in w):
                seen.add(w)
                out.append(w)
        return out

    @property
    def lexicon_hash(self) -> str:
        """SHA-1 of the filtered word list (stored in the LMDB meta for reproducibility)."""
        return hashlib.sha1("\n".join(self.words).encode("utf-8")).hexdigest()

    # -- primitives used by the kinds ------------------------------------------------------------
    def word(self, rng: np.random.Generator) -> str:
        """A lexicon word (weighted by ``rank_power``) in a random case variant."""
        i = int(np.searchsorted(self._word_cdf, rng.random(), side="right"))
        w = self.words[min(i, len(self.words) - 1)]
        case = self._cases[int(np.searchsorted(self._case_cdf, rng.random(), side="right"))]
        v = _CASES[case](w)
        return v if all(c in self.chars for c in v) else w

    def pick(self, rng: np.random.Generator, options: Sequence[str]) -> str:
        """One element of ``options`` whose characters can all be drawn ('' if none can)."""
        ok = [o for o in options if all(c in self.chars for c in o)]
        return ok[int(rng.integers(len(ok)))] if ok else ""

    def chars_from(self, rng: np.random.Generator, alphabet: str, n: int) -> str:
        """``n`` characters drawn uniformly from ``alphabet`` ('' if it is empty)."""
        if not alphabet:
            return ""
        return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=n))

    # -- sampling ----------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        """A text to draw and its label (``charset.normalize(text)``), ``min_len <= len <= max_len``."""
        for _ in range(8):
            kind = self._kinds[int(np.searchsorted(self._kind_cdf, rng.random(), side="right"))]
            text = TEXT_KINDS.get(kind)(self, rng)
            text = "".join(c for c in text if c in self.chars)[: self.cfg.max_len]
            if len(text) >= self.cfg.min_len:
                break
        else:
            text = self.word(rng)
        if self.focus and self.cfg.focus_p > 0 and rng.random() < self.cfg.focus_p:
            text = self.with_focus(rng, text)
        label, dropped = self.charset.normalize(text)
        assert dropped == 0 and len(label) == len(text), (text, label)
        return text, label

    def with_focus(self, rng: np.random.Generator, text: str) -> str:
        """``text`` with one (3 in 4) or two focus characters placed into it (see :data:`FOCUS_PLACEMENTS`),
        then cut to ``max_len`` (focus characters kept) and padded with digits to ``min_len``."""
        n = 1 if rng.random() < 0.75 else 2
        for _ in range(n):
            ch = self.focus[int(rng.integers(len(self.focus)))]
            text = FOCUS_PLACEMENTS.get(focus_kind(ch))(self, rng, text, ch)
        text = _fit(text, self.cfg.max_len, self.focus_drawn)
        if len(text) < self.cfg.min_len:
            text += self.chars_from(rng, self.digits or self.alnum or self.focus, self.cfg.min_len - len(text))
        return text

    def drawable(self, text: str) -> str:
        """``text`` without the characters that cannot be drawn."""
        return "".join(c for c in text if c in self.chars)


def _fit(text: str, max_len: int, keep: frozenset[str]) -> str:
    """``text`` cut to ``max_len`` characters: others are removed from the right before ``keep``'s."""
    if len(text) <= max_len:
        return text
    chars = list(text)
    for i in range(len(chars) - 1, -1, -1):
        if len(chars) <= max_len:
            break
        if chars[i] not in keep:
            del chars[i]
    return "".join(chars[:max_len])


def word_weights(words: Sequence[str], cfg: TextConfig) -> np.ndarray:
    """Sampling weight of every lexicon word (see ``TextConfig``: ``rank_power``, ``char_balance``,
    ``length_balance``), float64, positive.

    ``char_balance`` c: weight × (count of the commonest character / count of the word's rarest
    character) ** c, counts over the lexicon's characters as drawn (``rank_power`` weighted).
    ``length_balance`` b: the weights are then rescaled per length so that a word's length follows
    ``(1 − b) · P(length) + b / (number of lengths present)``.
    """
    ranks = np.arange(len(words), dtype=np.float64)
    w = (ranks + 1.0) ** (-cfg.rank_power) if cfg.rank_power else np.ones_like(ranks)
    if cfg.char_balance > 0:
        counts: dict[str, float] = {}
        for word, wi in zip(words, w, strict=True):
            for ch in word:
                counts[ch] = counts.get(ch, 0.0) + wi
        top = max(counts.values())
        rarity = np.array([top / min(counts[ch] for ch in word) for word in words])
        w = w * rarity ** cfg.char_balance
    if cfg.length_balance > 0:
        lengths = np.array([len(word) for word in words])
        present = np.unique(lengths)
        mass = np.array([w[lengths == n].sum() for n in present]) / w.sum()
        target = (1.0 - cfg.length_balance) * mass + cfg.length_balance / len(present)
        w = w * (target / mass)[np.searchsorted(present, lengths)]
    return w


_CASES: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "title": lambda w: w[:1].upper() + w[1:].lower(),
    "upper": str.upper,
    "asis": lambda w: w,
}


def _categorical(weights: dict[str, float], known: Sequence[str], key: str) -> tuple[list[str], np.ndarray]:
    """Names with positive weight (in sorted order) and their cumulative probabilities."""
    unknown = sorted(set(weights) - set(known))
    if unknown:
        raise ConfigError(f"synth config '{key}': unknown name(s) {unknown}; "
                          f"known: {', '.join(sorted(known))}")
    names = sorted(k for k, v in weights.items() if v > 0)
    if not names:
        raise ConfigError(f"synth config '{key}': at least one weight must be > 0, got {weights}")
    w = np.array([weights[k] for k in names], dtype=np.float64)
    cdf = np.cumsum(w) / w.sum()
    cdf[-1] = 1.0
    return names, cdf


# ------------------------------------------------------------------------------------------------
# Text kinds
# ------------------------------------------------------------------------------------------------
@TEXT_KINDS.register("word")
def _word(s: TextSampler, rng: np.random.Generator) -> str:
    w = s.word(rng)
    if rng.random() < s.cfg.affix_p:
        r = rng.random()
        if r < 0.6:
            w = w + s.pick(rng, _PUNCT_SUFFIX)
        elif r < 0.8:
            w = s.pick(rng, _PUNCT_PREFIX) + w
        else:
            a, b = _PUNCT_WRAPS[int(rng.integers(len(_PUNCT_WRAPS)))]
            if a in s.chars and b in s.chars:
                w = a + w + b
    return w


@TEXT_KINDS.register("digits")
def _digits(s: TextSampler, rng: np.random.Generator) -> str:
    n = int(rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 10], p=[.14, .2, .18, .16, .1, .08, .06, .05, .03]))
    d = s.chars_from(rng, s.digits, n)
    r = rng.random()
    if r < 0.15 and len(d) >= 4:  # thousands separators: 12,500
        head = len(d) % 3 or 3
        groups = [d[:head]] + [d[i:i + 3] for i in range(head, len(d), 3)]
        sep = s.pick(rng, (",", "."))
        d = sep.join(groups) if sep else d
    elif r < 0.25 and len(d) >= 5:  # phone-like: 555-1234
        d = d[:3] + s.pick(rng, ("-", ".", "/")) + d[3:]
    elif r < 0.32 and len(d) >= 2:  # decimal: 3.14
        k = int(rng.integers(1, len(d)))
        d = d[:k] + s.pick(rng, (".", ",")) + d[k:]
    return d


@TEXT_KINDS.register("alnum")
def _alnum(s: TextSampler, rng: np.random.Generator) -> str:
    n = int(rng.integers(1, 11))
    r = rng.random()
    if r < 0.4 and s.upper:
        alphabet = s.upper + s.digits
    elif r < 0.6 and s.lower:
        alphabet = s.lower + s.digits
    else:
        alphabet = s.alnum
    return s.chars_from(rng, alphabet, n)


@TEXT_KINDS.register("date")
def _date(s: TextSampler, rng: np.random.Generator) -> str:
    y = int(rng.integers(1950, 2036))
    m = int(rng.integers(1, 13))
    d = int(rng.integers(1, 29))
    sep = s.pick(rng, ("/", "-", "."))
    forms = [f"{d:02d}{sep}{m:02d}{sep}{y}", f"{y}{sep}{m:02d}{sep}{d:02d}", f"{m}{sep}{d}{sep}{y % 100:02d}",
             f"{d:02d}{sep}{m:02d}", str(y), f"{_MONTHS[m - 1]}{d}", f"{d}{_MONTHS[m - 1].upper()}{y}",
             f"{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}",
             f"{_MONTHS[m - 1]}.{y % 100:02d}"]
    return forms[int(rng.integers(len(forms)))]


def _amount(s: TextSampler, rng: np.random.Generator) -> str:
    """An amount of money: ``7``, ``129``, ``4.50``, ``1299,99`` (digits not yet filtered)."""
    whole = str(int(10 ** rng.uniform(0, 4)))
    cents = f"{int(rng.integers(0, 100)):02d}"
    return whole + (s.pick(rng, (".", ",")) + cents if rng.random() < 0.6 else "")


@TEXT_KINDS.register("price")
def _price(s: TextSampler, rng: np.random.Generator) -> str:
    value = _amount(s, rng)
    r = rng.random()
    if r < 0.55:
        return s.pick(rng, ("$", "$", "#")) + value
    if r < 0.7:
        return value + s.pick(rng, ("$", "%", "-", "/-"))
    if r < 0.85:
        return f"{int(rng.integers(1, 100))}%"
    return value + s.pick(rng, ("USD", "EUR", "GBP", "p", "c", "kg", "g", "ml", "km"))


@TEXT_KINDS.register("code")
def _code(s: TextSampler, rng: np.random.Generator) -> str:
    up, dg = s.upper or s.lower, s.digits
    pats = (
        lambda: s.chars_from(rng, up, int(rng.integers(1, 4))) + s.pick(rng, ("-", "", "")) +
        s.chars_from(rng, dg, int(rng.integers(1, 5))),
        lambda: s.chars_from(rng, dg, int(rng.integers(1, 4))) +
        s.chars_from(rng, up, int(rng.integers(1, 3))),
        lambda: s.pick(rng, ("No.", "NO.", "#", "Rt.", "Ex.", "A-", "B", "Tel:", "ID:")) +
        s.chars_from(rng, dg, int(rng.integers(1, 5))),
        lambda: s.chars_from(rng, up, 2) + s.chars_from(rng, dg, 2) + s.chars_from(rng, up, 3),
        lambda: s.chars_from(rng, up + dg, int(rng.integers(4, 9))),
        lambda: s.word(rng) + s.pick(rng, ("-", "_", ".", "")) +
        s.chars_from(rng, dg, int(rng.integers(1, 4))),
        lambda: "www." + s.word(rng).lower() + s.pick(rng, (".com", ".org", ".net", ".co.uk")),
        lambda: s.word(rng).lower() + "@" + s.word(rng).lower() + ".com",
    )
    return pats[int(rng.integers(len(pats)))]()


@TEXT_KINDS.register("punct")
def _punct(s: TextSampler, rng: np.random.Generator) -> str:
    r = rng.random()
    if r < 0.3:
        return s.pick(rng, _PUNCT_ALONE)
    if r < 0.65:
        a, b = _PUNCT_WRAPS[int(rng.integers(len(_PUNCT_WRAPS)))]
        inner = s.word(rng) if rng.random() < 0.7 else s.chars_from(rng, s.alnum, int(rng.integers(1, 4)))
        return a + inner + b
    if r < 0.85:
        return s.word(rng) + s.pick(rng, _PUNCT_SUFFIX)
    return s.word(rng) + s.pick(rng, ("-", "&", "/", "+", "'")) + s.word(rng)


# ------------------------------------------------------------------------------------------------
# Focus character placements: (sampler, rng, text, character) -> text holding the character
# ------------------------------------------------------------------------------------------------
@FOCUS_PLACEMENTS.register("currency")
def _focus_currency(s: TextSampler, rng: np.random.Generator, text: str, ch: str) -> str:
    """An amount with the sign before (``€12.50``, 3 in 5) or after it (``12,50€``); the text is replaced,
    or, when it already holds a focus character, extended (``€12/£10``)."""
    value = s.drawable(_amount(s, rng))
    price = (ch + value) if rng.random() < 0.6 else (value + ch)
    if any(c in s.focus_drawn for c in text):
        return text + s.pick(rng, ("/", "-")) + price
    return price


@FOCUS_PLACEMENTS.register("letter")
def _focus_letter(s: TextSampler, rng: np.random.Generator, text: str, ch: str) -> str:
    """Into a word: in place of one of its letters (1 in 2), else inserted; in capitals in an upper-case
    word when the charset ignores case. A text without letters (an amount, a date) gets a lexicon word
    instead, or beside it when it already holds a focus character (``€12-Straße``)."""
    if not any(c.isalpha() for c in text):
        word = _into_word(s, rng, s.word(rng), ch)
        return text + s.pick(rng, ("-", "/")) + word if any(c in s.focus_drawn for c in text) else word
    return _into_word(s, rng, text, ch)


def _into_word(s: TextSampler, rng: np.random.Generator, text: str, ch: str) -> str:
    """``ch`` in place of a letter of ``text`` (1 in 2, when it has one) or inserted into it."""
    if s.charset.case_insensitive and text.isupper() and ch.upper() in s.chars:
        ch = ch.upper()
    letters = [i for i, c in enumerate(text) if c.isalpha() and c not in s.focus_drawn]
    if letters and rng.random() < 0.5:
        i = letters[int(rng.integers(len(letters)))]
        return text[:i] + ch + text[i + 1:]
    i = int(rng.integers(len(text) + 1))
    return text[:i] + ch + text[i:]


@FOCUS_PLACEMENTS.register("symbol")
def _focus_symbol(s: TextSampler, rng: np.random.Generator, text: str, ch: str) -> str:
    """After the text (``25°``, 9 in 20), before it (``§12``, 7 in 20) or inside it (``A§B``)."""
    r = rng.random()
    if r < 0.45 or len(text) < 2:
        return text + ch
    if r < 0.8:
        return ch + text
    i = int(rng.integers(1, len(text)))
    return text[:i] + ch + text[i:]
