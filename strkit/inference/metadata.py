"""What an exported model carries so that it can be run without its checkpoint or PyTorch model.

An ONNX file stores it as JSON under the ``metadata_props`` key :data:`METADATA_KEY`; a TorchScript
file stores the same JSON as the extra file ``strkit.json``. The JSON (format ``strkit-export``,
version :data:`VERSION`) holds:

- ``charset`` (``{'name', 'chars'}``), ``codec`` (``kind`` ``ctc`` / ``attention``, ``num_classes``,
  ``max_length``, ``special_ids`` e.g. ``{'blank': 0}`` or ``{'eos': 0, 'bos': 1, 'pad': 2}``): enough
  to turn the logits into text. CTC: class 0 is the blank, character ``i`` of the charset is class
  ``i + 1``; greedy decoding takes the argmax per frame, collapses repeats, drops blanks. Attention:
  character ``i`` is class ``i + 3``; decoding takes the argmax per step (BOS and PAD excluded) up to EOS.
- ``decoder``: the decoder's config (``name`` and its decoding options such as ``beam_width``; a
  lexicon is stored inline as a list of words).
- ``input``: the image the graph expects, ``float32`` ``B×C×H×W`` with ``H = img_h`` and ``C =
  channels`` (1 gray, 3 RGB): resize to ``img_h×img_w`` (or, with ``keep_ratio``, to height ``img_h``
  and width ``min(img_w, round(w·img_h/h))``, padded on the right with ``pad_value``), then
  ``x · scale + offset`` (``x / 127.5 − 1``, so ``[-1, 1]``). ``dynamic_batch`` / ``dynamic_width``
  say which axes may vary.
- ``output``: ``logits`` ``B×L×K`` (L = time steps for CTC, ``max_length + 1`` for attention).
- ``temperature``: the calibration temperature ``T`` (a number in ``(0, 100]``; absent = 1): decode
  ``logits / T`` (softmax of ``logits / T``) so that confidences are calibrated; readings do not change.

An exported file may come from anyone, so the metadata is checked against a schema before it is used
(:func:`validate_metadata`): every field has its type and size limits, the decoder's options are plain
numbers (no strings, so none of them can name a file to open) and its lexicon is an inline list of
words; anything else is refused with a :class:`MetadataError` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from strkit.charset import Charset
from strkit.checkpoint import CheckpointError
from strkit.codecs import CODECS, AttentionCodec, CTCCodec, build_codec

if TYPE_CHECKING:  # pragma: no cover
    from strkit.config import DataConfig
    from strkit.data.transforms import ImageTransform
    from strkit.models.recognizer import RecognitionModel

METADATA_KEY = "strkit"
TORCHSCRIPT_EXTRA_FILE = "strkit.json"
FORMAT = "strkit-export"
VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
SPECIAL_ID_NAMES = ("blank", "eos", "bos", "pad")
NORMALIZE_SCALE = 1.0 / 127.5  # x / 127.5 - 1, as in strkit.data.transforms.collate
NORMALIZE_OFFSET = -1.0
#: File names of a model bundle (``tools/export.py --bundle``; ``Recognizer.from_pretrained`` reads them):
#: an inference-only checkpoint, its fp32 ONNX export, and its int8 export when that kept the accuracy.
BUNDLE_CHECKPOINT, BUNDLE_ONNX, BUNDLE_INT8 = "default.pt", "default.onnx", "default.int8.onnx"


class ExportedModelError(CheckpointError):
    """An exported model file (ONNX, TorchScript) cannot be loaded. A :class:`CheckpointError`, so that
    tools reporting unreadable model files report these too."""


class MetadataError(ExportedModelError):
    """An exported model carries no (or unreadable, or invalid) strkit metadata."""


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------
MAX_METADATA_BYTES = 64 << 20  # the JSON text; a 1M-word inline lexicon is ~10 MB
MAX_TEXT = 256  # names, versions, pipeline
MAX_CHARSET = 100_000  # characters
MAX_CHAR_LENGTH = 16  # code points of one charset entry
MAX_LEXICON_WORDS = 2_000_000
MAX_WORD_LENGTH = 256
MAX_LABEL_LENGTH = 4096  # codec.max_length
MAX_IMAGE_SIDE = 16384  # input.img_h / img_w
MAX_OPTION_VALUE = 1e9  # |a numeric decoder option|
MAX_OPTION_ITEMS = 64  # items of a list-valued decoder option
MAX_TEMPERATURE = 100.0  # the calibration temperature lies in (0, MAX_TEMPERATURE]
CHANNELS = (1, 3)


def _fail(where: str, name: str, problem: str) -> MetadataError:
    return MetadataError(f"{where}: strkit metadata field '{name}' {problem}; the file was not written by "
                         f"strkit's exporter as it is (re-export the model with tools/export.py)")


def _type_name(value: Any) -> str:
    return "null" if value is None else {"str": "a string", "list": "a list", "dict": "an object",
                                         "bool": "a boolean", "int": "an integer",
                                         "float": "a number"}.get(type(value).__name__, type(value).__name__)


def _get(d: dict[str, Any], key: str, name: str, where: str, required: bool = True) -> Any:
    if key not in d:
        if required:
            raise MetadataError(f"{where}: strkit metadata is incomplete: field '{name}' is missing; re-export "
                                f"the model with tools/export.py")
        return None
    return d[key]


def _object(value: Any, name: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, name, f"must be an object, got {_type_name(value)}")
    return value


def _text(value: Any, name: str, where: str, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise _fail(where, name, f"must be a string, got {_type_name(value)}")
    if len(value) > max_len:
        raise _fail(where, name, f"is {len(value)} characters long (at most {max_len})")
    return value


def _integer(value: Any, name: str, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, name, f"must be an integer, got {_type_name(value)}")
    if not low <= value <= high:
        raise _fail(where, name, f"is {value}, outside {low}..{high}")
    return value


def _number(value: Any, name: str, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, name, f"must be a number, got {_type_name(value)}")
    if not (math.isfinite(value) and low <= value <= high):
        raise _fail(where, name, f"is {value}, outside {low:g}..{high:g}")
    return float(value)


def _temperature(value: Any, name: str, where: str) -> float:
    """A calibration temperature: a number in ``(0, MAX_TEMPERATURE]``."""
    t = _number(value, name, where, 0.0, MAX_TEMPERATURE)
    if t <= 0.0:
        raise _fail(where, name, f"is {value}, outside (0, {MAX_TEMPERATURE:g}]")
    return t


def _boolean(value: Any, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, name, f"must be true or false, got {_type_name(value)}")
    return value


def _text_list(value: Any, name: str, where: str, max_items: int, max_len: int, min_items: int = 0) -> list[str]:
    if not isinstance(value, list):
        raise _fail(where, name, f"must be a list of strings, got {_type_name(value)}")
    if not min_items <= len(value) <= max_items:
        raise _fail(where, name, f"holds {len(value)} items (allowed: {min_items}..{max_items})")
    for i, item in enumerate(value):
        if not isinstance(item, str) or len(item) > max_len:
            got = f"{len(item)} characters" if isinstance(item, str) else _type_name(item)
            raise _fail(where, f"{name}[{i}]", f"must be a string of at most {max_len} characters, got {got}")
    return value


def _lexicon(value: Any, name: str, where: str) -> None:
    """``decoder.lexicon``: ``null`` or an inline list of words. A string would be a file path for the
    decoder to open: never taken from a model file."""
    if value is None:
        return
    if isinstance(value, str):
        raise _fail(where, name, "must be an inline list of words, got a string (a file path is never opened "
                                 "from a model file's metadata)")
    _text_list(value, name, where, MAX_LEXICON_WORDS, MAX_WORD_LENGTH)


def _decoder_option(value: Any, name: str, where: str) -> None:
    """A decoding option: a number, a boolean, ``null`` or a short list of numbers; never a string."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int | float):
        _number(value, name, where, -MAX_OPTION_VALUE, MAX_OPTION_VALUE)
        return
    if isinstance(value, list):
        if len(value) > MAX_OPTION_ITEMS:
            raise _fail(where, name, f"holds {len(value)} items (at most {MAX_OPTION_ITEMS})")
        for i, item in enumerate(value):
            _number(item, f"{name}[{i}]", where, -MAX_OPTION_VALUE, MAX_OPTION_VALUE)
        return
    raise _fail(where, name, f"must be a number, a boolean, null or a list of numbers, got {_type_name(value)}")


