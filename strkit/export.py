"""Export a :class:`~strkit.models.recognizer.RecognitionModel` to ONNX and TorchScript, check parity with
PyTorch, and quantise the ONNX graph to int8.

The exported graph maps ``images`` (B×C×H×W float32, normalised to [-1, 1]) to ``logits`` (B×L×K
float32): L = T frames for CTC, ``max_length + 1`` steps for attention. The batch axis is dynamic; the
width axis is dynamic when the model accepts other widths (checked by running the exported graph at a
second width against PyTorch; a TPS rectifier resamples any width to its fixed output size). The
metadata needed to preprocess and decode without the checkpoint
(:class:`~strkit.inference.metadata.ExportMetadata`) is embedded: ONNX ``metadata_props['strkit']``,
TorchScript extra file ``strkit.json``.

Decoders: ``ctc`` exports as a linear layer. ``attention`` decodes greedily in a fixed-count Python
loop (``max_length + 1`` steps, argmax feedback), which the tracer unrolls into a static graph, so it
exports without a ``Loop`` operator; its outputs after the first EOS are computed and ignored by the
decoding. The ``tps`` rectifier exports through ``GridSample`` (opset >= 16).

Export uses PyTorch's TorchScript-based ONNX exporter (``dynamo=False``), which needs no extra package.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from strkit.data.transforms import ImageTransform
from strkit.inference.metadata import (
    BUNDLE_CHECKPOINT,
    BUNDLE_INT8,
    BUNDLE_ONNX,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    TORCHSCRIPT_EXTRA_FILE,
    ExportedModelError,
    ExportMetadata,
    InputSpec,
)
from strkit.models.recognizer import RecognitionModel

QUANT_MODES = ("static", "dynamic")
MIN_OPSET = 16  # GridSample (TPS)


class ExportError(RuntimeError):
    """The model could not be exported as asked (the message says what failed and what to change)."""


class LogitsOnly(nn.Module):
    """Wraps a recogniser so that ``forward(images: B×C×H×W) -> logits B×L×K`` (a plain tensor)."""

    def __init__(self, model: RecognitionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images).logits


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration; the previous mode is restored (the exporter's own restore would
    follow the *wrapper's* mode, which starts as training)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Silence the known, harmless warnings of tracing: nn.LSTM's internal shape checks and the
    deprecation notices of the TorchScript-based exporter. Tracer warnings from strkit code stay."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.modules\.rnn")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r".*feature will be removed.*")
        # nn.LSTM traced at batch 2: the batch axis is checked by running the graph at batch 3 instead
        warnings.filterwarnings("ignore", message=r".*with a batch_size other than 1.*LSTM.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.(jit|onnx)")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.(jit|onnx)")
        yield


def default_input_spec(model: RecognitionModel, keep_ratio: bool = False) -> InputSpec:
    """The input geometry the model was built for."""
    return InputSpec(model.img_h, model.img_w, model.channels, keep_ratio=keep_ratio)


def example_input(spec: InputSpec, batch: int = 2, width: int | None = None) -> Tensor:
    """Deterministic B×C×H×W images in [-1, 1] (for tracing and shape probes)."""
    gen = torch.Generator().manual_seed(0)
    return torch.rand(batch, spec.channels, spec.img_h, width or spec.img_w, generator=gen) * 2 - 1


def probe_width(spec: InputSpec) -> int:
    """A second input width (wider than ``img_w``, a multiple of 4) used to check a dynamic width axis."""
    w = spec.img_w + max(8, spec.img_w // 2)
    return (w + 3) // 4 * 4


def _mismatch(ref: Tensor, out: np.ndarray | Tensor, rtol: float = 1e-3) -> str | None:
    """Why ``out`` differs from ``ref`` (shape, or values beyond ``rtol`` of the logit range), or None."""
    out_t = torch.as_tensor(np.asarray(out)) if not isinstance(out, Tensor) else out
    if tuple(out_t.shape) != tuple(ref.shape):
        return f"output shape {tuple(out_t.shape)} instead of {tuple(ref.shape)}"
    diff = float((out_t.float() - ref.float()).abs().max()) if ref.numel() else 0.0
    scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
    if not diff <= rtol * scale:
        return f"max |logit difference| {diff:.3g} (tolerance {rtol * scale:.3g})"
    return None


def _probe(model: RecognitionModel, run: Callable[[Tensor], Any], x: Tensor) -> str | None:
    """Run the exported graph and the model on ``x``; the reason they disagree, or None."""
    with torch.inference_mode():
        ref = model(x).logits
    try:
        out = run(x)
    except Exception as exc:  # noqa: BLE001 - any runtime failure means "this shape is not supported"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return _mismatch(ref, out)


def _atomic_path(path: Path) -> tuple[Path, Callable[[], None]]:
    """A temporary file beside ``path`` (mode ``0666`` minus the umask, as a plain new file) and a
    function that moves it into place."""
    from strkit.checkpoint import new_file_mode

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, new_file_mode())  # mkstemp makes 0600; the result gets what any new file gets
    finally:
        os.close(fd)
    return Path(tmp), lambda: os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------------
def _onnx_bytes(model: RecognitionModel, spec: InputSpec, opset: int, dynamic_batch: bool,
                dynamic_width: bool) -> bytes:
    import io

    axes: dict[str, dict[int, str]] = {INPUT_NAME: {}, OUTPUT_NAME: {}}
    if dynamic_batch:
        axes[INPUT_NAME][0] = axes[OUTPUT_NAME][0] = "batch"
    if dynamic_width:
        axes[INPUT_NAME][3] = "width"
        axes[OUTPUT_NAME][1] = "steps"
    buf = io.BytesIO()
    wrapper = LogitsOnly(model).eval()
    with _eval_mode(model), _quiet_tracing(), torch.no_grad():
        torch.onnx.export(wrapper, (example_input(spec),), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={k: v for k, v in axes.items() if v} or None,
                          do_constant_folding=True)
    return buf.getvalue()


def _ort_runner(model_bytes_or_path: bytes | str, threads: int = 1) -> Callable[[Tensor], np.ndarray]:
    from strkit.inference.onnx_backend import import_onnxruntime, session_options

    ort = import_onnxruntime()
    sess = ort.InferenceSession(model_bytes_or_path, session_options(threads), providers=["CPUExecutionProvider"])
    return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy().astype(np.float32)})[0]


def write_onnx_metadata(model_proto: Any, meta: ExportMetadata, path: str | Path) -> Path:
    """Embed ``meta`` in ``model_proto`` (an ``onnx.ModelProto``) and save it atomically to ``path``."""
    import onnx

    from strkit import __version__

    for i in reversed(range(len(model_proto.metadata_props))):
        if model_proto.metadata_props[i].key == METADATA_KEY:
            del model_proto.metadata_props[i]
    prop = model_proto.metadata_props.add()
    prop.key, prop.value = METADATA_KEY, meta.to_json()
    model_proto.producer_name, model_proto.producer_version = "strkit", __version__
    model_proto.doc_string = (f"strkit {meta.pipeline} recogniser: {INPUT_NAME} B×{meta.input.channels}×"
                              f"{meta.input.img_h}×W float32 in [-1, 1] -> {OUTPUT_NAME} B×L×{meta.num_classes}")
    path = Path(path)
    tmp, commit = _atomic_path(path)
    try:
        onnx.save(model_proto, str(tmp))
        commit()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def export_onnx(model: RecognitionModel, path: str | Path, *, opset: int = 17, dynamic_batch: bool = True,
                dynamic_width: bool | None = None, input_spec: InputSpec | None = None,
                keep_ratio: bool = False, extra_metadata: dict[str, Any] | None = None) -> ExportMetadata:
    """Export ``model`` to ONNX at ``path`` (written atomically) with its metadata embedded.

    Args:
        model: the recogniser (its train/eval mode is restored afterwards).
        path: the ``.onnx`` file to write.
        opset: ONNX opset (>= 16, for the TPS ``GridSample``).
        dynamic_batch: make the batch axis dynamic.
        dynamic_width: ``None`` = dynamic when the model allows it (the exported graph is run at a second
            width and compared with PyTorch; if that fails the width is fixed and the reason is stored in
            the metadata ``extra['dynamic_width_note']``); ``True`` = dynamic or :class:`ExportError`;
            ``False`` = fixed to ``img_w``.
        input_spec: the input geometry (default: the model's size, stretched); give the run's
            ``InputSpec.from_data_config(cfg.data)`` to carry ``keep_ratio``.
        keep_ratio: shorthand used when ``input_spec`` is not given.
        extra_metadata: notes merged into the metadata's ``extra``.

    Returns:
        The embedded :class:`ExportMetadata`.

    Raises:
        ExportError: opset too old, export failure, or the exported graph does not match PyTorch.
    """
    import onnx

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the exported graph needs opset >= {MIN_OPSET} "
                          f"(GridSample for the TPS rectifier); use --opset 17")
    spec = input_spec or default_input_spec(model, keep_ratio)
    want_width = dynamic_width is not False
    try:
        data = _onnx_bytes(model, spec, opset, dynamic_batch, want_width)
    except Exception as exc:  # noqa: BLE001 - report any exporter failure with the pipeline named
        raise ExportError(f"ONNX export of {model.pipeline} failed ({type(exc).__name__}: {exc})") from exc
    batch = 3 if dynamic_batch else 1
    note = None
    if want_width:
        note = _probe(model, _ort_runner(data), example_input(spec, batch, probe_width(spec)))
        if note is not None:
            if dynamic_width:
                raise ExportError(f"{model.pipeline}: the ONNX graph does not accept width "
                                  f"{probe_width(spec)} ({note}); export with a fixed width")
            data = _onnx_bytes(model, spec, opset, dynamic_batch, False)
    bad = _probe(model, _ort_runner(data), example_input(spec, batch))
    if bad is not None:
        raise ExportError(f"{model.pipeline}: the exported ONNX graph does not match PyTorch at batch {batch} "
                          f"({bad})")
    meta = ExportMetadata.from_model(model, spec, dynamic_batch=dynamic_batch,
                                     dynamic_width=want_width and note is None)
    meta = meta.with_extra(opset=opset, exporter="torch.onnx (TorchScript-based)", torch=str(torch.__version__),
                           **(extra_metadata or {}))
    if note is not None:
        meta = meta.with_extra(dynamic_width_note=f"width fixed to {spec.img_w}: at width "
                                                  f"{probe_width(spec)} {note}")
    write_onnx_metadata(onnx.load_from_string(data), meta, path)
    return meta


class OnnxCacheError(ExportedModelError):
    """The per-user ONNX cache folder (or a file in it) is not private to the current user, so it is not
    used: another local user could have planted a model there."""


PRIVATE_DIR_MODE = 0o700


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 hex digest of a file's content."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def onnx_cache_dir() -> Path:
    """The per-user folder of ONNX exports made for checkpoints whose own folder is read-only:
    ``$XDG_CACHE_HOME/strkit/onnx`` or ``~/.cache/strkit/onnx``; without a usable home, a folder named
    with the user id in the system temporary folder (``strkit-onnx-<uid>``)."""
    base = os.environ.get("XDG_CACHE_HOME")
    if base and Path(base).is_absolute():
        return Path(base) / "strkit" / "onnx"
    home = os.path.expanduser("~")
    if home not in ("~", "", "/"):
        return Path(home) / ".cache" / "strkit" / "onnx"
    if hasattr(os, "getuid"):
        user = str(os.getuid())
    else:  # pragma: no cover - not POSIX
        import getpass

        user = getpass.getuser()
    return Path(tempfile.gettempdir()) / f"strkit-onnx-{user}"


def _check_private(path: Path, kind: str) -> None:
    """Raise :class:`OnnxCacheError` unless ``path`` (not a link) is owned by the current user and not
    writable by group or others (POSIX; elsewhere nothing is checked)."""
    if not hasattr(os, "getuid"):
        return
    st = path.lstat()
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif st.st_uid != os.getuid():
        problem = f"belongs to user id {st.st_uid}, not to you (user id {os.getuid()})"
    elif st.st_mode & 0o022:
        problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        fix = f"chmod 700 {path}" if kind == "folder" else f"remove {path}"
        raise OnnxCacheError(f"ONNX cache {kind} {path} {problem}: it is not used, since another user could "
                             f"have put a model there. Check it, then {fix} (or set XDG_CACHE_HOME)")


def _private_cache_dir(create: bool) -> Path | None:
    """:func:`onnx_cache_dir`, created 0700 when ``create``; ``None`` when it does not exist and is not to
    be created. Raises :class:`OnnxCacheError` when it is not private."""
    folder = onnx_cache_dir()
    if not folder.exists() and not folder.is_symlink():
        if not create:
            return None
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            pass  # made meanwhile (by another process); checked below
    _check_private(folder, "folder")
    return folder


def _owned_like(target: Path, checkpoint: Path) -> bool:
    """Whether ``target`` belongs to the current user or to the checkpoint's owner and is not writable by
    others (an export beside a checkpoint in a shared folder such as ``/tmp`` may be anyone's)."""
    if not hasattr(os, "getuid"):
        return True
    st = target.lstat()
    return (stat.S_ISREG(st.st_mode) and st.st_uid in (os.getuid(), checkpoint.stat().st_uid)
            and not st.st_mode & 0o002)


def _export_matches(target: Path, digest: str, private: bool = False) -> bool:
    """Whether ``target`` is an ONNX export of the checkpoint whose SHA-256 is ``digest`` (stored in its
    metadata). ``private``: a file in the cache folder must also be the user's own (else
    :class:`OnnxCacheError`)."""
    from strkit.inference.onnx_backend import read_onnx_metadata

    if not target.is_file():
        return False
    if private:
        _check_private(target, "file")
    try:
        meta = read_onnx_metadata(target)
    except ExportedModelError:
        return False
    old = meta.extra.get("source_checkpoint")
    return isinstance(old, dict) and old.get("sha256") == digest


def cached_onnx_export(checkpoint: str | Path, opset: int = 17) -> Path:
    """The ONNX export of ``checkpoint``, made on first use: ``<checkpoint>.onnx`` beside it or, if that
    folder is not writable, ``<digest>.onnx`` in the per-user cache folder (:func:`onnx_cache_dir`,
    created 0700, used only while it and its files belong to the user and are not writable by others).
    An export is reused only when the SHA-256 of the checkpoint's content, stored in its metadata,
    matches; the file beside the checkpoint is preferred (when it belongs to the user or to the
    checkpoint's owner and is not world-writable). Files are written atomically.

    Raises:
        CheckpointError: the checkpoint is missing or unreadable.
        OnnxCacheError: the cache folder, or the file in it, is not private to the user.
        ExportError: the model does not export.
    """
    from strkit.checkpoint import CheckpointError
    from strkit.models.pretrained import load_model

    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise CheckpointError(f"checkpoint not found: {ckpt}")
    digest = file_sha256(ckpt)
    beside = Path(f"{ckpt}.onnx")
    if _export_matches(beside, digest) and _owned_like(beside, ckpt):
        return beside
    cache = _private_cache_dir(create=False)
    if cache is not None and _export_matches(cache / f"{digest}.onnx", digest, private=True):
        return cache / f"{digest}.onnx"
    model, cfg = load_model(ckpt)
    spec = InputSpec.from_data_config(cfg.data)
    stamp = {"sha256": digest, "size": ckpt.stat().st_size, "name": ckpt.name}
    try:
        export_onnx(model, beside, opset=opset, input_spec=spec, extra_metadata={"source_checkpoint": stamp})
        _announce(ckpt, beside)
        return beside
    except OSError as exc:  # read-only folder: the per-user cache
        first = f"{beside}: {exc}"
    target = onnx_cache_dir() / f"{digest}.onnx"
    try:
        target = _private_cache_dir(create=True) / f"{digest}.onnx"
        export_onnx(model, target, opset=opset, input_spec=spec, extra_metadata={"source_checkpoint": stamp})
    except OSError as exc:
        raise ExportError(f"cannot write the ONNX export of {ckpt} anywhere ({first}; {target}: {exc})") from None
    _announce(ckpt, target)
    return target


def _announce(ckpt: Path, target: Path) -> None:
    """One INFO line when a checkpoint is exported to ONNX for fast inference (once per content)."""
    logging.getLogger(__name__).info("exported %s to ONNX once: %s (reused while the checkpoint is unchanged)",
                                     ckpt, target)


# ----------------------------------------------------------------------------------------------
# TorchScript
# ----------------------------------------------------------------------------------------------
def export_torchscript(model: RecognitionModel, path: str | Path, *, input_spec: InputSpec | None = None,
                       keep_ratio: bool = False) -> ExportMetadata:
    """Trace ``model`` to TorchScript at ``path`` (``torch.jit.load`` gives ``images -> logits``); the
    metadata JSON is stored as the extra file ``strkit.json`` (see :func:`load_torchscript`).

    The batch axis is always dynamic; the width axis is reported dynamic when the traced module matches
    PyTorch at a second width.

    Raises:
        ExportError: tracing failed or the traced module does not match PyTorch.
    """
    spec = input_spec or default_input_spec(model, keep_ratio)
    wrapper = LogitsOnly(model).eval()
    try:
        with _eval_mode(model), _quiet_tracing(), torch.no_grad():
            traced = torch.jit.trace(wrapper, (example_input(spec),), check_trace=False)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"TorchScript tracing of {model.pipeline} failed ({type(exc).__name__}: {exc})") from exc

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return traced(x)

    with _eval_mode(model):
        bad = _probe(model, run, example_input(spec, 3))
        if bad is not None:
            raise ExportError(f"{model.pipeline}: the traced module does not match PyTorch at batch 3 ({bad})")
        note = _probe(model, run, example_input(spec, 3, probe_width(spec)))
    meta = ExportMetadata.from_model(model, spec, dynamic_batch=True, dynamic_width=note is None)
    meta = meta.with_extra(exporter="torch.jit.trace", torch=str(torch.__version__))
    if note is not None:
        meta = meta.with_extra(dynamic_width_note=f"width fixed to {spec.img_w}: at width "
                                                  f"{probe_width(spec)} {note}")
    path = Path(path)
    tmp, commit = _atomic_path(path)
    try:
        with _quiet_tracing():
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA_FILE: meta.to_json()})
        commit()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return meta


