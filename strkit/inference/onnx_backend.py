"""Run an exported ``.onnx`` recogniser with ONNX Runtime (no checkpoint, no PyTorch model needed).

Preprocessing and decoding come from the model's embedded metadata
(:class:`~strkit.inference.metadata.ExportMetadata`): the same
:class:`~strkit.data.transforms.ImageTransform` as training and evaluation, and the charset codec (or
the configured decoder's ``decode``) on the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from strkit.charset import Charset
from strkit.greedy_decoding import Prediction
from strkit.inference.decoding import build_decode_fn, scale_logits
from strkit.inference.metadata import (
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    ExportedModelError,
    ExportMetadata,
    MetadataError,
)


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or an ImportError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - onnxruntime is installed in the dev environment
        raise ImportError("running .onnx models needs ONNX Runtime: pip install onnxruntime") from exc
    return onnxruntime


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime session options: ``threads`` intra-op threads (``None``/0 = ONNX Runtime's default,
    one per physical core), one inter-op thread, sequential execution, all graph optimisations."""
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    if threads:
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0 = ONNX Runtime's default), got {threads}")
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: no warnings about unused initialisers etc.
    return so


def read_onnx_metadata(path: str | Path) -> ExportMetadata:
    """The strkit metadata embedded in an ONNX file (read with the ``onnx`` package, weights not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportedModelError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means the same to the user
        raise ExportedModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise MetadataError(f"{path}: no strkit metadata; export the model with tools/export.py")
    return ExportMetadata.from_json(props[METADATA_KEY], where=str(path))


class OnnxBackend:
    """An exported recogniser in an ONNX Runtime session.

    Args:
        path: the ``.onnx`` file written by :func:`strkit.export.export_onnx` (or its int8 variant).
        threads: intra-op threads (``None``/0 = ONNX Runtime's default). At batch 1 on a small CPU one
            thread is often the fastest; batches gain from more.
        providers: ONNX Runtime execution providers (default: CPU).

    Raises:
        ExportedModelError: missing file, not an ONNX model, or no strkit metadata.
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportedModelError(f"ONNX model not found: {self.path}")
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(threads),
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise ExportedModelError(f"{self.path} is not a loadable ONNX model ({type(exc).__name__}: "
                                     f"{exc}); export it with tools/export.py") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise MetadataError(f"{self.path}: no strkit metadata; export the model with tools/export.py")
        self.metadata = ExportMetadata.from_json(props[METADATA_KEY], where=str(self.path))
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != [INPUT_NAME]:
            raise ExportedModelError(f"{self.path}: expected one input named '{INPUT_NAME}', found {inputs}")
        self.threads = threads
        self.input_spec = self.metadata.input
        self.dynamic_width = self.metadata.dynamic_width
        self.charset: Charset = self.metadata.build_charset()
        self.codec = self.metadata.build_codec()
        self.temperature = self.metadata.temperature
        self._decode = build_decode_fn(self.metadata)

    def __repr__(self) -> str:
        return f"OnnxBackend({str(self.path)!r}, pipeline={self.metadata.pipeline!r}, threads={self.threads})"

    def _check(self, x: np.ndarray) -> None:
        spec = self.input_spec
        if x.ndim != 4 or x.shape[1] != spec.channels or x.shape[2] != spec.img_h:
            raise ValueError(f"{self.path.name}: expected images of shape B×{spec.channels}×{spec.img_h}×W, "
                             f"got {tuple(x.shape)}")
        if not self.dynamic_width and x.shape[3] != spec.img_w:
            raise ValueError(f"{self.path.name} was exported for width {spec.img_w} only, got width "
                             f"{x.shape[3]}; pad or resize to {spec.img_w}")

    def run(self, images: np.ndarray) -> np.ndarray:
        """B×C×H×W float32 array -> B×L×K float32 logits (numpy)."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        self._check(x)
        if self.metadata.dynamic_batch or x.shape[0] == 1:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        return np.concatenate([self.session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + 1]})[0]
                               for i in range(x.shape[0])])

    def logits(self, images: Tensor | np.ndarray) -> Tensor:
        """B×C×H×W float32 images -> B×L×K float32 logits (CPU tensor)."""
        arr = images.detach().cpu().numpy() if isinstance(images, Tensor) else images
        return torch.from_numpy(self.run(arr))

    def predict(self, images: Tensor | np.ndarray) -> list[Prediction]:
        """B×C×H×W images -> B predictions (decoded as the exported decoder is configured, from
        ``logits / temperature``)."""
        return self._decode(scale_logits(self.logits(images), self.temperature))

    def eval(self) -> OnnxBackend:
        """No-op, so that code written for ``RecognitionModel`` (``model.eval(); model.predict(x)``) runs."""
        return self
