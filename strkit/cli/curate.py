"""strkit-curate: teacher-assisted data curation (filter synthetic data, audit labels, pseudo-label crops).

Subcommands (see strkit.engine.curation):
  filter SRC_LMDB OUT_LMDB   copy the records the teacher reads as labelled; print the fraction dropped
  audit SOURCE --out TSV     list the labels of a folder / gt file / LMDB the teacher disagrees with
  pseudo FOLDER --out DIR    label unlabelled crops; DIR/labels.tsv trains with {path: DIR, kind: folder}

The teacher is RapidOCR's PP-OCR recogniser by default (pip install 'strkit[teacher]'; its ONNX model ships
in the wheel, nothing is downloaded) or a strkit CTC model (--teacher strkit --teacher-model PATH).
Exit status: 0 done, 2 usage or input error.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from strkit.charset import PROTOCOLS, Charset
from strkit.cli.common import Parser, interrupted, positive_int, sigterm_interrupts, user_errors
from strkit.data.lmdb.reader import lmdb_num_samples
from strkit.engine import curation
from strkit.inference.teachers import TEACHERS, build_teacher

PROG = "strkit-curate"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="rapidocr", help="teacher kind: rapidocr (default) or strkit")
    p.add_argument("--teacher-model", default=None,
                   help="rapidocr: the recogniser file in rapidocr/models (default PP-OCRv6_rec_small.onnx); "
                        "strkit: a .pt checkpoint or .onnx export (required)")
    p.add_argument("--threads", type=positive_int, default=1, help="teacher threads (default 1)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="crops per teacher call (default 32)")
    p.add_argument("--charset", default="36_lowercase",
                   help="student charset the teacher's reading is folded into (preset or file; default "
                        "36_lowercase)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    sub = p.add_subparsers(dest="command", required=True, metavar="{filter,audit,pseudo}")
    f = sub.add_parser("filter", help="drop the records of an LMDB the teacher cannot read",
                       description="Copy the records of SRC that the teacher reads as labelled into OUT.")
    f.add_argument("src", type=Path, help="the LMDB to filter (e.g. tools/synth.py output)")
    f.add_argument("out", type=Path, help="the filtered LMDB to write")
    f.add_argument("--protocol", default="36", choices=PROTOCOLS,
                   help="compare reading and label under this protocol (default 36)")
    f.add_argument("--min-confidence", type=float, default=0.0,
                   help="also drop records whose weakest teacher character is below this (default 0)")
    f.add_argument("--limit", type=int, default=0, help="only the first N records (default: all)")
    f.add_argument("--overwrite", action="store_true", help="replace OUT")
    f.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT.partial")
    _add_common(f)
    a = sub.add_parser("audit", help="list labels the teacher disagrees with (a TSV for review)",
                       description="List the labels the teacher reads otherwise, most confident first; "
                                   "nothing is relabelled.")
    a.add_argument("source", type=Path, help="folder with labels.tsv, a gt file, or an LMDB")
    a.add_argument("--out", type=Path, required=True, help="the TSV to write")
    a.add_argument("--protocol", default="36", choices=PROTOCOLS, help="comparison protocol (default 36)")
    a.add_argument("--limit", type=int, default=0, help="only the first N items (default: all)")
    a.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _add_common(a)
    s = sub.add_parser("pseudo", help="pseudo-label a folder of unlabelled crops",
                       description="Read every image under FOLDER; write OUT/labels.tsv (confident readings) "
                                   "and OUT/readings.tsv (all readings with confidences).")
    s.add_argument("folder", type=Path, help="folder of unlabelled crops (searched recursively)")
    s.add_argument("--out", type=Path, required=True, help="output folder for labels.tsv and readings.tsv")
    s.add_argument("--min-confidence", type=float, default=0.9,
                   help="keep readings whose weakest character confidence is at least this (default 0.9)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing OUT/labels.tsv")
    _add_common(s)
    return p


def _check_args(args: argparse.Namespace) -> str | None:
    """A one-line message for a bad argument, or ``None``."""
    if getattr(args, "limit", 0) < 0:
        return f"--limit must be 0 (all) or positive, got {args.limit}"
    conf = getattr(args, "min_confidence", 0.0)
    if not 0.0 <= conf <= 1.0:
        return f"--min-confidence must lie in [0, 1], got {conf}"
    if args.teacher not in TEACHERS:
        return f"unknown --teacher '{args.teacher}'; teachers: {', '.join(TEACHERS.names())}"
    if args.teacher == "strkit" and not args.teacher_model:
        return "--teacher strkit needs --teacher-model PATH (a .pt checkpoint or .onnx export)"
    out = getattr(args, "out", None)
    if args.command == "audit" and out.exists() and not args.overwrite:
        return f"{out} exists; pass --overwrite to replace it, or choose another --out"
    return None


def _teacher(args: argparse.Namespace) -> curation.Teacher:
    return build_teacher(args.teacher, args.teacher_model, threads=args.threads, batch_size=args.batch_size)


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; library errors propagate (see :func:`main`)."""
    charset = Charset.from_spec(args.charset)
    teacher = _teacher(args)
    if args.command == "filter":
        total = lmdb_num_samples(args.src)
        total = min(total, args.limit) if args.limit else total
        try:
            with sigterm_interrupts(), tqdm(total=total, unit="img", desc="filter",
                                            disable=True if args.quiet else None) as bar:
                report = curation.filter_lmdb(args.src, args.out, teacher, charset, args.protocol,
                                              args.min_confidence, args.batch_size, args.overwrite, args.resume,
                                              args.limit, progress=bar.update)
        except KeyboardInterrupt as exc:
            return interrupted(exc, f"the records filtered so far are in {args.out}.partial; the same command "
                                    "with --resume continues")
        print(report.summary())
        return 0
    if args.command == "audit":
        with tqdm(unit="img", desc="audit", disable=True if args.quiet else None) as bar:
            report = curation.audit_labels(args.source, teacher, charset, args.protocol, args.batch_size,
                                           args.limit, progress=bar.update)
        curation.write_audit_tsv(report, args.out)
        print(f"{report.summary()} -> {args.out}")
        return 0
    with tqdm(unit="img", desc="pseudo", disable=True if args.quiet else None) as bar:
        report = curation.pseudo_label(args.folder, args.out, teacher, charset, args.min_confidence,
                                       args.batch_size, args.overwrite, progress=bar.update)
    print(f"{report.summary()} -> {args.out / 'labels.tsv'}")
    return 0


@user_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 done, 2 usage or input error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    message = _check_args(args)
    if message:
        parser.error(message)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
