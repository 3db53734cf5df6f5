"""``tools/train.py CONFIG [key=value ...] [--resume [LAST_PT]]``: train a recogniser."""

from __future__ import annotations

import argparse
from pathlib import Path

from strkit.cli.common import fail, setup_logging
from strkit.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__)
    p.add_argument("config", help="YAML config (see configs/train/)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=1000")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a last.pt (default: train.out_dir/last.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier run in train.out_dir (its last.pt, best.pt, metrics.csv)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        return fail(str(exc))
    if args.print_config:
        print(cfg.dump(), end="")
        return 0
    # Text-only configs (every data.train source has kind 'words') pre-train the language model.
    from strkit.engine.lm_pretrain import is_text_only, run_lm_pretraining

    try:
        if is_text_only(cfg):
            if args.resume:
                return fail("--resume is not supported for language-model pre-training "
                            "(data.train kind: words)")
            metrics = run_lm_pretraining(cfg, overwrite=args.overwrite)
            print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            return 0
    except ValueError as exc:
        return fail(str(exc))
    resume = args.resume
    if resume == "auto":
        resume = Path(cfg.train.out_dir) / "last.pt"
        if not resume.is_file():
            return fail(f"--resume: {resume} does not exist (nothing to resume in train.out_dir)")
    from strkit.engine.run_dir import RunDirError
    from strkit.engine.trainer import Trainer

    try:
        metrics = Trainer(cfg, resume=resume, overwrite=args.overwrite).fit()
    except RunDirError as exc:
        return fail(str(exc))
    if metrics:
        print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0