def load_torchscript(path: str | Path, map_location: str | torch.device = "cpu"
                     ) -> tuple[torch.jit.ScriptModule, ExportMetadata]:
    """Load a module written by :func:`export_torchscript` and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise ExportedModelError(f"TorchScript model not found: {path}")
    files = {TORCHSCRIPT_EXTRA_FILE: ""}
    try:
        with _quiet_tracing():
            module = torch.jit.load(str(path), map_location=map_location, _extra_files=files)
    except Exception as exc:  # noqa: BLE001
        raise ExportedModelError(f"{path} is not a loadable TorchScript model ({type(exc).__name__}: {exc})"
                                 ) from None
    return module.eval(), ExportMetadata.from_json(files[TORCHSCRIPT_EXTRA_FILE] or "{}", where=str(path))


# ----------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------
@dataclass
class ParityReport:
    """Agreement between PyTorch and an exported model on the same images.

    Attributes:
        backend: what was compared (``onnxruntime``, ``torchscript``, ``onnxruntime-int8`` ...).
        count: images compared; same_text: images decoded to the same text by both.
        max_prob_diff: max |softmax(torch) − softmax(exported)| over all images, steps and classes.
        max_logit_diff: max |logit difference|.
        batch_size: images per batch fed to both.
        mismatches: up to 20 ``{index, image, torch, exported}`` records of images read differently.
    """

    backend: str
    count: int = 0
    same_text: int = 0
    max_prob_diff: float = 0.0
    max_logit_diff: float = 0.0
    batch_size: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every image gave the same text."""
        return self.count > 0 and self.same_text == self.count

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        return (f"{self.backend}: same text on {self.same_text}/{self.count} images; "
                f"max |prob diff| {self.max_prob_diff:.3g}, max |logit diff| {self.max_logit_diff:.3g}")


