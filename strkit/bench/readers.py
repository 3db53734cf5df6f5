"""Word readers for side-by-side comparisons (``tools/bench.py compare``): strkit models and, when the
optional package is installed, other recognisers, each behind the same call: an RGB uint8 crop
(H×W×3 numpy array) -> the text it reads.

A reader is built from a spec string by :func:`build_reader`:

- a bundled model by its zoo name (``strkit models`` lists them: ``default``, ``fast`` ...), optionally
  ``NAME:torch`` / ``NAME:onnx`` / ``NAME:int8`` (:meth:`Recognizer.from_pretrained`; a bare name picks the
  fastest available backend, ``int8`` its int8 ONNX export);
- a checkpoint (``.pt``) or exported ``.onnx`` path, optionally ``PATH:torch`` / ``PATH:onnx``;
- ``rapidocr``: RapidOCR's recogniser alone (no detection, no orientation classifier), whatever model its
  installed version ships (PyPI ``rapidocr``; 3.x ships PP-OCRv6-small's recogniser in the wheel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from strkit.registry import Registry

ReadFn = Callable[[np.ndarray], str]


@dataclass
class Reader:
    """A named word reader: ``read(rgb_uint8_crop) -> text``; ``info`` says what runs it."""

    name: str
    read: ReadFn
    info: str


#: Reader kinds other than strkit models: name -> ``factory(threads) -> Reader``.
EXTERNAL_READERS: Registry[Callable[[int], Reader]] = Registry("external reader")


@EXTERNAL_READERS.register("rapidocr")
def rapidocr_reader(threads: int) -> Reader:
    """RapidOCR's text recogniser on the whole crop (``use_det=False, use_cls=False``), ONNX Runtime with
    ``threads`` intra-op threads."""
    try:
        from importlib.metadata import version

        from rapidocr import RapidOCR
    except ImportError as exc:
        raise ImportError("reader 'rapidocr' needs the optional package: pip install rapidocr") from exc
    engine = RapidOCR(params={"Global.use_det": False, "Global.use_cls": False, "Global.log_level": "critical",
                              "EngineConfig.onnxruntime.intra_op_num_threads": int(threads)})

    def read(rgb: np.ndarray) -> str:
        out = engine(np.ascontiguousarray(rgb[:, :, ::-1]), use_det=False, use_cls=False, use_rec=True)  # BGR in
        texts = getattr(out, "txts", None) or ()
        return str(texts[0]) if texts else ""

    return Reader("rapidocr", read, f"rapidocr {version('rapidocr')} recogniser, onnxruntime")


def build_reader(spec: str, threads: int = 1) -> Reader:
    """A :class:`Reader` from a spec string (see the module docstring).

    Raises:
        ValueError: an unknown spec or backend suffix. FileNotFoundError: a missing model file.
        ImportError: an external reader whose package is not installed.
    """
    from strkit.api import Recognizer
    from strkit.models.zoo import zoo_models

    if spec in EXTERNAL_READERS.names():
        return EXTERNAL_READERS.get(spec)(threads)
    base, _, option = spec.partition(":")
    bundled = sorted(zoo_models())
    if base in bundled and not Path(base).is_file():
        if option not in ("", "torch", "onnx", "int8"):
            raise ValueError(f"reader '{spec}': use {base}, {base}:torch, {base}:onnx or {base}:int8")
        rec = Recognizer.from_pretrained(base, threads=threads, backend="torch" if option == "torch" else
                                         "onnx" if option in ("onnx", "int8") else "auto",
                                         int8=option == "int8")
    else:
        if option not in ("", "torch", "onnx"):
            raise ValueError(f"reader '{spec}': the suffix after ':' is a backend, torch or onnx")
        if not Path(base).is_file():
            raise FileNotFoundError(f"reader '{spec}': no such model file {base} (a checkpoint .pt or an "
                                    f"exported .onnx), and not one of the bundled models "
                                    f"({', '.join(bundled) or 'none'}) nor of: "
                                    f"{', '.join(EXTERNAL_READERS.names())}")
        rec = Recognizer.from_checkpoint(base, threads=threads, backend=option or "auto")
    backend: Any = rec.backend
    label = getattr(getattr(backend, "path", None), "name", None) or base

    def read(rgb: np.ndarray) -> str:
        return rec.recognize(rgb)[0].text

    return Reader(spec, read, f"strkit {backend.name} ({label})")
