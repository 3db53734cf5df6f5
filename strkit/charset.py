"""Charsets, label normalisation and the evaluation protocols.

A :class:`Charset` is an ordered tuple of unique characters: a named preset (``36_lowercase``,
``62_mixed``, ``94_full``, defined here so they work from an installed package; editable copies live in
``data/charsets/``) or a UTF-8 file with one character per line.

Labels pass through :meth:`Charset.normalize` (NFKC, lowercase when the charset is case-insensitive,
characters outside the charset dropped). Datasets use a :class:`LabelFilter`, which also skips labels
that become empty or longer than the model's maximum length, and counts everything it does.

:func:`protocol_filter` implements the evaluation protocols (``36``, ``62``, ``94``) applied to both
ground truth and prediction before comparing them. The label codecs are :mod:`strkit.codecs`.
"""

from __future__ import annotations

import logging
import string
import unicodedata
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

logger = logging.getLogger("strkit")


# Preset name -> its characters, in order. Read-only; the files under data/charsets/ mirror these.
_PRESET_CHARS: Mapping[str, str] = MappingProxyType({
    "36_lowercase": string.digits + string.ascii_lowercase,
    "62_mixed": string.digits + string.ascii_lowercase + string.ascii_uppercase,
    "94_full": string.digits + string.ascii_lowercase + string.ascii_uppercase + string.punctuation,
})


PRESETS: tuple[str, ...] = ("36_lowercase", "62_mixed", "94_full")


def describe_char(ch: str) -> str:
    """``'x' (U+0078)``: a character readable in an error message even when invisible."""
    return f"{ch!r} (U+{ord(ch):04X})"


