"""The recognition model: rectifier -> backbone -> collapse -> sequence -> decoder, built from config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from strkit.charset import Charset
from strkit.codecs import build_codec
from strkit.config import ConfigError, ModelConfig
from strkit.greedy_decoding import Prediction
from strkit.models.decoders.ctc import ctc_loss
from strkit.models.registry import BACKBONES, DECODERS, RECTIFIERS, SEQUENCES
from strkit.registry import Registry


@dataclass
class ModelOutput:
    """What :meth:`RecognitionModel.forward` returns.

    Attributes:
        logits: B×L×K decoder scores (L = T frames for CTC, max_length + 1 steps for attention).
        loss: scalar training loss when targets were given, else ``None``.
        geometry_loss: the (unweighted) scalar auxiliary geometry loss when it was part of ``loss``,
            else ``None``.
    """

    logits: Tensor
    loss: Tensor | None = None
    geometry_loss: Tensor | None = None


#: Key of the rectifier's geometry targets in the targets mapping of :meth:`RecognitionModel.forward`.
GEOMETRY_TARGETS = "geometry"
# Prefix of the auxiliary CTC head's targets in :meth:`RecognitionModel.encode` when the decoder's own
# codec is not CTC (attention / iterative_vl): ``aux_ctc.targets``, ``aux_ctc.target_lengths``.
AUX_CTC_PREFIX = "aux_ctc."


def _spec(spec: dict[str, Any] | str) -> dict[str, Any]:
    return {"name": spec} if isinstance(spec, str) else dict(spec)


def _build_stage(registry: Registry, spec: dict[str, Any] | str, where: str, **shape: Any) -> nn.Module:
    """Build one stage; a bad value in its config is reported with the config path."""
    spec = _spec(spec)
    try:
        return registry.build(spec, where=where, **shape)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where} ({spec.get('name', '?')}): {exc}") from exc


class RecognitionModel(nn.Module):
    """Scene-text recogniser composed of four registered stages.

    ``images`` B×C×H×W -> rectifier -> B×C×H×W -> backbone -> B×C'×H'×W' -> average over H' ->
    B×T×C' (T = W') -> sequence -> B×T×D -> decoder -> logits B×L×K.

    Args:
        cfg: the ``model`` config section (charset, max_length and the four ``{name, **kwargs}`` specs).
        img_h, img_w, channels: input image size (channels 1 = gray, 3 = RGB).
        charset: the charset to use instead of ``cfg.charset`` (e.g. the one stored in a checkpoint).

    Attributes:
        charset, codec: the label alphabet and the codec matching the decoder (``ctc`` / ``attention``).
        rectifier, backbone, sequence, decoder: the stage modules.
        temperature: the calibration temperature ``T`` (1 = none): :meth:`predict` decodes ``logits / T``,
            which changes confidences, not greedy readings. Set from a checkpoint's ``calibration`` entry
            (:func:`strkit.engine.calibration.fit_temperature`); not a weight, not in the state dict.
    """

    def __init__(self, cfg: ModelConfig, img_h: int, img_w: int, channels: int,
                 charset: Charset | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.img_h, self.img_w, self.channels = int(img_h), int(img_w), int(channels)
        self.charset = charset if charset is not None else Charset.from_spec(cfg.charset)
        decoder_spec = _spec(cfg.decoder)
        if "name" not in decoder_spec:
            raise ConfigError(f"model.decoder: missing 'name' (one of: {', '.join(DECODERS.names())})")
        decoder_cls = DECODERS.get(decoder_spec["name"])
        self.codec = build_codec(decoder_cls.codec_kind, self.charset, cfg.max_length)
        self.rectifier = _build_stage(RECTIFIERS, cfg.rectifier, "model.rectifier", img_h=self.img_h,
                                      img_w=self.img_w, in_channels=self.channels)
        self.backbone = _build_stage(BACKBONES, cfg.backbone, "model.backbone", in_channels=self.channels,
                                     img_h=self.img_h, img_w=self.img_w)
        self.sequence = _build_stage(SEQUENCES, cfg.sequence, "model.sequence",
                                     input_size=self.backbone.out_channels)
        codec_ids = {k: getattr(self.codec, k) for k in getattr(decoder_cls, "codec_ids", ())}
        self.decoder = _build_stage(DECODERS, decoder_spec, "model.decoder",
                                    input_size=self.sequence.out_size, num_classes=self.codec.num_classes,
                                    max_length=cfg.max_length, **codec_ids)
        self.aux_ctc = float(cfg.aux_ctc)
        self.aux_head: nn.Linear | None = None
        if self.aux_ctc < 0:
            raise ConfigError(f"model.aux_ctc: must be >= 0, got {self.aux_ctc}")
        # With a non-CTC decoder the auxiliary head gets its own CTC codec (same charset), so attention
        # and iterative_vl models get the same deep supervision of the visual features.
        self.aux_codec = None
        if self.aux_ctc > 0:
            if decoder_cls.codec_kind != "ctc":
                self.aux_codec = build_codec("ctc", self.charset, cfg.max_length)
            aux_classes = (self.aux_codec or self.codec).num_classes
            self.aux_head = nn.Linear(self.backbone.out_channels, aux_classes)
        self.temperature = 1.0
        self.geometry_loss = float(cfg.geometry_loss)
        if self.geometry_loss < 0:
            raise ConfigError(f"model.geometry_loss: must be >= 0, got {self.geometry_loss}")
        if self.geometry_loss > 0 and not callable(getattr(self.rectifier, "attribute_loss", None)):
            raise ConfigError(f"model.geometry_loss: the auxiliary geometry loss needs the 'scrn' rectifier (the "
                              f"one that predicts the text's centre line and height), got "
                              f"'{_spec(cfg.rectifier).get('name', '?')}'; set model.geometry_loss=0 or "
                              f"model.rectifier.name=scrn")

    @property
    def pipeline(self) -> str:
        """``rectifier-backbone-sequence-decoder`` names, e.g. ``tps-resnet-bilstm-attention``."""
        specs = (self.cfg.rectifier, self.cfg.backbone, self.cfg.sequence, self.cfg.decoder)
        return "-".join(str(_spec(s).get("name", "?")) for s in specs)

    @property
    def arch(self) -> dict[str, Any] | None:
        """The backbone's architecture mapping (``searched`` backbones), stored in checkpoints; else None."""
        arch = getattr(self.backbone, "arch", None)
        return arch if isinstance(arch, dict) else None

    @property
    def rectifier_arch(self) -> dict[str, Any] | None:
        """The architecture mapping of a searched rectifier (``tps`` with ``loc: {name: searched}``; the whole
        file, whose ``rectifier`` section it builds), stored in checkpoints; else None."""
        arch = getattr(self.rectifier, "arch", None)
        return arch if isinstance(arch, dict) else None

    def num_parameters(self, inference: bool = True) -> int:
        """Parameter count; with ``inference`` the training-only auxiliary CTC head is left out."""
        return sum(p.numel() for n, p in self.named_parameters() if not (inference and n.startswith("aux_head.")))

    def features(self, images: Tensor) -> Tensor:
        """B×C×H×W images -> B×T×C' visual features (rectified, backbone, averaged over height)."""
        return self._collapse(self.backbone(self.rectifier(images)))

    @staticmethod
    def _collapse(fmap: Tensor) -> Tensor:
        """B×C'×H'×W' feature map -> B×W'×C' (average over height)."""
        return fmap.mean(dim=2).transpose(1, 2)

    def forward(self, images: Tensor, targets: Mapping[str, Any] | None = None) -> ModelOutput:
        """Images B×C×H×W (normalised to [-1, 1]) -> :class:`ModelOutput`; the loss is computed when
        ``targets`` (from :meth:`encode`) are given. Pure tensor code: traceable and exportable.

        In training, ``targets[GEOMETRY_TARGETS]`` (from :meth:`encode_geometry`: ``centre`` B×K×2,
        ``scale`` B×K, ``theta`` B×K, ``valid`` B) adds ``model.geometry_loss`` × the rectifier's
        geometry loss, computed on the same localisation pass as the warp; samples with
        ``valid = False`` contribute nothing.
        """
        geometry: Mapping[str, Tensor] | None = None
        decoder_targets = targets
        aux_targets = targets
        if targets is not None:
            geometry = targets.get(GEOMETRY_TARGETS)
            decoder_targets = {k: v for k, v in targets.items()
                               if k != GEOMETRY_TARGETS and not k.startswith(AUX_CTC_PREFIX)}
            if self.aux_codec is not None:
                aux_targets = {k[len(AUX_CTC_PREFIX):]: v for k, v in targets.items()
                               if k.startswith(AUX_CTC_PREFIX)}
        geo_loss: Tensor | None = None
        if geometry is not None and self.geometry_loss > 0 and self.training:
            rectified, attrs = self.rectifier.rectify(images)
            geo_loss = self.rectifier.attribute_loss(*attrs, geometry)
            feats = self._collapse(self.backbone(rectified))
        else:
            feats = self.features(images)
        logits = self.decoder(self.sequence(feats), decoder_targets)
        loss = self.decoder.loss(logits, decoder_targets) if decoder_targets is not None else None
        if loss is not None and self.aux_head is not None and self.training:
            # Deep supervision of the visual features (B×T×C' -> B×T×K) with a CTC loss: the decoder's
            # own targets for a CTC model, the auxiliary codec's (encode's aux_ctc.* keys) otherwise.
            if not aux_targets or "target_lengths" not in aux_targets:
                raise ValueError("RecognitionModel.forward: model.aux_ctc > 0 needs the auxiliary CTC targets; "
                                 "build targets with model.encode(labels)")
            blank = (self.aux_codec or self.codec).blank
            loss = loss + self.aux_ctc * ctc_loss(self.aux_head(feats), aux_targets, blank)
        if loss is not None and geo_loss is not None:
            loss = loss + self.geometry_loss * geo_loss
        return ModelOutput(logits, loss, geo_loss)

    def encode(self, labels: list[str]) -> dict[str, Tensor]:
        """Normalised labels -> decoder targets (see the codec's ``encode``), on the CPU; with an
        auxiliary CTC head on a non-CTC decoder also its CTC targets under ``aux_ctc.*`` keys."""
        targets = self.codec.encode(labels)
        if self.aux_codec is not None:
            targets.update({AUX_CTC_PREFIX + k: v for k, v in self.aux_codec.encode(labels).items()})
        return targets

    def encode_geometry(self, records: Sequence[Mapping[str, Any] | None]) -> dict[str, Tensor] | None:
        """Word-geometry records of a batch (model input frame, as from
        :meth:`strkit.data.transforms.ImageTransform.prepare_geometry`; ``None`` for samples without)
        -> the rectifier's geometry targets on the CPU (``centre`` B×K×2, ``scale`` B×K, ``theta`` B×K,
        ``valid`` B), to pass as ``targets[GEOMETRY_TARGETS]``. ``None`` when the geometry loss is off
        (``model.geometry_loss = 0``) or no sample has geometry (nothing to learn from)."""
        if self.geometry_loss <= 0 or all(r is None for r in records):
            return None
        return self.rectifier.geometry_targets(records)

    @torch.inference_mode()
    def predict(self, images: Tensor) -> list[Prediction]:
        """Recognise a batch: eval-mode forward, then decoding as configured on the decoder (greedy;
        for CTC also ``beam_width`` / ``lexicon``) of ``logits / temperature``. The previous train/eval mode is
        restored."""
        was_training = self.training
        self.eval()
        try:
            logits = self.forward(images).logits
        finally:
            self.train(was_training)
        if self.temperature != 1.0:
            logits = logits.float() / self.temperature
        return self.decoder.decode(logits, self.codec)


def build_model(cfg: ModelConfig, img_h: int, img_w: int, channels: int,
                charset: Charset | None = None) -> RecognitionModel:
    """Build a :class:`RecognitionModel` from the ``model`` config section (see its docstring)."""
    return RecognitionModel(cfg, img_h, img_w, channels, charset=charset)
