"""strkit-search: latency-aware architecture search.

Subcommands (CONFIG is a YAML config with model.backbone.name: supernet and a search section, see
configs/search/; key.sub=value overrides follow it):

    strkit-search run CONFIG [overrides] [--resume [LAST_PT]]
        search; writes arch.json, report, retrain.yaml
    strkit-search lut CONFIG [overrides] [--out LUT_JSON]
        measure the latency table only
    strkit-search validate-lut CONFIG [overrides] --lut LUT_JSON [-n 20]
        LUT prediction vs measurement, MAE in %
    strkit-search fixed CONFIG [overrides] --op k3_e3 [--out DIR]
        a fixed baseline of the space (every cell one op): DIR/arch.json + DIR/train.yaml

Runs under torchrun (run only) like tools/train.py.
Exit status: 0 done, 2 on a user error (config, data, checkpoint), printed as one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from strkit.cli.common import Parser, non_negative_int, positive_int, resume_path, setup_logging, user_errors
from strkit.config import Config, load_config


def build_parser() -> Parser:
    p = Parser(prog="strkit-search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", help="YAML config (see configs/search/)")
        sp.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. search.target_ms=5")
        sp.add_argument("-v", "--verbose", action="store_true", help="debug log messages")

    run = sub.add_parser("run", help="run the search")
    common(run)
    run.add_argument("--resume", nargs="?", const="auto", default=None,
                     help="resume from a last.pt (default: train.out_dir/last.pt)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the earlier run in train.out_dir (its last.pt, best.pt, metrics.csv)")
    run.add_argument("--print-config", action="store_true",
                     help="check the config (including the model and search sections), print it resolved and exit")

    lut = sub.add_parser("lut", help="measure the latency lookup table")
    common(lut)
    lut.add_argument("--out", default=None, help="output JSON (default: train.out_dir/lut.json)")
    lut.add_argument("--validate", type=non_negative_int, default=0, metavar="N",
                     help="also time N random sub-networks end to end and report the MAE")

    val = sub.add_parser("validate-lut", help="time random sub-networks and compare with the table")
    common(val)
    val.add_argument("--lut", required=True, help="latency table JSON")
    val.add_argument("-n", type=positive_int, default=20, help="number of random sub-networks (default 20)")
    val.add_argument("--json", default=None, help="also write the result to this JSON file")

    fixed = sub.add_parser("fixed", help="write a fixed baseline of the space (the same op in every cell)")
    common(fixed)
    fixed.add_argument("--op", required=True, help="op of every cell, e.g. k3_e3, k5_e6")
    fixed.add_argument("--first-op", default=None,
                       help="op of cells that lack --op (default: the candidate with the same kernel)")
    fixed.add_argument("--out", default=None, help="output folder (default: train.out_dir/../fixed_OP)")
    return p


def _model(cfg: Config):  # noqa: ANN202 - a RecognitionModel
    from strkit.models.recognizer import build_model
    from strkit.nas import search_space  # noqa: F401  (registers 'supernet')

    return build_model(cfg.model, cfg.data.img_h, cfg.data.img_w, cfg.data.channels)


def _threads(cfg: Config) -> int:
    import torch

    return cfg.search.get("lut_threads") or cfg.train.threads or torch.get_num_threads()


def _print_validation(result) -> None:  # noqa: ANN001 - LutValidation
    print(f"{len(result.measured_ms)} random sub-networks: LUT backbone latency vs measured end to end: "
          f"MAE {result.mae_pct:.1f}% (bias {result.bias_pct:+.1f}%), Pearson r {result.correlation:.3f}, "
          f"scale {result.scale:.3f} (MAE after scaling {result.scaled_mae_pct:.1f}%)")


def _lut(cfg: Config, out: str | None, validate: int) -> int:
    from strkit.nas.arch import searched_parts
    from strkit.nas.config import search_config
    from strkit.nas.latency.cost import CostModel
    from strkit.nas.latency.table import measure_lut
    from strkit.nas.latency.validation import calibrate_lut, validate_lut

    s = search_config(cfg.search)
    model = _model(cfg)
    threads = _threads(cfg)
    table = measure_lut(model, s.lut_device, threads, s.lut_repeats, s.lut_warmup, s.lut_batch,
                        include_rest=s.lut_rest)
    calibrate_lut(model, table, s.lut_calibrate, s.lut_device, threads, s.lut_repeats, s.lut_warmup)
    path = table.save(out or Path(cfg.train.out_dir) / "lut.json")
    lo, hi = CostModel(model, "latency", table).bounds()
    print(f"wrote {path}: {len(table.entries)} entries on {table.meta['device']} ({table.meta['device_name']}), "
          f"{table.meta['threads']} thread(s), batch {table.meta['batch']}; calibration scale {table.scale:.3f} "
          f"({s.lut_calibrate} random sub-networks timed whole)")
    parts = " + ".join(searched_parts(model))
    print(f"sub-network latency ({parts} + fixed parts {table.fixed_ms:.3f} ms): {lo:.3f} .. {hi:.3f} ms")
    if validate > 0:
        _print_validation(validate_lut(model, table, validate, s.lut_device, threads, s.lut_repeats,
                                       s.lut_warmup))
    return 0


def _validate(cfg: Config, lut_path: str, n: int, json_out: str | None) -> int:
    from strkit.nas.config import search_config
    from strkit.nas.latency.table import load_lut
    from strkit.nas.latency.validation import validate_lut

    s = search_config(cfg.search)
    table = load_lut(lut_path)
    result = validate_lut(_model(cfg), table, n, s.lut_device, int(table.meta.get("threads", 0) or 0),
                          s.lut_repeats, s.lut_warmup)
    _print_validation(result)
    if json_out:
        Path(json_out).write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    return 0


def _fixed(cfg: Config, op: str, first_op: str | None, out: str | None) -> int:
    from strkit.engine.searcher import write_retrain_config
    from strkit.nas.arch import arch_ops, fixed_arch, save_arch

    folder = Path(out) if out else Path(cfg.train.out_dir).parent / f"fixed_{op}"
    model = _model(cfg)
    arch = fixed_arch(model, op, first_op)
    arch_path = save_arch(arch, folder / "arch.json")
    train_path = write_retrain_config(cfg, arch_path, folder / "train.yaml", folder / "run")
    if "rectifier" in arch:
        print(f"rectifier: {' '.join(arch_ops(arch, 'rectifier'))}")
    print(f"{' '.join(arch_ops(arch))}\n{_arch_costs(cfg, model, arch)}\narchitecture: {arch_path}\n"
          f"train it: python tools/train.py {train_path}")
    return 0


def _arch_costs(cfg: Config, model: Any, arch: dict[str, Any]) -> str:
    """One line: the searched parts' parameters and MFLOPs of ``arch`` in ``model``'s space, and its
    whole-recogniser latency by the search's latency table (``search.lut``) when one is given."""
    from strkit.nas.arch import arch_ops, searched_edges
    from strkit.nas.latency.cost import CostModel
    from strkit.nas.latency.table import load_lut

    ops = [*arch_ops(arch), *(arch_ops(arch, "rectifier") if "rectifier" in arch else [])]
    choices = [e.candidates.index(o) for e, o in zip(searched_edges(model), ops, strict=True)]
    text = (f"searched parts: {CostModel(model, 'params').of_choices(choices):.3f} M parameters, "
            f"{CostModel(model, 'flops').of_choices(choices):.1f} MFLOPs per image")
    lut = cfg.search.get("lut")
    if lut and Path(lut).is_file():
        text += f"; latency table ({lut}): {CostModel(model, 'latency', load_lut(lut)).of_choices(choices):.2f} ms"
    return text


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_with_overrides(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, args.overrides)
    from strkit.nas.config import search_config

    search_config(cfg.search)
    if args.command == "lut":
        return _lut(cfg, args.out, args.validate)
    if args.command == "validate-lut":
        return _validate(cfg, args.lut, args.n, args.json)
    if args.command == "fixed":
        return _fixed(cfg, args.op, args.first_op, args.out)
    if args.print_config:
        _model(cfg)  # the model section: registered names and their keys
        print(cfg.dump(), end="")
        return 0
    resume = resume_path(args.resume, cfg.train.out_dir)
    from strkit.engine.searcher import Searcher

    result = Searcher(cfg, resume=resume, overwrite=args.overwrite).fit()
    if result:
        print(f"architecture: {result['arch']}\nreport: {result['report']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
