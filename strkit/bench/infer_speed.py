"""Inference speed (``tools/bench.py infer``): ``model.predict`` (eval forward + greedy decoding to text)
under ``torch.inference_mode()`` in eager PyTorch, or an ONNX Runtime session: median ms per image at
batch 1 and images/s at batch 64, optionally with bf16 autocast or bf16 weights
(:func:`strkit.models.optimize.cast_for_inference`), channels-last, Conv+BN folding
(:func:`strkit.models.optimize.fuse_for_inference`) or oneDNN's bf16 arithmetic for fp32 tensors.
Each case runs in a fresh process (:func:`strkit.engine.train_timing.run_isolated`).
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from strkit.config import load_config
from strkit.engine.train_timing import (
    lstm_overrides,
    model_config_path,
    peak_rss_mib,
    trained_model_path,
)

#: Inference precisions: ``fp32``; ``bf16`` = fp32 weights under bf16 autocast; ``bf16-weights`` =
#: weights stored in bf16 (:func:`strkit.models.optimize.cast_for_inference`), no autocast.
INFER_PRECISIONS = ("fp32", "bf16", "bf16-weights")


@dataclass(frozen=True)
class InferCase:
    """One inference-speed configuration.

    Attributes:
        model: a model config name or path (as in :class:`TrainCase`).
        precision: one of :data:`INFER_PRECISIONS`.
        lstm_autocast: as in :class:`TrainCase` (matters for ``bf16`` only).
        channels_last: model weights and input in channels-last layout.
        fuse: fold Conv2d+BatchNorm2d pairs first (:func:`strkit.models.optimize.fuse_for_inference`).
        onednn_bf16: let oneDNN compute fp32 convolutions, matmuls and RNNs with bf16 arithmetic
            (``torch.backends.mkldnn.*.fp32_precision = "bf16"``; set only in the benchmark process).
        repeats: timed batch-1 calls (median reported); ``batch_repeats`` timed batch calls.
        backend: ``torch`` (eager PyTorch, the levers above) or ``onnxruntime`` (the model exported to ONNX
            with a fixed width and run in an ONNX Runtime session with ``threads`` intra-op threads;
            fp32 only, the levers are ONNX Runtime's own graph optimisations).
    """

    model: str
    precision: str = "fp32"
    lstm_autocast: bool = False
    channels_last: bool = False
    fuse: bool = False
    onednn_bf16: bool = False
    img_h: int = 32
    img_w: int = 100
    channels: int = 1
    threads: int = 2
    batch: int = 64
    repeats: int = 50
    batch_repeats: int = 5
    warmup: int = 5
    seed: int = 0
    backend: str = "torch"

    @property
    def levers(self) -> str:
        """The levers of this case in words, e.g. ``bf16 + channels-last + fused``."""
        if self.model.lower().endswith(".onnx"):
            return f"{self.backend}, the file as exported"  # e.g. an int8 export: its own precision
        if self.backend != "torch":
            return f"{self.backend} {self.precision}"
        parts = [self.precision]
        if self.lstm_autocast and self.precision == "bf16":
            parts.append("bf16 LSTM")
        if self.channels_last:
            parts.append("channels-last")
        if self.fuse:
            parts.append("fused")
        if self.onednn_bf16:
            parts.append("oneDNN bf16 math")
        return " + ".join(parts)


@dataclass
class InferResult:
    """What one inference case measured."""

    case: InferCase
    pipeline: str
    params: int
    ms_per_image: float  # batch 1, median over ``repeats`` calls
    ms_per_image_min: float
    images_per_s: float  # batch ``case.batch``, median over ``batch_repeats`` calls
    peak_rss_mib: float
    threads: int
    fused_pairs: int = 0
    load_1min: float = 0.0  # set by run_case
    busy_cores: float | None = None  # set by run_case

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["case"] = asdict(self.case)
        return out


@contextlib.contextmanager
def onednn_fp32_precision(precision: str) -> Iterator[None]:
    """Set oneDNN's arithmetic for fp32 convolutions, matmuls and RNNs (``"bf16"`` or ``"none"`` =
    full fp32) inside the block, restoring the previous settings after it."""
    backends = [getattr(torch.backends.mkldnn, k) for k in ("conv", "matmul", "rnn")
                if hasattr(getattr(torch.backends.mkldnn, k, None), "fp32_precision")]
    if precision != "none" and not backends:
        raise RuntimeError("this PyTorch has no torch.backends.mkldnn.*.fp32_precision settings; "
                           "run without the oneDNN bf16 option")
    before = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = precision
        yield
    finally:
        for b, p in zip(backends, before, strict=True):
            b.fp32_precision = p


def prepare_inference_model(case: InferCase) -> tuple[torch.nn.Module, int]:
    """The eval-mode model of ``case`` (random weights, or a checkpoint's trained ones): fused, cast
    and/or channels-last as asked; and the parameter count of its architecture (before folding)."""
    from strkit.models.optimize import cast_for_inference, fuse_for_inference
    from strkit.models.pretrained import load_model
    from strkit.models.recognizer import build_model

    if case.precision not in INFER_PRECISIONS:
        raise ValueError(f"precision {case.precision!r}: use one of {', '.join(INFER_PRECISIONS)}")
    checkpoint = trained_model_path(case.model)
    if checkpoint is not None:
        if checkpoint.suffix.lower() != ".pt":
            raise ValueError(f"model '{case.model}' is an exported ONNX file: time it with --backend onnxruntime")
        model = load_model(checkpoint)[0].eval()
        if case.lstm_autocast:
            raise ValueError(f"model '{case.model}': --lstm-bf16 on applies to model configs, not checkpoints")
    else:
        cfg = load_config(model_config_path(case.model), lstm_overrides(case.model, case.lstm_autocast))
        torch.manual_seed(case.seed)
        model = build_model(cfg.model, case.img_h, case.img_w, case.channels).eval()
    params = model.num_parameters()
    if case.fuse:
        model = fuse_for_inference(model, inplace=True)
    if case.precision == "bf16-weights":
        model = cast_for_inference(model, torch.bfloat16, inplace=True)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, params


#: Inference backends of :class:`InferCase`.
INFER_BACKENDS = ("torch", "onnxruntime")


def _onnx_predictor(model: torch.nn.Module, case: InferCase, folder: str) -> Any:
    """``model`` exported to ONNX (fixed width: the timed inputs have one size) in an ONNX Runtime session
    with ``case.threads`` intra-op threads; its ``predict`` decodes like ``model.predict``."""
    from strkit.export import export_onnx
    from strkit.inference.onnx_backend import OnnxBackend

    path = Path(folder) / "model.onnx"
    export_onnx(model, path, dynamic_batch=True, dynamic_width=False)
    return OnnxBackend(path, threads=case.threads)


def _onnx_file_predictor(path: Path, case: InferCase) -> tuple[Any, int, str, int]:
    """An exported ``.onnx`` file in an ONNX Runtime session with ``case.threads`` threads, with its
    parameter count (initializer elements; an int8 file counts its quantised weights) and pipeline."""
    import onnx

    from strkit.inference.onnx_backend import OnnxBackend

    if case.backend != "onnxruntime":
        raise ValueError(f"model '{case.model}' is an exported ONNX file: time it with --backend onnxruntime")
    graph = onnx.load(str(path), load_external_data=False).graph
    params = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type != onnx.TensorProto.INT64)
    backend = OnnxBackend(path, threads=case.threads)
    return backend, params, backend.metadata.pipeline, 0


def measure_infer(case: InferCase) -> InferResult:
    """Median batch-1 latency and batch throughput of ``predict`` (forward + greedy decoding), in eager
    PyTorch or, with ``case.backend == "onnxruntime"``, in ONNX Runtime."""
    if case.backend not in INFER_BACKENDS:
        raise ValueError(f"backend {case.backend!r}: use one of {', '.join(INFER_BACKENDS)}")
    if case.backend != "torch" and (case.precision != "fp32" or case.channels_last or case.fuse):
        raise ValueError(f"backend {case.backend!r} is timed in fp32 without the PyTorch levers "
                         f"(got {case.levers}); ONNX Runtime applies its own graph optimisations")
    torch.set_num_threads(case.threads)
    trained = trained_model_path(case.model)
    onnx_file = trained is not None and trained.suffix.lower() == ".onnx"
    if onnx_file:
        model, params, pipeline, fused = _onnx_file_predictor(trained, case)
    else:
        model, params = prepare_inference_model(case)
        pipeline, fused = model.pipeline, int(getattr(model, "fused_pairs", 0))
    if trained is not None:  # a trained model is timed at its own input size
        spec = model.input_spec if hasattr(model, "input_spec") else model
        case = replace(case, img_h=int(spec.img_h), img_w=int(spec.img_w), channels=int(spec.channels))
    with contextlib.ExitStack() as stack:
        if case.backend == "onnxruntime" and not onnx_file:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="strkit-bench-"))
            model = _onnx_predictor(model, case, folder)
        single, batched = _time_predict(case, model)
    return InferResult(
        case=case, pipeline=pipeline, params=params,
        ms_per_image=1000 * statistics.median(single), ms_per_image_min=1000 * min(single),
        images_per_s=case.batch / statistics.median(batched), peak_rss_mib=peak_rss_mib(),
        threads=case.threads if case.backend != "torch" else torch.get_num_threads(), fused_pairs=fused)


def _time_predict(case: InferCase, model: Any) -> tuple[list[float], list[float]]:
    """Seconds of each timed ``model.predict`` call at batch 1 and at ``case.batch``."""
    from strkit.engine.trainer import autocast_context

    device = torch.device("cpu")
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    dtype = torch.bfloat16 if case.precision == "bf16-weights" else torch.float32
    autocast = "bf16" if case.precision == "bf16" else "fp32"
    gen = torch.Generator().manual_seed(case.seed)

    def inputs(batch: int) -> torch.Tensor:
        x = torch.rand(batch, case.channels, case.img_h, case.img_w, generator=gen) * 2 - 1
        return x.to(dtype).contiguous(memory_format=memory_format)

    def timed(x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
        times = []
        for i in range(warmup + repeats):
            t = time.perf_counter()
            with autocast_context(device, autocast):
                model.predict(x)
            if i >= warmup:
                times.append(time.perf_counter() - t)
        return times

    with torch.inference_mode(), onednn_fp32_precision("bf16" if case.onednn_bf16 else "none"):
        single = timed(inputs(1), case.warmup, case.repeats)
        batched = timed(inputs(case.batch), 1, case.batch_repeats)
    return single, batched