def _worse(current: float, new: float) -> float:
    """The larger difference; NaN (a broken graph) wins over any number."""
    if math.isnan(current) or math.isnan(new):
        return math.nan
    return max(current, new)


def _as_image(item: Any) -> np.ndarray:
    from strkit.api import load_image

    return load_image(item)


def compare_with_torch(model: RecognitionModel, run: Callable[[Tensor], Tensor | np.ndarray],
                       images: Sequence[Any], transform: ImageTransform, backend: str,
                       batch_size: int = 32, names: Sequence[str] | None = None) -> ParityReport:
    """Feed the same preprocessed batches to ``model`` and ``run`` (B×C×H×W -> B×L×K logits) and compare
    logits, probabilities and the decoded text (both decoded with the model's decoder).

    Args:
        images: numpy arrays, paths or PIL images (see :func:`strkit.api.load_image`).
        transform: the preprocessing (e.g. :meth:`InputSpec.transform`).
        names: labels for the images in the mismatch list (default: the path or the index).
    """
    if not images:
        raise ValueError("parity check: no images given")
    report = ParityReport(backend=backend, batch_size=batch_size)
    items = list(images)
    names = list(names) if names is not None else [str(x) if isinstance(x, str | Path) else f"#{i}"
                                                     for i, x in enumerate(items)]
    with _eval_mode(model):
        for start in range(0, len(items), max(1, batch_size)):
            chunk = items[start:start + batch_size]
            x = torch.stack([transform(_as_image(item)) for item in chunk])
            with torch.inference_mode():
                ref = model(x).logits.float()
                ref_text = [p.text for p in model.decoder.decode(ref, model.codec)]
            raw = run(x)
            out = (raw if isinstance(raw, Tensor) else torch.from_numpy(np.asarray(raw))).float()
            if out.shape != ref.shape:
                raise ExportError(f"{backend}: output shape {tuple(out.shape)} differs from PyTorch's "
                                  f"{tuple(ref.shape)}")
            with torch.inference_mode():
                out_text = [p.text for p in model.decoder.decode(out, model.codec)]
                report.max_logit_diff = _worse(report.max_logit_diff, float((out - ref).abs().max()))
                report.max_prob_diff = _worse(report.max_prob_diff,
                                              float((out.softmax(-1) - ref.softmax(-1)).abs().max()))
            for i, (a, b) in enumerate(zip(ref_text, out_text, strict=True)):
                report.count += 1
                if a == b:
                    report.same_text += 1
                elif len(report.mismatches) < 20:
                    report.mismatches.append({"index": start + i, "image": names[start + i], "torch": a,
                                              "exported": b})
    return report