@dataclass(frozen=True, eq=True)
class Charset:
    """An ordered set of characters a model can read.

    Args:
        name: preset name or a free label (the file stem for a charset read from a file).
        chars: the characters, each a single code point, unique, unchanged by NFKC (a label is
            NFKC-normalised, so a character that NFKC rewrites could never occur in one).

    Raises:
        ValueError: empty charset, an entry that is not one character, a duplicate, a newline, or a
            character that NFKC normalisation changes.
    """

    name: str
    chars: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)
    _case_insensitive: bool = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        chars = tuple(self.chars)
        if not chars:
            raise ValueError(f"charset '{self.name}' is empty: it needs at least one character")
        index: dict[str, int] = {}
        for i, ch in enumerate(chars):
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(f"charset '{self.name}': entry {i} is {ch!r}; every entry must be exactly "
                                 f"one character")
            if ch in "\n\r":
                raise ValueError(f"charset '{self.name}': a newline cannot be a charset character")
            nfkc = unicodedata.normalize("NFKC", ch)
            if nfkc != ch:
                raise ValueError(f"charset '{self.name}': character {describe_char(ch)} becomes {nfkc!r} under "
                                 f"NFKC normalisation, so no normalised label can contain it; replace it "
                                 f"with {nfkc!r} or remove it")
            if ch in index:
                raise ValueError(f"charset '{self.name}': character {describe_char(ch)} appears twice "
                                 f"(entries {index[ch]} and {i}); each character must appear once")
            index[ch] = i
        object.__setattr__(self, "chars", chars)
        object.__setattr__(self, "_index", index)
        cased = [c for c in chars if c.islower() and len(c.upper()) == 1 and c.upper() != c]
        insensitive = bool(cased) and not any(c.upper() in index for c in cased)
        object.__setattr__(self, "_case_insensitive", insensitive)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> Charset:
        """One of :data:`PRESETS` (``36_lowercase``, ``62_mixed``, ``94_full``)."""
        if name not in _PRESET_CHARS:
            raise ValueError(f"unknown charset preset '{name}'. Presets: {', '.join(PRESETS)}")
        return cls(name, tuple(_PRESET_CHARS[name]))

    @classmethod
    def from_file(cls, path: str | Path) -> Charset:
        """Read a UTF-8 file with one character per line.

        A line holding only a space means the space character; blank lines (empty or several
        whitespace characters) are ignored; surrounding whitespace of a one-character line is ignored.
        A character written as a decomposed sequence (``e`` + combining accent) is composed (NFKC).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: a line holding several characters, a duplicate (with both line numbers), or no
                character at all.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"charset file '{path}' does not exist; give a preset name "
                                    f"({', '.join(PRESETS)}) or the path of a UTF-8 file with one "
                                    f"character per line")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise ValueError(f"charset file '{path}' is not valid UTF-8 ({err}); save it as UTF-8") from None
        chars: list[str] = []
        line_of: dict[str, int] = {}
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw[:-1] if raw.endswith("\r") else raw
            if len(line) != 1:
                line = line.strip()
                if not line:
                    continue
                if len(line) > 1:
                    composed = unicodedata.normalize("NFKC", line)
                    if len(composed) != 1:
                        raise ValueError(f"charset file '{path}', line {lineno}: {line!r} holds {len(line)} "
                                         f"characters; write exactly one character per line")
                    line = composed
            if line in line_of:
                raise ValueError(f"charset file '{path}': character {describe_char(line)} appears twice "
                                 f"(lines {line_of[line]} and {lineno}); remove one of them")
            line_of[line] = lineno
            chars.append(line)
        if not chars:
            raise ValueError(f"charset file '{path}' holds no character; write one character per line")
        try:
            return cls(path.stem, tuple(chars))
        except ValueError as err:
            raise ValueError(f"charset file '{path}': {err}") from None

    @classmethod
    def from_spec(cls, spec: str | Path) -> Charset:
        """A preset name (see :data:`PRESETS`) or the path of a charset file (see :meth:`from_file`)."""
        if isinstance(spec, str) and spec in _PRESET_CHARS:
            return cls.preset(spec)
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"charset '{spec}' is neither a preset ({', '.join(PRESETS)}) nor an "
                                    f"existing file; give a preset name or the path of a UTF-8 file with "
                                    f"one character per line")
        return cls.from_file(path)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form stored in checkpoints: ``{'name': str, 'chars': list[str]}``."""
        return {"name": self.name, "chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Charset:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, Mapping) or "chars" not in d:
            raise ValueError(f"not a charset record (expected a mapping with 'name' and 'chars'): {d!r:.200}")
        return cls(str(d.get("name", "custom")), tuple(d["chars"]))

    def to_file(self, path: str | Path) -> None:
        """Write the charset as a UTF-8 file, one character per line (readable by :meth:`from_file`)."""
        Path(path).write_text("".join(ch + "\n" for ch in self.chars), encoding="utf-8")

    # -- container protocol -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, ch: object) -> bool:
        return ch in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.chars)

    def index(self, ch: str) -> int:
        """0-based position of ``ch``; ``KeyError`` if it is not in the charset."""
        return self._index[ch]

    def __repr__(self) -> str:
        return f"Charset(name={self.name!r}, size={len(self.chars)})"

    # -- labels -----------------------------------------------------------------------------------
    @property
    def case_insensitive(self) -> bool:
        """True when the charset holds lowercase letters but none of their uppercase forms.

        Labels are then lowercased before filtering, so ``"Hello"`` is read as ``"hello"`` instead of
        losing its capital.
        """
        return self._case_insensitive

    def split_label(self, label: str) -> tuple[str, str]:
        """NFKC, lowercase if :attr:`case_insensitive`, then split into (kept, dropped) characters."""
        text = unicodedata.normalize("NFKC", label)
        if self._case_insensitive:
            text = text.lower()
        index = self._index
        kept = "".join(ch for ch in text if ch in index)
        if len(kept) == len(text):
            return kept, ""
        return kept, "".join(ch for ch in text if ch not in index)

    def normalize(self, label: str) -> tuple[str, int]:
        """NFKC, lowercase if :attr:`case_insensitive`, drop characters not in the charset.

        Returns:
            ``(clean label, number of characters dropped)``; the count is in normalised characters
            (``'ﬁ'`` counts as the two characters ``'fi'``).
        """
        kept, dropped = self.split_label(label)
        return kept, len(dropped)

    def adapt(self, text: str) -> str:
        """Map a prediction made with a bigger training charset onto this (test) charset.

        Lowercases if :attr:`case_insensitive` and drops characters not in this charset.
        """
        if self._case_insensitive:
            text = text.lower()
        return "".join(ch for ch in text if ch in self._index)


_STAT_KEYS = ("seen", "kept", "chars_stripped", "labels_with_stripped_chars", "skipped_empty",
              "skipped_too_long")


