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
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from strkit.charset import AttentionCodec, Charset, CTCCodec, build_codec
from strkit.checkpoint import CheckpointError

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
    """An exported model carries no (or unreadable) strkit metadata."""


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
        codec_kind: ``ctc`` or ``attention`` (a key of :data:`strkit.charset.CODECS`).
        num_classes: K, the size of the logits' last axis.
        max_length: the model's longest label.
        special_ids: codec token ids by name (``blank`` / ``eos``, ``bos``, ``pad``).
        decoder: the decoder config (``name`` plus decoding options; a lexicon inline as a word list).
        input: the expected input image.
        dynamic_batch, dynamic_width: whether the batch / width axis of the input may vary.
        pipeline: ``rectifier-backbone-sequence-decoder`` names.
        extra: free-form notes (quantisation settings, why a width is fixed ...).
        strkit_version: the strkit that exported the model.
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

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: RecognitionModel, input_spec: InputSpec, dynamic_batch: bool = True,
                   dynamic_width: bool = False) -> ExportMetadata:
        """The metadata of ``model`` exported for ``input_spec``."""
        from strkit import __version__
        from strkit.models.registry import DECODERS

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
                   pipeline=model.pipeline, strkit_version=__version__)

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
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any, where: str = "model") -> ExportMetadata:
        """Inverse of :meth:`to_dict`; ``where`` (the file) is named in errors."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise MetadataError(f"{where}: no '{FORMAT}' metadata; it was not exported by strkit "
                                f"(export it with tools/export.py)")
        if int(d.get("version", 0)) > VERSION:
            raise MetadataError(f"{where}: exported by a newer strkit (metadata version {d['version']} > "
                                f"{VERSION}); upgrade strkit")
        try:
            codec, inp = d["codec"], d["input"]
            return cls(charset=dict(d["charset"]), codec_kind=str(codec["kind"]),
                       num_classes=int(codec["num_classes"]), max_length=int(codec["max_length"]),
                       special_ids={str(k): int(v) for k, v in codec.get("special_ids", {}).items()},
                       decoder=dict(d.get("decoder") or {"name": codec["kind"]}),
                       input=InputSpec.from_dict(inp), dynamic_batch=bool(inp.get("dynamic_batch", True)),
                       dynamic_width=bool(inp.get("dynamic_width", False)), pipeline=str(d.get("pipeline", "")),
                       extra=dict(d.get("extra") or {}), strkit_version=str(d.get("strkit_version", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataError(f"{where}: strkit metadata is incomplete ({type(exc).__name__}: {exc}); "
                                f"re-export the model with tools/export.py") from None

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "model") -> ExportMetadata:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MetadataError(f"{where}: strkit metadata is not valid JSON ({exc}); re-export the model "
                                f"with tools/export.py") from None
        return cls.from_dict(data, where=where)
