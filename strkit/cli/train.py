"""strkit-train CONFIG [key=value ...] [--resume [LAST_PT]]: train a recogniser.

CONFIG is a YAML file (see configs/train/); key.sub=value overrides follow it, e.g. train.steps=1000
or "data.train=[{path: lmdb/words, kind: lmdb}]" (YAML values: a space after each ':').
--protocol FILE merges a protocol (e.g. the best.yaml of strkit-tune: settings found by protocol search)
over CONFIG before the overrides; its _base_, if any, is ignored there (run the file as CONFIG to use it).
Exit status: 0 done, 2 on a user error (bad config, data or checkpoint), printed as one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from strkit.cli.common import Parser, check_device, fail, resume_path, setup_logging, user_errors
from strkit.config import Config, load_config


def build_parser() -> Parser:
    p = Parser(prog="strkit-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config (see configs/train/), or the name of a config shipped with "
                                  "strkit (finetune)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=1000")
    p.add_argument("--protocol", metavar="FILE", default=None,
                   help="YAML mapping of settings merged over CONFIG before the overrides, e.g. the best.yaml "
                        "written by strkit-tune (its _base_ is ignored)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a last.pt (default: train.out_dir/last.pt)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the earlier run in train.out_dir (its last.pt, best.pt, metrics.csv)")
    p.add_argument("--print-config", action="store_true",
                   help="check the config (including the model: stage names and their keys), print it resolved "
                        "and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="debug log messages")
    return p


def check_config(cfg: Config) -> None:
    """Everything that can be checked before training starts: the device, and the model section (registered
    stage names and their keys, by building the model once on the CPU)."""
    from strkit.models.recognizer import build_model

    if cfg.train.device != "auto":
        check_device(cfg.train.device)
    build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels)


def packaged_config(name: str) -> str:
    """``name`` itself when it is a file, else a config shipped with the package under that name
    (``finetune`` -> ``strkit/configs/finetune.yaml``), so the recipes work from an installed wheel."""
    if Path(name).exists():
        return name
    from importlib import resources

    shipped = Path(str(resources.files("strkit") / "configs")) / f"{Path(name).stem}.yaml"
    return str(shipped) if shipped.is_file() and Path(name).suffix in ("", ".yaml") else name


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_with_overrides(argv)
    setup_logging(args.verbose)
    from strkit.engine.finetune import adopt_init_config

    cfg = adopt_init_config(load_config(packaged_config(args.config), args.overrides, protocol=args.protocol))
    check_config(cfg)
    if args.print_config:
        print(cfg.dump(), end="")
        return 0
    # Text-only configs (every data.train source has kind 'words') pre-train the language model.
    from strkit.engine.lm_pretrain import is_text_only, run_lm_pretraining

    if is_text_only(cfg):
        if args.resume:
            return fail("--resume is not supported for language-model pre-training "
                        "(data.train kind: words)")
        metrics = run_lm_pretraining(cfg, overwrite=args.overwrite)
        print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return 0
    resume = resume_path(args.resume, cfg.train.out_dir)
    from strkit.engine.run_dir import RunDirError
    from strkit.engine.trainer import Trainer

    try:
        metrics = Trainer(cfg, resume=resume, overwrite=args.overwrite).fit()
    except RunDirError as exc:
        return fail(str(exc))
    if metrics:
        print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