#: Decoder config keys with a check of their own; every other key is a numeric option.
DECODER_FIELDS: dict[str, Callable[[Any, str, str], Any]] = {
    "name": lambda v, n, w: _text(v, n, w, 64),
    "lexicon": _lexicon,
}


def _validate_decoder(value: Any, where: str) -> None:
    if value is None:
        return
    for key, item in _object(value, "decoder", where).items():
        name = f"decoder.{key}"
        if len(key) > 64:
            raise _fail(where, name[:80], "has a name longer than 64 characters")
        DECODER_FIELDS.get(key, _decoder_option)(item, name, where)


def _validate_charset_codec(d: dict[str, Any], where: str) -> None:
    charset = _object(_get(d, "charset", "charset", where), "charset", where)
    if "name" in charset:
        _text(charset["name"], "charset.name", where)
    _text_list(_get(charset, "chars", "charset.chars", where), "charset.chars", where, MAX_CHARSET,
               MAX_CHAR_LENGTH, min_items=1)
    if any(not c for c in charset["chars"]):
        raise _fail(where, "charset.chars", "holds an empty string")
    codec = _object(_get(d, "codec", "codec", where), "codec", where)
    kind = _text(_get(codec, "kind", "codec.kind", where), "codec.kind", where, 64)
    if kind not in CODECS.names():
        raise _fail(where, "codec.kind", f"is '{kind}', not one of: {', '.join(CODECS.names())}")
    classes = _integer(_get(codec, "num_classes", "codec.num_classes", where), "codec.num_classes", where, 1,
                       MAX_CHARSET + len(SPECIAL_ID_NAMES))
    _integer(_get(codec, "max_length", "codec.max_length", where), "codec.max_length", where, 1, MAX_LABEL_LENGTH)
    special = codec.get("special_ids")
    if special is not None:
        for key, value in _object(special, "codec.special_ids", where).items():
            if key not in SPECIAL_ID_NAMES:
                raise _fail(where, f"codec.special_ids.{key[:40]}", f"is not one of: {', '.join(SPECIAL_ID_NAMES)}")
            _integer(value, f"codec.special_ids.{key}", where, 0, classes - 1)


