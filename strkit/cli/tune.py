"""strkit-tune: training-protocol search on Optuna (short proxy trials, pruning, resumable studies).

Subcommands (SPACE is a search space, see configs/tune/; key.sub=value overrides after it are fixed settings
added to its 'overrides'):

    strkit-tune run SPACE [overrides] --out OUT --trials 30 --minutes 6 [--jobs 2] [--sampler tpe]
        run (or continue) the study in OUT (SQLite OUT/study.db unless --storage), then write the report
    strkit-tune report OUT
        OUT/best.yaml (train it: strkit-train BASE --protocol OUT/best.yaml), OUT/top/*.yaml, trials.csv,
        report.md (trials table, parameter importances), history.png
    strkit-tune fidelity OUT --factor 4 --top 5 --random 2 [--jobs 2 --threads 1]
        retrain those protocols at 4x the proxy budget (a rerun continues cut runs from their last.pt);
        Spearman rank correlation proxy vs long

The objective is the best validation accuracy on the held-out part of the training data, never a benchmark
test set. Many machines work one study when they run the same command with the same --storage (an Optuna
RDB URL such as postgresql://user:password@host/db). Needs Optuna: pip install 'strkit[tune]'.
Exit status: 0 done, 2 on a user error (search space, config, data, storage), printed as one line.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from strkit.cli.common import Parser, non_negative_int, positive_float, positive_int, setup_logging, user_errors


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


_fraction.__name__ = "number"


def _storage_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--storage", default=None, metavar="URL",
                    help="Optuna RDB URL of the study (default: sqlite:///OUT/study.db); e.g. "
                         "postgresql://user:password@host/db to share it between machines")
    sp.add_argument("--study-name", default=None,
                    help="study name (run: default the search space's file name; report/fidelity: the only "
                         "study in the storage)")
    sp.add_argument("-v", "--verbose", action="store_true", help="debug log messages")


def build_parser() -> Parser:
    from strkit.engine.tuning.trials import PRUNERS, SAMPLERS

    p = Parser(prog="strkit-tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    run = sub.add_parser("run", help="run or continue a study, then write its report")
    run.add_argument("space", help="search space YAML (see configs/tune/)")
    run.add_argument("overrides", nargs="*", help="key.sub=value fixed settings added to the space's overrides")
    run.add_argument("--out", required=True, help="study folder: study.db, trials/NUMBER/, report files")
    run.add_argument("--trials", type=positive_int, default=30,
                     help="finished (complete or pruned) trials to reach; a rerun continues up to it (default 30)")
    budget = run.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=positive_float, help="wall-clock budget of each trial (train.max_minutes)")
    budget.add_argument("--steps", type=positive_int, help="optimiser steps of each trial (train.steps)")
    run.add_argument("--subset", type=_fraction, default=1.0,
                     help="fraction of each training source a trial trains on (default 1 = all; validation "
                          "data is the same)")
    run.add_argument("--sampler", choices=SAMPLERS.names(), default="tpe",
                     help="tpe (default), nsga2 (evolutionary) or cmaes (evolution strategy, needs pip install cmaes)")
    run.add_argument("--pruner", choices=PRUNERS.names(), default="asha",
                     help="asha (successive halving, default), hyperband, median or none")
    run.add_argument("--min-resource", type=non_negative_int, default=0,
                     help="asha/hyperband: steps (or seconds, with --minutes) before the first pruning decision "
                          "(0 = automatic)")
    run.add_argument("--reduction-factor", type=positive_int, default=3,
                     help="asha/hyperband: 1/N of the trials go on at each rung (default 3)")
    run.add_argument("--population", type=positive_int, default=10, help="nsga2: population size (default 10)")
    run.add_argument("--jobs", type=positive_int, default=1,
                     help="trials in parallel worker processes on this machine (default 1)")
    run.add_argument("--threads", type=non_negative_int, default=0,
                     help="torch threads of this machine split between the jobs (default: the CPUs this process "
                          "may use; each trial gets threads/jobs, at least 1)")
    run.add_argument("--seed", type=non_negative_int, default=0, help="sampler seed (worker i uses seed+i)")
    _storage_args(run)

    report = sub.add_parser("report", help="write the report of a study")
    report.add_argument("out", help="study folder (run --out)")
    report.add_argument("--top", type=positive_int, default=5, help="protocol files written for the N best (default 5)")
    _storage_args(report)

    fid = sub.add_parser("fidelity", help="proxy fidelity: retrain chosen protocols at a longer budget")
    fid.add_argument("out", help="study folder (run --out)")
    fid.add_argument("--factor", type=positive_float, default=4.0, help="budget multiple of the long runs (default 4)")
    fid.add_argument("--top", type=non_negative_int, default=5, help="best protocols retrained (default 5)")
    fid.add_argument("--random", type=non_negative_int, default=2,
                     help="random other complete protocols retrained (default 2)")
    fid.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random choice")
    fid.add_argument("--jobs", type=positive_int, default=1,
                     help="long runs trained at once in worker processes (default 1)")
    fid.add_argument("--threads", type=non_negative_int, default=0,
                     help="torch threads of each long run (default: the base config's train.threads)")
    _storage_args(fid)
    return p


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run(args: argparse.Namespace) -> int:
    from strkit.engine.tuning import protocol_space, study_report, trials

    space = protocol_space.load_space(args.space, args.overrides)  # every check before any work
    protocol_space.import_optuna()  # the one-line install hint
    trials.SAMPLERS.get(args.sampler)(protocol_space.import_optuna(), trials.SearchOptions(sampler=args.sampler))
    threads = max(1, (args.threads or _cpu_count()) // args.jobs)
    job = trials.StudyJob(
        space=str(space.path), extra_overrides=tuple(args.overrides), out=str(Path(args.out).absolute()),
        storage=args.storage or trials.default_storage(args.out), study_name=args.study_name or space.path.stem,
        budget=trials.Budget(minutes=args.minutes or 0.0, steps=args.steps or 0), trials=args.trials,
        subset=args.subset, threads=threads,
        options=trials.SearchOptions(sampler=args.sampler, pruner=args.pruner, seed=args.seed,
                                     population=args.population, min_resource=args.min_resource,
                                     reduction_factor=args.reduction_factor))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    study = trials.run_study(job, jobs=args.jobs)
    files = study_report.write_report(study, args.out)
    print(f"{trials.finished_trials(study)} finished trials in {job.storage}; report: "
          + ", ".join(str(f) for f in files.values()))
    return 0


def _load(args: argparse.Namespace):  # noqa: ANN202 - an optuna Study
    from strkit.engine.tuning import protocol_space, trials

    if not args.storage and not (Path(args.out) / "study.db").is_file():
        raise protocol_space.TuneError(f"no study in {args.out}: {Path(args.out) / 'study.db'} does not exist "
                               f"(give --storage for a study elsewhere)")
    return trials.load_study(args.storage or trials.default_storage(args.out), args.study_name)


def _report(args: argparse.Namespace) -> int:
    from strkit.engine.tuning import study_report

    files = study_report.write_report(_load(args), args.out, top=args.top)
    print("report: " + ", ".join(str(f) for f in files.values()))
    return 0


def _fidelity(args: argparse.Namespace) -> int:
    from strkit.engine.tuning import study_report

    result = study_report.fidelity_check(_load(args), args.out, factor=args.factor, top=args.top,
                                         random_count=args.random, seed=args.seed, threads=args.threads,
                                         jobs=args.jobs)
    print(result.table(), end="")
    return 0


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_with_overrides(argv)
    setup_logging(args.verbose)
    return {"run": _run, "report": _report, "fidelity": _fidelity}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
