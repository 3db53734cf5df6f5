"""Export a trained recogniser for inference outside PyTorch training code.

One module per job: :mod:`~strkit.export.onnx` (ONNX with embedded metadata, and the cached export of a
checkpoint), :mod:`~strkit.export.torchscript`, :mod:`~strkit.export.parity` (same readings as PyTorch),
:mod:`~strkit.export.quantize` (int8) and :mod:`~strkit.export.bundle` (the packaged default model);
:mod:`~strkit.export.common` holds what they share. The names below are the package's public API.
"""

from __future__ import annotations

from strkit.export.bundle import write_bundle
from strkit.export.common import ExportError, LogitsOnly, default_input_spec, example_input, probe_width
from strkit.export.onnx import MIN_OPSET, cached_onnx_export, export_onnx, write_onnx_metadata
from strkit.export.parity import ParityReport, compare_with_torch, parity_check, torchscript_parity_check
from strkit.export.quantize import QUANT_MODES, default_quant_exclusions, quantize_onnx
from strkit.export.torchscript import export_torchscript, load_torchscript

__all__ = [
    "MIN_OPSET",
    "QUANT_MODES",
    "ExportError",
    "LogitsOnly",
    "ParityReport",
    "cached_onnx_export",
    "compare_with_torch",
    "default_input_spec",
    "default_quant_exclusions",
    "example_input",
    "export_onnx",
    "export_torchscript",
    "load_torchscript",
    "parity_check",
    "probe_width",
    "quantize_onnx",
    "torchscript_parity_check",
    "write_bundle",
    "write_onnx_metadata",
]