def _validate_input(d: dict[str, Any], where: str) -> None:
    inp = _object(_get(d, "input", "input", where), "input", where)
    for key in ("img_h", "img_w"):
        _integer(_get(inp, key, f"input.{key}", where), f"input.{key}", where, 1, MAX_IMAGE_SIDE)
    channels = _integer(_get(inp, "channels", "input.channels", where), "input.channels", where, 1, 3)
    if channels not in CHANNELS:
        raise _fail(where, "input.channels", f"is {channels}, not 1 (gray) or 3 (RGB)")
    for key in ("keep_ratio", "dynamic_batch", "dynamic_width"):
        if key in inp:
            _boolean(inp[key], f"input.{key}", where)
    if "pad_value" in inp:
        _number(inp["pad_value"], "input.pad_value", where, -1.0, 1.0)
    for key in ("name", "dtype", "layout", "resize"):
        if key in inp:
            _text(inp[key], f"input.{key}", where)
    if "normalize" in inp:
        _object(inp["normalize"], "input.normalize", where)


def validate_metadata(d: dict[str, Any], where: str = "model") -> None:
    """Check the metadata JSON ``d`` of an exported model against the schema (types, value ranges, sizes).

    Raises:
        MetadataError: naming the first field that is missing or invalid.
    """
    _integer(d.get("version", 0), "version", where, 0, 1 << 30)
    for key in ("strkit_version", "pipeline"):
        if key in d:
            _text(d[key], key, where)
    _validate_charset_codec(d, where)
    _validate_decoder(d.get("decoder"), where)
    _validate_input(d, where)
    if "temperature" in d:
        _temperature(d["temperature"], "temperature", where)
    for key in ("output", "extra"):
        if d.get(key) is not None:
            _object(d[key], key, where)


