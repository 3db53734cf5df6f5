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

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from strkit.atomic import atomic_path
from strkit.checkpoint import CheckpointError
from strkit.export.common import (
    ExportError,
    LogitsOnly,
    default_input_spec,
    eval_mode,
    example_input,
    probe,
    probe_width,
    quiet_tracing,
)
from strkit.inference.metadata import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ExportMetadata, InputSpec
from strkit.inference.onnx_backend import import_onnxruntime, session_options
from strkit.inference.onnx_cache import beside_path, file_sha256, find_export, onnx_cache_dir, private_cache_dir
from strkit.models.pretrained import load_model
from strkit.models.recognizer import RecognitionModel
from strkit.version import __version__

MIN_OPSET = 16  # GridSample (TPS)


def _onnx_bytes(model: RecognitionModel, spec: InputSpec, opset: int, dynamic_batch: bool,
                dynamic_width: bool) -> bytes:
    axes: dict[str, dict[int, str]] = {INPUT_NAME: {}, OUTPUT_NAME: {}}
    if dynamic_batch:
        axes[INPUT_NAME][0] = axes[OUTPUT_NAME][0] = "batch"
    if dynamic_width:
        axes[INPUT_NAME][3] = "width"
        axes[OUTPUT_NAME][1] = "steps"
    buf = io.BytesIO()
    wrapper = LogitsOnly(model).eval()
    with eval_mode(model), quiet_tracing(), torch.no_grad():
        torch.onnx.export(wrapper, (example_input(spec),), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={k: v for k, v in axes.items() if v} or None,
                          do_constant_folding=True)
    return buf.getvalue()


def ort_runner(model_bytes_or_path: bytes | str, threads: int = 1) -> Callable[[Tensor], np.ndarray]:
    ort = import_onnxruntime()
    sess = ort.InferenceSession(model_bytes_or_path, session_options(threads), providers=["CPUExecutionProvider"])
    return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy().astype(np.float32)})[0]


def write_onnx_metadata(model_proto: Any, meta: ExportMetadata, path: str | Path) -> Path:
    """Embed ``meta`` in ``model_proto`` (an ``onnx.ModelProto``) and save it atomically to ``path``."""
    import onnx

    for i in reversed(range(len(model_proto.metadata_props))):
        if model_proto.metadata_props[i].key == METADATA_KEY:
            del model_proto.metadata_props[i]
    prop = model_proto.metadata_props.add()
    prop.key, prop.value = METADATA_KEY, meta.to_json()
    model_proto.producer_name, model_proto.producer_version = "strkit", __version__
    model_proto.doc_string = (f"strkit {meta.pipeline} recogniser: {INPUT_NAME} B×{meta.input.channels}×"
                              f"{meta.input.img_h}×W float32 in [-1, 1] -> {OUTPUT_NAME} B×L×{meta.num_classes}")
    path = Path(path)
    with atomic_path(path) as tmp:
        onnx.save(model_proto, str(tmp))
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
        note = probe(model, ort_runner(data), example_input(spec, batch, probe_width(spec)))
        if note is not None:
            if dynamic_width:
                raise ExportError(f"{model.pipeline}: the ONNX graph does not accept width "
                                  f"{probe_width(spec)} ({note}); export with a fixed width")
            data = _onnx_bytes(model, spec, opset, dynamic_batch, False)
    bad = probe(model, ort_runner(data), example_input(spec, batch))
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



def cached_onnx_export(checkpoint: str | Path, opset: int = 17) -> Path:
    """The ONNX export of ``checkpoint``, made on first use: ``<checkpoint>.onnx`` beside it or, if that
    folder is not writable, ``<digest>.onnx`` in the per-user cache folder
    (:func:`strkit.inference.onnx_cache.onnx_cache_dir`, created 0700, used only while it and its files
    belong to the user and are not writable by others).
    An export is reused only when the SHA-256 of the checkpoint's content, stored in its metadata,
    matches; the file beside the checkpoint is preferred (when it belongs to the user or to the
    checkpoint's owner and is not world-writable). Files are written atomically.

    Raises:
        CheckpointError: the checkpoint is missing or unreadable.
        OnnxCacheError: the cache folder, or the file in it, is not private to the user.
        ExportError: the model does not export.
    """
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise CheckpointError(f"checkpoint not found: {ckpt}")
    digest = file_sha256(ckpt)
    found = find_export(ckpt, digest)
    if found is not None:
        return found
    beside = beside_path(ckpt)
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
        target = private_cache_dir(create=True) / f"{digest}.onnx"
        export_onnx(model, target, opset=opset, input_spec=spec, extra_metadata={"source_checkpoint": stamp})
    except OSError as exc:
        raise ExportError(f"cannot write the ONNX export of {ckpt} anywhere ({first}; {target}: {exc})") from None
    _announce(ckpt, target)
    return target


def _announce(ckpt: Path, target: Path) -> None:
    """One INFO line when a checkpoint is exported to ONNX for fast inference (once per content)."""
    logging.getLogger(__name__).info("exported %s to ONNX once: %s (reused while the checkpoint is unchanged)",
                                     ckpt, target)