def parity_check(model: RecognitionModel, onnx_path: str | Path, images: Sequence[Any],
                 transform: ImageTransform | None = None, batch_size: int = 32, threads: int | None = 1,
                 backend: str = "onnxruntime", names: Sequence[str] | None = None) -> ParityReport:
    """Compare ``model`` with the ONNX file run by ONNX Runtime on ``images`` (see
    :func:`compare_with_torch`); ``transform`` defaults to the file's metadata preprocessing."""
    from strkit.inference.onnx_backend import OnnxBackend

    session = OnnxBackend(onnx_path, threads=threads)
    return compare_with_torch(model, session.logits, images, transform or session.input_spec.transform(),
                              backend, batch_size, names)


def torchscript_parity_check(model: RecognitionModel, ts_path: str | Path, images: Sequence[Any],
                             transform: ImageTransform | None = None, batch_size: int = 32,
                             names: Sequence[str] | None = None) -> ParityReport:
    """Compare ``model`` with a module written by :func:`export_torchscript` on ``images``."""
    module, meta = load_torchscript(ts_path)

    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return module(x)

    return compare_with_torch(model, run, images, transform or meta.input.transform(), "torchscript",
                              batch_size, names)


# ----------------------------------------------------------------------------------------------
# int8
# ----------------------------------------------------------------------------------------------
class _CalibrationReader:
    """Feeds calibration batches (``images`` B×C×H×W float32) to ONNX Runtime's calibrator."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = batches
        self._iter = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


DYNAMIC_OP_TYPES = ("MatMul", "Gemm", "LSTM", "GRU")  # ConvInteger was several times slower than fp32 here
WEIGHT_OPS = ("Conv", "MatMul", "Gemm")


def default_quant_exclusions(meta: ExportMetadata) -> tuple[str, ...]:
    """Node-name prefixes kept in float by :func:`quantize_onnx` unless told otherwise.

    - ``/model/rectifier/MatMul``: the TPS sampling-grid product (int8 coordinates would move every
      sampled pixel);
    - ``/model/decoder/`` of attention decoders: the greedy loop feeds each step's argmax back, so
      rounding errors can change every later character, and its batch-1 matrices are too small to gain.

    The names are the module scopes of PyTorch's TorchScript-based exporter (``/model/<stage>/...``).
    """
    prefixes = ["/model/rectifier/MatMul"]
    if meta.codec_kind == "attention":
        prefixes.append("/model/decoder/")
    return tuple(prefixes)


def _nodes_to_exclude(model_path: Path, prefixes: Sequence[str]) -> list[str]:
    """Names of nodes matching ``prefixes``, plus weight ops whose weight is all zeros (ONNX Runtime's
    quantiser divides by their zero range)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(model_path)).graph
    zero = {init.name for init in graph.initializer
            if init.data_type == onnx.TensorProto.FLOAT and not np.any(numpy_helper.to_array(init))}
    out = []
    for node in graph.node:
        if any(node.name.startswith(p) for p in prefixes):
            out.append(node.name)
        elif node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in zero:
            out.append(node.name)
    return out


class _DropAlreadyQuantizedNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "already quantized" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Hide the quantiser's root-logger notice "check if the model is already quantized", which the
    second (LSTM) pass of static mode triggers by design; the filter is removed afterwards."""
    root = logging.getLogger()
    flt = _DropAlreadyQuantizedNotice()
    root.addFilter(flt)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"onnxruntime\.quantization")
            yield
    finally:
        root.removeFilter(flt)


def quantize_onnx(src: str | Path, dst: str | Path, mode: str = "static",
                  calibration: Sequence[Any] | None = None, per_channel: bool = True,
                  batch_size: int = 16, exclude: Sequence[str] | None = None,
                  lstm_dynamic: bool = True) -> ExportMetadata:
    """Write an int8 version of the fp32 ONNX model ``src`` to ``dst`` with ONNX Runtime's quantiser.

    Args:
        mode: ``static`` (QDQ format: int8 weights, per channel, and int8 activations whose ranges are
            measured (min/max) on ``calibration``; LSTMs see ``lstm_dynamic``) or ``dynamic`` (int8 weights of
            MatMul / Gemm / LSTM, activation ranges computed at run time, no calibration; convolutions
            stay float).
        calibration: for ``static``: training crops (arrays, paths or PIL images), preprocessed with the
            model's metadata; never benchmark images.
        per_channel: per-output-channel weight scales.
        batch_size: calibration batch size.
        exclude: node-name prefixes to keep in float (default :func:`default_quant_exclusions`).
        lstm_dynamic: in ``static`` mode, also give LSTMs int8 weights (dynamic quantisation: QDQ does
            not cover LSTMs, and they dominate the batch-1 latency of small CNN + BiLSTM models).

    Returns:
        The metadata written into ``dst`` (``extra['quantization']`` describes the settings).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from strkit.inference.onnx_backend import read_onnx_metadata

    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantisation mode '{mode}'; use one of: {', '.join(QUANT_MODES)}")
    meta = read_onnx_metadata(src)
    prefixes = tuple(default_quant_exclusions(meta) if exclude is None else exclude)
    notes: dict[str, Any] = {"mode": mode, "per_channel": per_channel, "weights": "int8",
                             "float_scopes": list(prefixes)}
    with tempfile.TemporaryDirectory(prefix="strkit-quant-") as tmp, _quiet_quantizer():
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(src), str(pre))
        except Exception as exc:  # noqa: BLE001 - pre-processing is an optimisation; quantise without it
            notes["pre_process"] = f"skipped ({type(exc).__name__})"
            pre = Path(src)
        skip = _nodes_to_exclude(pre, prefixes)
        notes["float_nodes"] = len(skip)
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                             op_types_to_quantize=list(DYNAMIC_OP_TYPES), nodes_to_exclude=skip)
            notes["op_types"] = list(DYNAMIC_OP_TYPES)
        else:
            if not calibration:
                raise ValueError("static int8 quantisation needs calibration images (training crops)")
            transform = meta.input.transform()
            items = [transform(_as_image(x)).numpy() for x in calibration]
            batches = [np.stack(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]
            static_out = Path(tmp) / "static.onnx" if lstm_dynamic else out
            quantize_static(str(pre), str(static_out), _CalibrationReader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            nodes_to_exclude=skip)
            notes.update(activations="int8 (QDQ, min/max calibration)", calibration_images=len(items))
            if lstm_dynamic:  # QDQ leaves LSTMs in float; give them int8 weights dynamically
                quantize_dynamic(str(static_out), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                                 op_types_to_quantize=["LSTM"], nodes_to_exclude=skip)
                notes["lstm"] = "int8 weights (dynamic)"
        proto = onnx.load(str(out))
    meta = meta.with_extra(quantization=notes)
    write_onnx_metadata(proto, meta, dst)
    return meta


# ----------------------------------------------------------------------------------------------
# Bundles (the packaged default model)
# ----------------------------------------------------------------------------------------------
def write_bundle(checkpoint: str | Path, onnx_path: str | Path, out_dir: str | Path,
                 int8_path: str | Path | None = None, info: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the files :meth:`strkit.api.Recognizer.from_pretrained` loads into ``out_dir``: an
    inference-only copy of ``checkpoint`` (weights, config, charset, architecture; no optimiser state,
    no training-only heads), the fp32 ONNX export and, when given, the int8 export (a stale int8 file
    of an earlier bundle is removed otherwise). Each file is written atomically.

    Args:
        info: notes stored in the checkpoint's ``extra['bundle']`` (e.g. the source run, accuracy).

    Returns:
        {"checkpoint", "onnx"[, "int8"]} -> written paths.
    """
    import shutil

    from strkit.checkpoint import load_checkpoint, save_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = load_checkpoint(checkpoint)
    state = {k: v for k, v in payload["state_dict"].items() if not k.startswith("aux_head.")}
    config = copy.deepcopy(payload["config"])
    config.setdefault("model", {})["aux_ctc"] = 0.0  # the training-only head is not in the bundle
    extra = {**payload.get("extra", {}), "bundle": {"source": str(checkpoint), **(info or {})}}
    written = {"checkpoint": save_checkpoint(out / BUNDLE_CHECKPOINT, config=config,
                                             charset=payload["charset"], state_dict=state,
                                             metrics=payload.get("metrics"), step=payload.get("step", 0),
                                             arch=payload.get("arch"), extra=extra,
                                             calibration=payload.get("calibration"))}
    for key, src, name in (("onnx", onnx_path, BUNDLE_ONNX), ("int8", int8_path, BUNDLE_INT8)):
        target = out / name
        if src is None:
            target.unlink(missing_ok=True)
            continue
        tmp, commit = _atomic_path(target)
        shutil.copyfile(src, tmp)
        commit()
        written[key] = target
    for path in written.values():
        os.chmod(path, 0o644)  # package data: readable by everyone (temporary files are created 0600)
    return written
