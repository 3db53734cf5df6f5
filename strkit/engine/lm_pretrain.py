"""Text-only pre-training of the ``iterative_vl`` decoder's language model (the BCN) on a word list.

ABINet-style training runs in three stages: the language model on text alone, the vision model on
images (``model.decoder.iterations=0``), then both together. This module is the first stage. A config
is *text-only* when every ``data.train`` source has ``kind: words``; its ``path`` is a word list, a
UTF-8 file with one word per line or ``wordfreq:<lang>:<n>`` (the offline lists of the ``wordfreq``
package), see ``configs/train/lm_pretrain.yaml``. ``tools/train.py`` routes such a config here.

Each step encodes a random batch of words, replaces each character by a random one with probability
``noise`` (the language model learns to correct, not only to fill in), and trains the language model
alone (the rest of the recogniser is built, to fix every shape, but not trained). ``train.steps``,
``batch_size``, ``optimizer``, ``scheduler``, ``grad_clip``, ``seed``, ``device``, ``threads``,
``log_every``, ``val_every``, ``save_every``, ``max_minutes`` and ``out_dir`` mean what they mean for
image training;
``data.val_fraction`` holds out words for the cloze accuracy. The result is an ordinary strkit
checkpoint (``out_dir/last.pt``) of the whole model; ``train.init_from`` (see
:func:`strkit.checkpoint.init_from_checkpoint`) copies its language
model into the model of a later stage.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from strkit.charset import Charset, LabelFilter
from strkit.codecs import AttentionCodec
from strkit.config import Config, SourceConfig
from strkit.models.recognizer import RecognitionModel, build_model

from .loop import MeanWindow, RunLoop
from .optim import build_optimizer, build_scheduler
from .runtime import optimiser_step

log = logging.getLogger("strkit")

TEXT_SOURCE_KIND = "words"
LANGUAGE_PREFIX = "decoder.language."


# -- configuration ----------------------------------------------------------------------------------
def text_sources(cfg: Config) -> list[SourceConfig]:
    """The ``kind: words`` sources of ``data.train`` (empty for an image config).

    Raises:
        ValueError: word lists and image sources are mixed in ``data.train``.
    """
    words = [s for s in cfg.data.train if s.kind == TEXT_SOURCE_KIND]
    if words and len(words) != len(cfg.data.train):
        raise ValueError("data.train mixes 'words' sources (text-only language-model pre-training) with "
                         "image sources; use only word lists to pre-train the language model, or only images")
    return words


def is_text_only(cfg: Config) -> bool:
    """True when ``cfg`` is a language-model pre-training config (every training source is a word list)."""
    return bool(text_sources(cfg))


def load_words(sources: Sequence[SourceConfig], charset: Charset, max_length: int) -> tuple[list[str],
                                                                                               LabelFilter]:
    """The words of the sources, normalised to the charset (out-of-charset characters stripped, empty and
    too-long words skipped, all counted by the returned filter), duplicates removed, in order."""
    from strkit.data.synth.text import load_lexicon

    label_filter = LabelFilter(charset, max_length, name="word list")
    words: dict[str, None] = {}
    for src in sources:
        for raw in load_lexicon(src.path):
            clean = label_filter(raw)
            if clean is not None:
                words.setdefault(clean)
    label_filter.warn_if_needed()
    if not words:
        raise ValueError(f"the word lists {[s.path for s in sources]} hold no usable word for charset "
                         f"'{charset.name}' and max_length {max_length} ({label_filter.report()})")
    return list(words), label_filter


# -- training ---------------------------------------------------------------------------------------
def _language_decoder(model: nn.Module) -> nn.Module:
    decoder = getattr(model, "decoder", model)
    if not hasattr(decoder, "language_model_loss"):
        raise ValueError(f"text-only training needs a decoder with a language model (model.decoder.name: "
                         f"iterative_vl), got {type(decoder).__name__}")
    return decoder


def word_batch(words: Sequence[str], codec: AttentionCodec, batch_size: int, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """``batch_size`` words drawn with replacement by ``generator``, encoded: ``B×(L+2)`` tokens on ``device``."""
    idx = torch.randint(len(words), (batch_size,), generator=generator).tolist()
    return codec.encode([words[i] for i in idx])["tokens"].to(device)


def pretrain_language_model(decoder: nn.Module, words: Sequence[str], codec: AttentionCodec, steps: int,
                            batch_size: int = 64, optimizer: torch.optim.Optimizer | None = None,
                            scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                            noise: float = 0.1, seed: int = 0, grad_clip: float = 5.0,
                            device: torch.device | str | None = None) -> list[float]:
    """Train ``decoder.language`` (an ``iterative_vl`` decoder's BCN) on random batches of ``words``, outside
    a run (no output folder, log or checkpoint; :func:`run_lm_pretraining` is the run).

    Args:
        decoder: the decoder (its ``language_model_loss`` is used; only its language model is trained).
        words: normalised words (every character in the codec's charset, at most ``max_length`` long).
        codec: the model's attention codec.
        steps, batch_size: number of optimisation steps and words per step (drawn with replacement).
        optimizer: defaults to AdamW(lr 1e-3) over the language model's parameters.
        scheduler: optional, stepped after every step.
        noise: probability of replacing each input character by a random one.
        seed: seeds the batch sampling and the noise (independent of the global RNG).
        grad_clip: gradient-norm clip (0 = off).
        device: where the tokens go (default: the decoder's device).

    Returns:
        the loss of every step (a non-finite one skipped its update).
    """
    decoder = _language_decoder(decoder)
    if not words:
        raise ValueError("pretrain_language_model: the word list is empty")
    params = [p for p in decoder.language.parameters() if p.requires_grad]
    opt = optimizer or torch.optim.AdamW(params, lr=1e-3)
    device = torch.device(device) if device is not None else next(decoder.language.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    was_training = decoder.training
    decoder.train()
    losses: list[float] = []
    try:
        for _ in range(steps):
            loss = decoder.language_model_loss(word_batch(words, codec, batch_size, gen, device), noise=noise,
                                               generator=gen)
            optimiser_step(loss, opt, scheduler, clip=params, max_norm=grad_clip)
            losses.append(float(loss.detach()))
    finally:
        decoder.train(was_training)
    return losses


@torch.no_grad()
def cloze_accuracy(decoder: nn.Module, words: Sequence[str], codec: AttentionCodec, batch_size: int = 256
                   ) -> float:
    """Fraction of positions (characters and the EOS) the language model predicts from their context,
    with clean one-hot text as input (eval mode)."""
    decoder = _language_decoder(decoder)
    lm = decoder.language
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    correct = total = 0
    try:
        for start in range(0, len(words), batch_size):
            gold = codec.encode(list(words[start:start + batch_size]))["tokens"][:, 1:].to(device)
            probs = torch.nn.functional.one_hot(gold, codec.num_classes).float()
            _, logits = lm(probs)
            keep = gold != codec.pad
            correct += int(((logits.argmax(-1) == gold) & keep).sum())
            total += int(keep.sum())
    finally:
        lm.train(was_training)
    return correct / max(total, 1)


# -- the run ----------------------------------------------------------------------------------------
def _split_words(words: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    if fraction <= 0:
        return words, []
    n_val = int(round(len(words) * fraction))
    if n_val <= 0 or n_val >= len(words):
        raise ValueError(f"data.val_fraction={fraction} leaves no training or no validation words out of "
                         f"{len(words)}")
    perm = np.random.Generator(np.random.PCG64(seed)).permutation(len(words))
    return [words[i] for i in sorted(perm[n_val:])], [words[i] for i in sorted(perm[:n_val])]


class LanguageModelPretraining(RunLoop):
    """The run of :func:`run_lm_pretraining` on the run loop (one process; not resumable: ``last.pt`` holds the
    weights, no training state).

    Args:
        cfg: a text-only config (see the module docstring).
        noise: probability of replacing each input character by a random one.
        overwrite: replace an earlier run's outputs in ``train.out_dir``.
    """

    progress_desc = ""
    resumable = False
    run_kind = "language-model pre-training"

    def __init__(self, cfg: Config, noise: float = 0.1, overwrite: bool = False) -> None:
        super().__init__(cfg, None, overwrite)
        t = cfg.train
        self.noise = noise
        self.model: RecognitionModel = build_model(cfg.model, cfg.data.img_h, cfg.data.img_w,
                                                   cfg.data.channels).to(self.device)
        self.decoder = _language_decoder(self.model)
        codec = self.model.codec
        assert isinstance(codec, AttentionCodec)
        self.codec = codec
        words, _ = load_words(text_sources(cfg), self.model.charset, cfg.model.max_length)
        self.train_words, self.val_words = _split_words(words, cfg.data.val_fraction, t.seed)
        self.optimizer = build_optimizer(self.decoder.language, t.optimizer)
        self.scheduler = build_scheduler(self.optimizer, t.scheduler, t.steps)
        self.scaler = torch.amp.GradScaler(enabled=False)
        self.params = [p for p in self.decoder.language.parameters() if p.requires_grad]
        self.generator = torch.Generator().manual_seed(t.seed)  # batches and noise, apart from the global RNG
        self.window = MeanWindow()
        self.losses: list[float] = []
        self.metrics: dict[str, float] = {}

    def setup(self) -> None:
        t = self.cfg.train
        log.info("language-model pre-training on %d words (%d held out), %d steps of %d words",
                 len(self.train_words), len(self.val_words), t.steps, t.batch_size)
        self.decoder.train()

    def batches(self) -> Iterator[torch.Tensor]:
        while True:
            yield word_batch(self.train_words, self.codec, self.cfg.train.batch_size, self.generator, self.device)

    def forward_loss(self, *inputs: Any) -> torch.Tensor:
        """The language model's denoising loss on a batch of tokens."""
        return self.decoder.language_model_loss(inputs[0], noise=self.noise, generator=self.generator)

    def run_step(self, batch: torch.Tensor) -> None:
        loss = self.forward_loss(batch)
        self.optimise(loss, clip=self.params)
        self.losses.append(float(loss.detach()))
        self.window.add("lm_loss", self.losses[-1])

    def log_row(self) -> dict[str, float]:
        self.metrics["lm_loss"] = self.window.mean("lm_loss")
        self.window.clear()
        lr = self.scheduler.get_last_lr()[0]
        log.info("lm step %d/%d loss %.4f lr %.2e (%.1f s)", self.step, self.cfg.train.steps, self.metrics["lm_loss"],
                 lr, self.budget.session_s)
        return {"lm_loss": self.metrics["lm_loss"], "lr": lr}

    def validate(self) -> dict[str, float]:
        if not self.val_words:
            return {}
        acc = cloze_accuracy(self.decoder, self.val_words, self.codec)
        self.metrics["lm_val_cloze_accuracy"] = acc
        log.info("lm step %d cloze accuracy on %d held-out words: %.4f", self.step, len(self.val_words), acc)
        return {"lm_val_cloze_accuracy": acc}

    def checkpoint_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return dict(self.metrics)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"stage": "lm_pretrain"}

    def finish(self, reason: str) -> dict[str, float]:
        if reason == "time":
            log.info("lm pre-training stopped at step %d: train.max_minutes=%g reached", self.step,
                     self.cfg.train.max_minutes)
        if not self.losses or not all(math.isfinite(x) for x in self.losses[-10:]):
            log.warning("language-model pre-training ended with non-finite losses")
        log.info("language model saved in %s", self.out_dir / "last.pt")
        return self.metrics


def run_lm_pretraining(cfg: Config, noise: float = 0.1, overwrite: bool = False) -> dict[str, float]:
    """Pre-train the language model of ``cfg``'s model on its word lists (see the module docstring).

    Writes ``config.yaml``, ``metrics.csv`` (and TensorBoard events with ``train.tensorboard``) and
    ``last.pt`` (a full checkpoint) to ``train.out_dir``; returns the last
    metrics: ``lm_loss`` (mean over the last logging window) and, with held-out words,
    ``lm_val_cloze_accuracy``. A ``train.out_dir`` that holds an earlier run is refused unless
    ``overwrite`` (see :mod:`strkit.engine.run_dir`).
    """
    return LanguageModelPretraining(cfg, noise, overwrite).fit()
