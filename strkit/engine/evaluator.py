"""Benchmark evaluation: per-dataset word accuracy, 1-NED, confidence; speed, params and FLOPs.

The evaluation protocol (``36``: lowercase [0-9a-z]; ``62``: case-sensitive alphanumerics; ``94``:
printable ASCII) is applied to both the label and the prediction before comparison, so a model
trained with a larger charset is scored fairly under the smaller protocol.

What is scored is a :class:`~strkit.models.recognizer.RecognitionModel` or any inference backend
(:class:`~strkit.inference.backend.InferenceBackend`: PyTorch, an ONNX Runtime session ...): both map a
``B×C×H×W`` batch to predictions with ``predict``. A backend brings its own preprocessing
(``input_spec``); speed and FLOPs are measured for PyTorch models only.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from strkit.charset import protocol_filter
from strkit.config import Config
from strkit.data.benchmarks import expand_benchmarks, load_benchmark, load_test_set, test_set_names
from strkit.data.mixing import build_eval_loader
from strkit.engine.metrics import ECE_BINS, RecognitionMetrics, combine
from strkit.inference.backend import InferenceBackend
from strkit.inference.options import DEFAULT_CONFIDENCE, prediction_confidence
from strkit.models.recognizer import RecognitionModel

from .run_data import eval_transform
from .runtime import autocast_context


@dataclass
class SpeedReport:
    """Inference cost of a model on one device."""

    params_m: float
    flops_g: float
    ms_per_image: float  # batch 1, median
    images_per_s: float  # batch 64
    device: str
    threads: int


@dataclass
class EvalReport:
    """Results of one model on several benchmarks."""

    model_name: str
    protocol: str
    results: list[RecognitionMetrics]
    total: RecognitionMetrics
    speed: SpeedReport | None = None
    wrong: dict[str, list[dict]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "protocol": self.protocol,
            "benchmarks": [r.as_dict() for r in self.results],
            "total": self.total.as_dict(),
            "speed": None if self.speed is None else self.speed.__dict__,
        }

    def to_markdown(self) -> str:
        """The table of the STR papers: one column per benchmark, the weighted total, time, params."""
        names = [r.name for r in self.results]
        head = ["Model", *[f"{n} ({r.count})" for n, r in zip(names, self.results, strict=True)], "Total"]
        acc = [self.model_name, *[f"{r.accuracy:.1f}" for r in self.results], f"{self.total.accuracy:.1f}"]
        ned = [f"{self.model_name} 1-NED", *[f"{r.ned:.1f}" for r in self.results], f"{self.total.ned:.1f}"]
        if self.speed is not None:
            head += ["ms/img (b1)", "img/s (b64)", "Params (M)", "GFLOPs"]
            s = self.speed
            extra = [f"{s.ms_per_image:.2f}", f"{s.images_per_s:.0f}", f"{s.params_m:.2f}", f"{s.flops_g:.2f}"]
            acc += extra
            ned += [""] * len(extra)
        ece = [f"{self.model_name} ECE", *[f"{r.ece:.1f}" for r in self.results], f"{self.total.ece:.1f}"]
        ece += [""] * (len(head) - len(ece))
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                 "| " + " | ".join(acc) + " |", "| " + " | ".join(ned) + " |", "| " + " | ".join(ece) + " |"]
        return "\n".join(lines) + (f"\n\nWord accuracy (%), 1-NED (%) and expected calibration error of the "
                                   f"word confidence (%, {ECE_BINS} bins), protocol {self.protocol}.\n")

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``results.md``, ``results.csv``, ``results.json`` (and ``wrong_<set>.tsv``)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"md": out / "results.md", "csv": out / "results.csv", "json": out / "results.json"}
        paths["md"].write_text(self.to_markdown())
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        with paths["csv"].open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["model", "benchmark", "count", "accuracy", "ned", "confidence", "ece"])
            for r in [*self.results, self.total]:
                w.writerow([self.model_name, r.name, r.count, f"{r.accuracy:.4f}", f"{r.ned:.4f}",
                            f"{r.mean_confidence:.4f}", f"{r.ece:.4f}"])
        for name, rows in self.wrong.items():
            p = out / f"wrong_{name}.tsv"
            with p.open("w", newline="") as fh:
                w = csv.writer(fh, delimiter="\t")
                w.writerow(["index", "image", "label", "prediction", "confidence"])
                for row in rows:
                    w.writerow([row["index"], row["image"], row["label"], row["prediction"],
                                f"{row['confidence']:.4f}"])
            paths[f"wrong_{name}"] = p
        return paths


def evaluate_loader(model: RecognitionModel | InferenceBackend, loader: DataLoader, protocol: str, name: str,
                    device: torch.device, precision: str = "fp32",
                    keep_wrong: bool = False, progress: bool = False,
                    confidence: str = DEFAULT_CONFIDENCE) -> RecognitionMetrics:
    """Score ``model`` (a recogniser or any inference backend) on every batch of ``loader`` (images
    B×C×H×W, raw labels) under ``protocol``; ``progress``: a progress bar (images) on stderr;
    ``confidence``: the word confidence mode (:data:`strkit.inference.options.CONFIDENCE_MODES`;
    ``product`` = the decoder's own)."""
    return score_loader(model, loader, [protocol], name, device, precision, keep_wrong, progress, confidence)[0]


@torch.inference_mode()
def score_loader(model: RecognitionModel | InferenceBackend, loader: DataLoader, protocols: Sequence[str],
                 name: str, device: torch.device, precision: str = "fp32", keep_wrong: bool = False,
                 progress: bool = False, confidence: str = DEFAULT_CONFIDENCE) -> list[RecognitionMetrics]:
    """:func:`evaluate_loader` under several protocols at once: the model reads each image once, and each
    protocol scores those readings (one :class:`RecognitionMetrics` per protocol, in order)."""
    from tqdm import tqdm

    if isinstance(model, torch.nn.Module):
        model.eval()
    metrics = [RecognitionMetrics(name=name) for _ in protocols]
    index = 0
    dataset = getattr(loader, "dataset", None)  # a DataLoader; any iterable of batches works too
    total = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(total=total, unit="img", desc=name, disable=not progress, leave=False)
    for images, labels in loader:
        with autocast_context(device, precision):
            preds = model.predict(images.to(device))
        confidences = [prediction_confidence(p, confidence) for p in preds]
        for protocol, m in zip(protocols, metrics, strict=True):
            m.update([protocol_filter(p.text, protocol) for p in preds], [protocol_filter(t, protocol) for t in labels],
                     confidences, start_index=index, keep_wrong=keep_wrong)
        index += len(labels)
        bar.update(len(labels))
    bar.close()
    return metrics


def count_flops(model: torch.nn.Module, example: torch.Tensor) -> float:
    """Forward FLOPs (multiply-add = 2 FLOPs) for ``example`` as counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(example)
    return float(counter.get_total_flops())


@torch.inference_mode()
def measure_speed(model: torch.nn.Module, img_h: int, img_w: int, channels: int, device: torch.device,
                  precision: str = "fp32", repeats: int = 30, batch: int = 64) -> SpeedReport:
    """Median batch-1 latency and batch-64 throughput of ``model(x)`` (forward + decode excluded)."""
    model.eval()

    def timed(x: torch.Tensor, n: int) -> float:
        with autocast_context(device, precision):
            for _ in range(3):
                model(x)
            times = []
            for _ in range(n):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    x1 = torch.randn(1, channels, img_h, img_w, device=device)
    xb = torch.randn(batch, channels, img_h, img_w, device=device)
    ms = timed(x1, repeats) * 1000
    ips = batch / timed(xb, max(3, repeats // 6))
    count = getattr(model, "num_parameters", None)  # recognisers leave training-only heads out
    params = (count() if callable(count) else sum(p.numel() for p in model.parameters())) / 1e6
    flops = count_flops(model, x1.float()) / 1e9
    return SpeedReport(params_m=params, flops_g=flops, ms_per_image=ms, images_per_s=ips,
                       device=str(device), threads=torch.get_num_threads())


def evaluate_benchmarks(model: RecognitionModel | InferenceBackend, cfg: Config, names: list[str], root: str | Path,
                        protocol: str = "36", batch_size: int = 64, workers: int = 0,
                        device: torch.device | None = None, precision: str = "fp32",
                        keep_wrong: bool = False, speed: bool = True,
                        model_name: str = "model", progress: bool = False,
                        on_result: Callable[[RecognitionMetrics], None] | None = None,
                        confidence: str = DEFAULT_CONFIDENCE, data: Sequence[str | Path] = ()) -> EvalReport:
    """Evaluate ``model`` on the named benchmarks (groups such as ``benchmark_7672`` are expanded), then on
    the test sets at the paths ``data`` (LMDB or folder datasets, named by their folders; no count check).

    ``model``: a recogniser (preprocessed as ``cfg.data`` says) or any inference backend (preprocessed
    as its ``input_spec`` says; ``speed`` is then not measured). ``progress``: a progress bar per
    benchmark on stderr; ``on_result``: called with each benchmark's metrics as soon as it is scored (to
    stream results); ``confidence``: the word confidence mode."""
    return evaluate_protocols(model, cfg, names, root, [protocol], batch_size, workers, device, precision,
                              keep_wrong, speed, model_name, progress,
                              None if on_result is None else lambda _, m: on_result(m), confidence, data)[0]


def evaluate_protocols(model: RecognitionModel | InferenceBackend, cfg: Config, names: list[str],
                       root: str | Path, protocols: Sequence[str], batch_size: int = 64, workers: int = 0,
                       device: torch.device | None = None, precision: str = "fp32", keep_wrong: bool = False,
                       speed: bool = True, model_name: str = "model", progress: bool = False,
                       on_result: Callable[[str, RecognitionMetrics], None] | None = None,
                       confidence: str = DEFAULT_CONFIDENCE, data: Sequence[str | Path] = ()) -> list[EvalReport]:
    """:func:`evaluate_benchmarks` under several protocols (``["36", "62", "94"]``) from one reading of
    each image: one :class:`EvalReport` per protocol, in order (the speed, measured once, in each).
    ``on_result(protocol, metrics)`` is called as each set is scored under each protocol."""
    is_module = isinstance(model, torch.nn.Module)
    if is_module:
        device = device or next(model.parameters()).device
        transform = eval_transform(cfg)
    else:
        device = device or torch.device("cpu")
        transform = model.input_spec.transform()
        speed = False
    results: list[list[RecognitionMetrics]] = [[] for _ in protocols]
    wrong: list[dict[str, list[dict]]] = [{} for _ in protocols]
    sets: list[tuple[str, Callable[[], Any]]] = [
        (name, lambda name=name: load_benchmark(name, root, channels=transform.channels))
        for name in expand_benchmarks(names)]
    sets += [(name, lambda path=path: load_test_set(path, channels=transform.channels))
             for name, path in zip(test_set_names(data), data, strict=True)]
    for name, load in sets:
        ds = load()
        loader = build_eval_loader(ds, transform, batch_size=batch_size, num_workers=workers)
        scored = score_loader(model, loader, protocols, name, device, precision, keep_wrong, progress, confidence)
        for i, (protocol, m) in enumerate(zip(protocols, scored, strict=True)):
            results[i].append(m)
            if on_result is not None:
                on_result(protocol, m)
            if keep_wrong:
                paths = getattr(ds, "paths", None)
                wrong[i][name] = [{"index": j, "image": str(paths[j]) if paths is not None else f"#{j + 1}",
                                   "label": g, "prediction": p, "confidence": c} for j, g, p, c in m.wrong]
    sp = (measure_speed(model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels, device, precision)
          if speed else None)
    return [EvalReport(model_name=model_name, protocol=protocol, results=res, total=combine(res), speed=sp,
                       wrong=wr) for protocol, res, wr in zip(protocols, results, wrong, strict=True)]
