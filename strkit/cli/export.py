"""strkit-export CHECKPOINT --out DIR: ONNX (+ int8) and TorchScript export with parity checks.

Writes model.onnx (--onnx, the default), model.int8.onnx (--int8) and model.ts (--torchscript) into
--out (and with --bundle DIR the files of a model bundle for Recognizer.from_pretrained), checks each
against PyTorch on real crops of a benchmark (same text on every image, max probability and logit
differences), and for int8 compares word accuracy with the fp32 ONNX model on the benchmarks. Everything
printed is also written to export_report.json. CHECKPOINT may be a run folder (its best.pt) or a bundled
model's name ('default'; 'strkit models' lists them).
Exit status: 0, 1 if an fp32 export reads any parity image differently from PyTorch, 2 on a user error.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from strkit.cli.common import (
    Parser,
    fail,
    non_negative_int,
    positive_int,
    setup_logging,
    threads_arg,
    user_errors,
)

INT8_ACCURACY_TOLERANCE = 0.5  # points of word accuracy, per benchmark


def _bundle_name(text: str) -> str:
    """A zoo name: letters, digits, '-' and '_' (it names the bundle's files)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits, '-' and '_' (it names the files)")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="strkit-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by tools/train.py (best.pt / last.pt), a run folder, or "
                                      "a bundled model's name ('default'; see: strkit models)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--onnx", action="store_true", help="write model.onnx (the default when nothing is chosen)")
    p.add_argument("--torchscript", action="store_true", help="write model.ts (traced TorchScript)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (implies --onnx)")
    p.add_argument("--int8-mode", choices=["static", "dynamic"], default="static",
                   help="static: int8 convolutions/matmuls (weights and activations, calibrated on training "
                        "crops) plus int8 LSTM weights (fastest here); dynamic: int8 weights of "
                        "MatMul/Gemm/LSTM only, no calibration")
    p.add_argument("--calibration", default=None,
                   help="training crops for static int8 calibration: a folder dataset (labels.tsv) or an LMDB "
                        "(default: IIIT5K_train under --benchmark-root); never a benchmark")
    p.add_argument("--calibration-count", type=positive_int, default=256, help="calibration images (default 256)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default 17)")
    p.add_argument("--fixed-width", action="store_true",
                   help="fix the input width to the training width (default: dynamic when the model allows)")
    p.add_argument("--benchmark-root", default=None,
                   help="folder holding the benchmarks (default: the checkpoint's data.benchmark_root)")
    p.add_argument("--parity-set", default="IIIT5K_3000", help="benchmark whose crops the parity check uses")
    p.add_argument("--parity-count", type=non_negative_int, default=200,
                   help="images for the parity check, evenly spaced over the set (0 = skip)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="batch size of the parity and accuracy runs")
    p.add_argument("--accuracy", nargs="+", default=None,
                   help="benchmarks (or groups) on which int8 accuracy is compared with fp32 (default: the "
                        "checkpoint's eval.benchmarks)")
    p.add_argument("--accuracy-count", type=non_negative_int, default=0,
                   help="use only the first N images of each accuracy benchmark (0 = all; a smoke test)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the int8 accuracy comparison")
    p.add_argument("--protocol", choices=["36", "62", "94"], default=None,
                   help="evaluation protocol (default: the checkpoint's eval.protocol)")
    p.add_argument("--threads", type=threads_arg, default=1,
                   help="threads for ONNX Runtime and PyTorch in the checks and --speed (default 1)")
    p.add_argument("--bundle", default=None, metavar="DIR",
                   help="also write a model bundle for Recognizer.from_pretrained into DIR (strkit/assets for the "
                        "packaged default model): default.pt (inference-only checkpoint), default.onnx and, when "
                        "--int8 kept every benchmark's accuracy within 0.5 point on the whole sets, default.int8.onnx")
    p.add_argument("--bundle-name", default="default", metavar="NAME", type=_bundle_name,
                   help="the zoo name of the bundle's files (NAME.pt, NAME.onnx, NAME.int8.onnx; default: default, "
                        "the model from_pretrained() loads without a name)")
    p.add_argument("--bundle-weights", choices=["fp32", "fp16"], default="fp32",
                   help="dtype of the bundle checkpoint's weights (NAME.pt): fp16 halves the file, loading casts "
                        "them back to fp32 (default fp32; the ONNX files are unchanged)")
    p.add_argument("--speed", action="store_true",
                   help="also time batch-1 latency and batch-64 throughput: PyTorch, ONNX fp32, int8")
    return p


def _evenly_spaced(n: int, count: int) -> list[int]:
    if count <= 0 or n == 0:
        return []
    if count >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)} if count > 1 else {0})


def _parity_images(args: argparse.Namespace, root: str, channels: int) -> tuple[list[Any], list[str]]:
    from strkit.data.benchmarks import load_benchmark

    ds = load_benchmark(args.parity_set, root, channels=channels)
    idx = _evenly_spaced(len(ds), args.parity_count)
    paths = getattr(ds, "paths", None)
    names = [str(paths[i]) if paths is not None else f"{args.parity_set}#{i + 1}" for i in idx]
    return [ds[i][0] for i in idx], names