class LabelFilter:
    """Callable used by datasets: raw label -> cleaned label, or ``None`` to skip the sample.

    Cleaning is :meth:`Charset.normalize`; a label that becomes empty or is longer than
    ``max_length`` is skipped. Every outcome is counted in :attr:`stats` (keys ``seen``, ``kept``,
    ``chars_stripped``, ``labels_with_stripped_chars``, ``skipped_empty``, ``skipped_too_long``) and the
    stripped characters themselves in :attr:`stripped_chars`, so nothing is dropped silently.

    Args:
        charset: the model's (training) charset.
        max_length: longest label kept, in characters (>= 1).
        name: what is filtered, used in :meth:`report` (e.g. a dataset name).
    """

    def __init__(self, charset: Charset, max_length: int, name: str = "labels") -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.charset = charset
        self.max_length = int(max_length)
        self.name = name
        self.stats: dict[str, int] = dict.fromkeys(_STAT_KEYS, 0)
        self.stripped_chars: Counter[str] = Counter()

    def __call__(self, label: str) -> str | None:
        stats = self.stats
        stats["seen"] += 1
        clean, dropped = self.charset.split_label(label)
        if dropped:
            stats["chars_stripped"] += len(dropped)
            stats["labels_with_stripped_chars"] += 1
            self.stripped_chars.update(dropped)
        if not clean:
            stats["skipped_empty"] += 1
            return None
        if len(clean) > self.max_length:
            stats["skipped_too_long"] += 1
            return None
        stats["kept"] += 1
        return clean

    @property
    def needs_warning(self) -> bool:
        """True when a character was stripped or a label skipped."""
        s = self.stats
        return bool(s["chars_stripped"] or s["skipped_empty"] or s["skipped_too_long"])

    def report(self) -> str:
        """One human-readable line summarising the counts."""
        s = self.stats
        line = (f"{self.name}: {s['seen']} seen, {s['kept']} kept, {s['skipped_empty']} skipped (empty after "
                f"filtering), {s['skipped_too_long']} skipped (longer than {self.max_length}), "
                f"{s['chars_stripped']} characters outside charset '{self.charset.name}' stripped from "
                f"{s['labels_with_stripped_chars']} labels")
        if self.stripped_chars:
            common = ", ".join(f"{ch!r}x{n}" for ch, n in self.stripped_chars.most_common(8))
            line += f" (most common: {common})"
        return line

    def warn_if_needed(self) -> bool:
        """Log :meth:`report` as a warning on logger ``strkit`` if anything was stripped or skipped.

        Returns:
            whether a warning was logged.
        """
        if self.needs_warning:
            logger.warning("label filter: %s", self.report())
            return True
        return False

    def merge(self, other: LabelFilter) -> None:
        """Add another filter's counts to this one (e.g. filters that ran in data-loader workers)."""
        for key, value in other.stats.items():
            self.stats[key] = self.stats.get(key, 0) + value
        self.stripped_chars.update(other.stripped_chars)

    def reset(self) -> None:
        """Set every count back to zero."""
        self.stats = dict.fromkeys(_STAT_KEYS, 0)
        self.stripped_chars = Counter()


# protocol -> (lowercase first?, characters kept). Read-only.
_PROTOCOLS: Mapping[str, tuple[bool, frozenset[str]]] = MappingProxyType({
    "36": (True, frozenset(string.digits + string.ascii_lowercase)),
    "62": (False, frozenset(string.digits + string.ascii_letters)),
    "94": (False, frozenset(string.digits + string.ascii_letters + string.punctuation)),
})


PROTOCOLS: tuple[str, ...] = ("36", "62", "94")


def protocol_filter(text: str, protocol: str = "36") -> str:
    """Text as compared under an evaluation protocol (applied to ground truth and prediction alike).

    All protocols apply NFKC first. ``'36'``: lowercase, keep ``[0-9a-z]``. ``'62'``: keep
    ``[0-9A-Za-z]`` with case. ``'94'``: keep printable ASCII without space.

    Raises:
        ValueError: unknown protocol (the valid ones are listed).
    """
    key = str(protocol)
    if key not in _PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    lower, keep = _PROTOCOLS[key]
    text = unicodedata.normalize("NFKC", text)
    if lower:
        text = text.lower()
    return "".join(ch for ch in text if ch in keep)
