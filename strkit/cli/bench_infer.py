"""``tools/bench.py infer``: inference latency (ms/image at batch 1) and throughput (images/s at batch 64).

Every combination of ``--models`` × ``--precision`` × ``--lstm-bf16`` × ``--channels-last`` ×
``--fuse`` × ``--onednn-bf16`` runs in a fresh process and times ``model.predict`` (forward + greedy decoding)
under ``torch.inference_mode()`` in eager PyTorch (see :mod:`strkit.bench.infer_speed`); with
``--backend onnxruntime`` each model is also exported to ONNX and timed in ONNX Runtime (fp32). A model is a
config name or YAML (random weights, at ``--img-h``/``--img-w``), a trained checkpoint (``.pt``) or an
exported ``.onnx`` file (e.g. the int8 one; ONNX Runtime only), both timed at their own input size::

    flock /tmp/strkit-timing.lock python tools/bench.py infer --models crnn trba \\
        --precision fp32 bf16 --channels-last off on --fuse off on --backend torch onnxruntime \\
        --json runs/bench/infer.json
"""

from __future__ import annotations

import argparse
import itertools

from strkit.cli.bench import BENCH_COMMANDS, report
from strkit.cli.bench_train import _on_off, add_common_arguments, check_common_arguments
from strkit.cli.common import fail

#: The same as :data:`strkit.bench.infer_speed.INFER_PRECISIONS` (not imported here: it imports torch).
PRECISIONS = ("fp32", "bf16", "bf16-weights")
#: The same as :data:`strkit.bench.infer_speed.INFER_BACKENDS`.
BACKENDS = ("torch", "onnxruntime")


@BENCH_COMMANDS.register("infer")
class InferBench:
    """Inference speed: ms/image at batch 1 (median) and images/s at batch 64, forward + greedy decoding."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_common_arguments(parser, ["crnn", "trba", "mbv2-ctc"])
        parser.add_argument("--precision", nargs="+", choices=list(PRECISIONS), default=["fp32", "bf16"],
                            help="fp32; bf16 = fp32 weights under bf16 autocast; bf16-weights = weights "
                                 "stored in bf16, no autocast (default: fp32 bf16)")
        parser.add_argument("--fuse", nargs="+", type=_on_off, default=[False], metavar="{on,off}",
                            help="fold Conv2d+BatchNorm2d pairs before timing (default: off)")
        parser.add_argument("--onednn-bf16", nargs="+", type=_on_off, default=[False], metavar="{on,off}",
                            help="let oneDNN use bf16 arithmetic for fp32 convolutions, matmuls and RNNs "
                                 "(default: off)")
        parser.add_argument("--backend", nargs="+", choices=list(BACKENDS), default=["torch"],
                            help="torch = eager PyTorch with the levers above; onnxruntime = the model exported "
                                 "to ONNX and run by ONNX Runtime (fp32, one case per model; default: torch)")
        parser.add_argument("--batch", type=int, default=64, help="batch size of the throughput figure")
        parser.add_argument("--repeats", type=int, default=50, help="timed batch-1 calls (default 50)")
        parser.add_argument("--batch-repeats", type=int, default=5, help="timed batch calls (default 5)")
        parser.add_argument("--warmup", type=int, default=5, help="untimed batch-1 calls first (default 5)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from strkit.bench import infer_speed, tables
        from strkit.config import ConfigError
        from strkit.engine import train_timing

        error = check_common_arguments(args)
        if error is None and min(args.batch, args.repeats, args.batch_repeats) < 1:
            error = "--batch, --repeats and --batch-repeats must be >= 1"
        if error is not None:
            return fail(error)
        cases = [infer_speed.InferCase(model=m, precision=p, lstm_autocast=lb, channels_last=cl, fuse=fu,
                                 onednn_bf16=ob, img_h=args.img_h, img_w=args.img_w, channels=args.channels,
                                 threads=args.threads, batch=args.batch, repeats=args.repeats,
                                 batch_repeats=args.batch_repeats, warmup=args.warmup)
                 for m, p, lb, cl, fu, ob in itertools.product(args.models, args.precision, args.lstm_bf16,
                                                               args.channels_last, args.fuse, args.onednn_bf16)
                 if not (lb and p != "bf16") and not m.lower().endswith(".onnx")] if "torch" in args.backend else []
        cases += [infer_speed.InferCase(model=m, backend=b, img_h=args.img_h, img_w=args.img_w, channels=args.channels,
                                  threads=args.threads, batch=args.batch, repeats=args.repeats,
                                  batch_repeats=args.batch_repeats, warmup=args.warmup)
                  for m in args.models for b in args.backend if b != "torch"]
        gate = train_timing.LoadGate(args.max_busy, args.retries, args.wait_s)
        results = []
        for case in cases:
            print(f"infer: {case.model} {case.levers} ...", flush=True)
            try:
                result = train_timing.run_case(infer_speed.measure_infer, case, gate, isolate=not args.in_process)
            except (ConfigError, RuntimeError, ValueError, ImportError) as exc:
                return fail(str(exc))
            print(f"  {result.ms_per_image:.2f} ms/image (batch 1), {result.images_per_s:.0f} images/s "
                  f"(batch {case.batch})", flush=True)
            results.append(result)
        return report(args, "infer", tables.infer_table(results), results)