def _calibration_images(args: argparse.Namespace, root: str, channels: int) -> tuple[list[Any], str]:
    from strkit.config import SourceConfig
    from strkit.data.benchmarks import dataset_kind
    from strkit.data.sources import build_source

    path = Path(args.calibration) if args.calibration else Path(root) / "IIIT5K_train"
    kind = dataset_kind(path)
    if kind is None:
        raise FileNotFoundError(f"calibration data {path} is neither a folder dataset (labels.tsv) nor an LMDB "
                                f"(data.mdb); pass training crops with --calibration, or use --int8-mode dynamic")
    ds = build_source(SourceConfig(path=str(path), kind=kind), None, channels, root, purpose="train")
    idx = _evenly_spaced(len(ds), args.calibration_count)
    return [ds[i][0] for i in idx], str(path)


def _accuracy(onnx_paths: dict[str, Path], args: argparse.Namespace, cfg: Any, root: str) -> dict[str, Any]:
    """Word accuracy of each ONNX file on each benchmark (protocol of the run)."""
    import torch
    from torch.utils.data import Subset

    from strkit.data.benchmarks import expand_benchmarks, load_benchmark
    from strkit.data.mixing import build_eval_loader
    from strkit.engine.evaluator import evaluate_loader
    from strkit.inference.onnx_backend import OnnxBackend

    protocol = args.protocol or cfg.eval.protocol
    names = expand_benchmarks(args.accuracy or cfg.eval.benchmarks)
    backends = {k: OnnxBackend(p, threads=args.threads) for k, p in onnx_paths.items()}
    rows = []
    for name in names:
        ds = load_benchmark(name, root, channels=cfg.data.channels)
        if args.accuracy_count:
            ds = Subset(ds, range(min(args.accuracy_count, len(ds))))
        row: dict[str, Any] = {"benchmark": name, "count": len(ds)}
        for key, backend in backends.items():
            loader = build_eval_loader(ds, backend.input_spec.transform(), batch_size=args.batch_size)
            m = evaluate_loader(backend, loader, protocol, name, torch.device("cpu"))  # type: ignore[arg-type]
            row[key] = round(m.accuracy, 2)
        rows.append(row)
    out: dict[str, Any] = {"protocol": protocol, "rows": rows, "subset": args.accuracy_count or None}
    if {"fp32", "int8"} <= set(onnx_paths):
        worst = max((r["fp32"] - r["int8"] for r in rows), default=0.0)
        out["max_drop"] = round(worst, 2)
        out["within_tolerance"] = worst <= INT8_ACCURACY_TOLERANCE
    return out


def _speed(model: Any, files: dict[str, Path], threads: int) -> list[dict[str, Any]]:
    import torch

    from strkit.bench.timing import measure
    from strkit.export import default_input_spec, example_input
    from strkit.inference.onnx_backend import OnnxBackend

    torch.set_num_threads(threads)
    spec = default_input_spec(model)

    def make(b: int) -> Any:
        return example_input(spec, b)

    def torch_fn(x: Any) -> Any:
        with torch.inference_mode():
            return model(x).logits

    results = [measure("pytorch fp32", torch_fn, make, threads=threads)]
    for key, path in files.items():
        backend = OnnxBackend(path, threads=threads)
        results.append(measure(f"onnxruntime {key}", lambda x, b=backend: b.run(x.numpy()), make, threads=threads))
    return [r.as_dict() for r in results]


def _accuracy_table(acc: dict[str, Any]) -> str:
    keys = [k for k in ("fp32", "int8") if acc["rows"] and k in acc["rows"][0]]
    lines = ["| benchmark | images | " + " | ".join(f"{k} acc" for k in keys) + " | Δ |",
             "|---|---|" + "---|" * len(keys) + "---|"]
    for r in acc["rows"]:
        delta = f"{r['int8'] - r['fp32']:+.2f}" if len(keys) == 2 else ""
        lines.append(f"| {r['benchmark']} | {r['count']} | " + " | ".join(f"{r[k]:.2f}" for k in keys)
                     + f" | {delta} |")
    return "\n".join(lines)