@dataclass(frozen=True)
class InputSpec:
    """The image geometry and preprocessing an exported graph expects.

    Attributes:
        img_h, img_w: input height and (full) width in pixels.
        channels: 1 (gray) or 3 (RGB).
        keep_ratio: resize to height ``img_h`` keeping the aspect ratio, pad on the right to ``img_w``.
        pad_value: the right padding, in normalised units (``-1`` black ... ``1`` white).
    """

    img_h: int
    img_w: int
    channels: int
    keep_ratio: bool = False
    pad_value: float = 0.0

    @classmethod
    def from_data_config(cls, data: DataConfig) -> InputSpec:
        """The geometry of a run's ``data`` config section (what evaluation and the API use)."""
        return cls(int(data.img_h), int(data.img_w), int(data.channels), bool(data.keep_ratio))

    def transform(self) -> ImageTransform:
        """The matching deterministic :class:`~strkit.data.transforms.ImageTransform` (no augmentation)."""
        from strkit.data.transforms import ImageTransform

        return ImageTransform(self.img_h, self.img_w, channels=self.channels, keep_ratio=self.keep_ratio,
                              augment="none", pad_value=self.pad_value)

    def to_dict(self) -> dict[str, Any]:
        return {"name": INPUT_NAME, "dtype": "float32", "layout": "NCHW", "img_h": self.img_h,
                "img_w": self.img_w, "channels": self.channels, "keep_ratio": self.keep_ratio,
                "pad_value": self.pad_value,
                "normalize": {"scale": NORMALIZE_SCALE, "offset": NORMALIZE_OFFSET,
                              "formula": "uint8 pixel x -> x / 127.5 - 1"},
                "resize": "OpenCV, INTER_AREA when both sides shrink, else INTER_LINEAR"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        return cls(int(d["img_h"]), int(d["img_w"]), int(d["channels"]), bool(d.get("keep_ratio", False)),
                   float(d.get("pad_value", 0.0)))


@dataclass(frozen=True)
class ExportMetadata:
    """Everything needed to preprocess for and decode an exported model (see the module docstring).

    Attributes:
        charset: ``Charset.to_dict()`` of the model's charset.
        codec_kind: ``ctc`` or ``attention`` (a key of :data:`strkit.codecs.CODECS`).
        num_classes: K, the size of the logits' last axis.
        max_length: the model's longest label.
        special_ids: codec token ids by name (``blank`` / ``eos``, ``bos``, ``pad``).
        decoder: the decoder config (``name`` plus decoding options; a lexicon inline as a word list).
        input: the expected input image.
        dynamic_batch, dynamic_width: whether the batch / width axis of the input may vary.
        pipeline: ``rectifier-backbone-sequence-decoder`` names.
        extra: free-form notes (quantisation settings, why a width is fixed ...).
        strkit_version: the strkit that exported the model.
        temperature: calibration temperature ``T``: decoding uses ``logits / T`` (1 = none).
    """

    charset: dict[str, Any]
    codec_kind: str
    num_classes: int
    max_length: int
    special_ids: dict[str, int]
    decoder: dict[str, Any]
    input: InputSpec
    dynamic_batch: bool = True
    dynamic_width: bool = False
    pipeline: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    strkit_version: str = ""
    temperature: float = 1.0

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: RecognitionModel, input_spec: InputSpec, dynamic_batch: bool = True,
                   dynamic_width: bool = False) -> ExportMetadata:
        """The metadata of ``model`` exported for ``input_spec``."""
        from strkit.models.registry import DECODERS
        from strkit.version import __version__

        spec = model.cfg.decoder
        decoder = {"name": spec} if isinstance(spec, str) else dict(spec)
        lexicon = getattr(model.decoder, "lexicon", None)
        if decoder.get("lexicon") is not None:
            decoder["lexicon"] = list(lexicon or [])  # inline: the file may not exist where the model runs
        kind = DECODERS.get(decoder["name"]).codec_kind
        codec = model.codec
        special = {k: int(getattr(codec, k)) for k in SPECIAL_ID_NAMES if hasattr(codec, k)}
        return cls(charset=model.charset.to_dict(), codec_kind=kind, num_classes=int(codec.num_classes),
                   max_length=int(model.cfg.max_length), special_ids=special, decoder=decoder,
                   input=input_spec, dynamic_batch=dynamic_batch, dynamic_width=dynamic_width,
                   pipeline=model.pipeline, strkit_version=__version__,
                   temperature=float(getattr(model, "temperature", 1.0)))

    def with_extra(self, **notes: Any) -> ExportMetadata:
        """A copy with ``notes`` merged into :attr:`extra`."""
        return replace(self, extra={**self.extra, **notes})

    # -- use ------------------------------------------------------------------------------------
    def build_charset(self) -> Charset:
        return Charset.from_dict(self.charset)

    def build_codec(self) -> CTCCodec | AttentionCodec:
        """The codec the logits were trained for; raises :class:`MetadataError` if it does not match K."""
        codec = build_codec(self.codec_kind, self.build_charset(), self.max_length)
        if codec.num_classes != self.num_classes:
            raise MetadataError(f"metadata: a {self.codec_kind} codec over {len(self.charset['chars'])} "
                                f"characters has {codec.num_classes} classes but the model outputs "
                                f"{self.num_classes}; the metadata is inconsistent, re-export the model")
        return codec

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "strkit_version": self.strkit_version,
            "pipeline": self.pipeline, "charset": self.charset,
            "codec": {"kind": self.codec_kind, "num_classes": self.num_classes, "max_length": self.max_length,
                      "special_ids": self.special_ids},
            "decoder": self.decoder,
            "input": {**self.input.to_dict(), "dynamic_batch": self.dynamic_batch,
                      "dynamic_width": self.dynamic_width},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", "steps", self.num_classes],
                       "kind": "logits (softmax over the last axis gives probabilities)"},
            "extra": self.extra,
            "temperature": self.temperature,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any, where: str = "model") -> ExportMetadata:
        """Inverse of :meth:`to_dict`; ``where`` (the file) is named in errors."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise MetadataError(f"{where}: no '{FORMAT}' metadata; it was not exported by strkit "
                                f"(export it with tools/export.py)")
        version = _integer(d.get("version", 0), "version", where, 0, 1 << 30)
        if version > VERSION:
            raise MetadataError(f"{where}: exported by a newer strkit (metadata version {version} > "
                                f"{VERSION}); upgrade strkit")
        validate_metadata(d, where)
        try:
            codec, inp = d["codec"], d["input"]
            return cls(charset=dict(d["charset"]), codec_kind=str(codec["kind"]),
                       num_classes=int(codec["num_classes"]), max_length=int(codec["max_length"]),
                       special_ids={str(k): int(v) for k, v in codec.get("special_ids", {}).items()},
                       decoder=dict(d.get("decoder") or {"name": codec["kind"]}),
                       input=InputSpec.from_dict(inp), dynamic_batch=bool(inp.get("dynamic_batch", True)),
                       dynamic_width=bool(inp.get("dynamic_width", False)), pipeline=str(d.get("pipeline", "")),
                       extra=dict(d.get("extra") or {}), strkit_version=str(d.get("strkit_version", "")),
                       temperature=float(d.get("temperature", 1.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataError(f"{where}: strkit metadata is incomplete ({type(exc).__name__}: {exc}); "
                                f"re-export the model with tools/export.py") from None

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "model") -> ExportMetadata:
        """Parse and validate (:func:`validate_metadata`) the metadata JSON of an exported model."""
        if len(text) > MAX_METADATA_BYTES:
            raise MetadataError(f"{where}: strkit metadata of {len(text):,} bytes is larger than "
                                f"{MAX_METADATA_BYTES:,}; re-export the model with tools/export.py")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MetadataError(f"{where}: strkit metadata is not valid JSON ({exc}); re-export the model "
                                f"with tools/export.py") from None
        return cls.from_dict(data, where=where)