def _int8_bundle_verdict(args: argparse.Namespace, report: dict[str, Any]) -> bool:
    """Whether the int8 export goes into a bundle (printed with the reason when it does not)."""
    if "int8" not in report["files"]:
        return False
    acc = report.get("int8_accuracy")
    why = ("its accuracy was not compared (--no-accuracy)" if acc is None else
           "its accuracy was compared on subsets only (--accuracy-count)" if acc.get("subset") else
           f"it lost {acc['max_drop']:.2f} points on a benchmark (> {INT8_ACCURACY_TOLERANCE})"
           if not acc["within_tolerance"] else "")
    if why:
        print(f"int8 export not bundled: {why}")
    return not why


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    import torch

    from strkit.data.benchmarks import BenchmarkError
    from strkit.export import (
        ExportError,
        export_onnx,
        export_torchscript,
        parity_check,
        quantize_onnx,
        torchscript_parity_check,
        write_bundle,
    )
    from strkit.inference.metadata import InputSpec
    from strkit.models.pretrained import load_model
    from strkit.models.zoo import resolve_model_arg

    if args.threads:
        torch.set_num_threads(args.threads)
    want_onnx = args.onnx or args.int8 or args.bundle or not args.torchscript
    args.checkpoint = str(resolve_model_arg(args.checkpoint)[0])  # a zoo name, or a run folder's best.pt
    model, cfg = load_model(args.checkpoint)
    root = args.benchmark_root or cfg.data.benchmark_root
    spec = InputSpec.from_data_config(cfg.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "pipeline": model.pipeline, "files": {},
                              "parity": {}}
    images: list[Any] = []
    names: list[str] = []
    if args.parity_count > 0:
        try:
            images, names = _parity_images(args, root, cfg.data.channels)
        except (BenchmarkError, FileNotFoundError) as exc:
            return fail(f"parity set: {exc} (or skip the check with --parity-count 0)")
    transform = spec.transform()
    failed = False

    def check(key: str, rep: Any) -> None:
        report["parity"][key] = rep.to_dict()
        print(rep.summary())
        for mm in rep.mismatches[:5]:
            print(f"  differs: {mm['image']}: torch {mm['torch']!r} vs {mm['exported']!r}")

    try:
        if want_onnx:
            path = out / "model.onnx"
            meta = export_onnx(model, path, opset=args.opset, dynamic_width=False if args.fixed_width else None,
                               input_spec=spec)
            report["files"]["onnx"] = str(path)
            report["onnx"] = {"dynamic_batch": meta.dynamic_batch, "dynamic_width": meta.dynamic_width,
                              **meta.extra}
            width = "dynamic" if meta.dynamic_width else f"fixed {spec.img_w}"
            print(f"wrote {path} (opset {args.opset}, dynamic batch, width {width})")
            if "dynamic_width_note" in meta.extra:
                print(f"  {meta.extra['dynamic_width_note']}")
            if images:
                rep = parity_check(model, path, images, transform, args.batch_size, args.threads, names=names)
                check("onnx", rep)
                failed |= not rep.passed
        if args.torchscript:
            path = out / "model.ts"
            meta = export_torchscript(model, path, input_spec=spec)
            report["files"]["torchscript"] = str(path)
            print(f"wrote {path} (torch.jit.trace; width {'dynamic' if meta.dynamic_width else 'fixed'})")
            if images:
                rep = torchscript_parity_check(model, path, images, transform, args.batch_size, names=names)
                check("torchscript", rep)
                failed |= not rep.passed
        if args.int8:
            calib: list[Any] = []
            if args.int8_mode == "static":
                calib, calib_path = _calibration_images(args, root, cfg.data.channels)
                print(f"calibrating on {len(calib)} crops of {calib_path}")
            path = out / "model.int8.onnx"
            quantize_onnx(out / "model.onnx", path, mode=args.int8_mode, calibration=calib,
                          batch_size=args.batch_size)
            report["files"]["int8"] = str(path)
            print(f"wrote {path} (int8, {args.int8_mode})")
            if images:
                check("int8", parity_check(model, path, images, transform, args.batch_size, args.threads,
                                           backend=f"onnxruntime int8 ({args.int8_mode})", names=names))
            if not args.no_accuracy:
                acc = _accuracy({"fp32": out / "model.onnx", "int8": path}, args, cfg, root)
                report["int8_accuracy"] = acc
                print(_accuracy_table(acc))
                subset = f" (first {args.accuracy_count} images of each)" if args.accuracy_count else ""
                verdict = "yes" if acc["within_tolerance"] else "NO"
                print(f"int8 within {INT8_ACCURACY_TOLERANCE} point of fp32 on every benchmark{subset}: "
                      f"{verdict} (largest drop {acc['max_drop']:.2f}, protocol {acc['protocol']})")
        if args.speed:
            files = {k: Path(report["files"][f]) for k, f in (("fp32", "onnx"), ("int8", "int8"))
                     if f in report["files"]}
            report["speed"] = _speed(model, files, args.threads)
            for s in report["speed"]:
                print(f"{s['name']}: {s['ms_per_image']:.2f} ms/image (batch 1), {s['images_per_s']:.0f} images/s "
                      f"(batch {s['batch']}), {s['threads']} thread(s)")
        if args.bundle:
            if failed:
                return fail("not bundling: an export reads some parity images differently from PyTorch (see above)")
            int8_ok = _int8_bundle_verdict(args, report)
            written = write_bundle(args.checkpoint, report["files"]["onnx"], args.bundle,
                                   int8_path=report["files"]["int8"] if int8_ok else None,
                                   info={"int8_accuracy": report.get("int8_accuracy"), "parity": report["parity"]},
                                   name=args.bundle_name, weights=args.bundle_weights)
            report["bundle"] = {k: str(v) for k, v in written.items()}
            print(f"bundle in {args.bundle}: {', '.join(sorted(p.name for p in written.values()))}")
    except (ExportError, BenchmarkError, FileNotFoundError, ValueError) as exc:
        return fail(str(exc))
    (out / "export_report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"written: {out / 'export_report.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
