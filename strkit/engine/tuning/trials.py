"""Running a study: samplers, pruners and the RDB storage, the proxy trial (a short training run reporting
each validation to the pruner), and the workers that run trials until the requested number finished.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strkit.engine.tuning.protocol_space import SearchSpace, TuneError, build_config, import_optuna, load_space
from strkit.registry import Registry


@dataclass(frozen=True)
class SearchOptions:
    """How the study searches: sampler and pruner names and their settings."""

    sampler: str = "tpe"
    pruner: str = "asha"
    seed: int = 0
    population: int = 10          # nsga2: individuals per generation
    min_resource: int = 0         # asha / hyperband: 0 = Optuna's automatic choice
    reduction_factor: int = 3


SAMPLERS: Registry[Any] = Registry("sampler")


PRUNERS: Registry[Any] = Registry("pruner")


@SAMPLERS.register("tpe")
def _tpe(optuna: Any, o: SearchOptions) -> Any:
    """Tree-structured Parzen estimator (Optuna's default; handles conditional parameters)."""
    return optuna.samplers.TPESampler(seed=o.seed)


@SAMPLERS.register("nsga2")
def _nsga2(optuna: Any, o: SearchOptions) -> Any:
    """NSGA-II, an evolutionary search (crossover and mutation of the best protocols)."""
    return optuna.samplers.NSGAIISampler(seed=o.seed, population_size=o.population)


@SAMPLERS.register("cmaes")
def _cmaes(optuna: Any, o: SearchOptions) -> Any:
    """CMA-ES, an evolution strategy over the numeric parameters (categorical ones: sampled independently)."""
    if importlib.util.find_spec("cmaes") is None:
        raise TuneError("--sampler cmaes needs the cmaes package: pip install cmaes")
    return optuna.samplers.CmaEsSampler(seed=o.seed, warn_independent_sampling=False)


@PRUNERS.register("asha")
def _asha(optuna: Any, o: SearchOptions) -> Any:
    """Asynchronous successive halving: at each rung only the best 1/reduction_factor go on."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=o.min_resource or "auto",
                                                  reduction_factor=o.reduction_factor)


@PRUNERS.register("hyperband")
def _hyperband(optuna: Any, o: SearchOptions) -> Any:
    """Hyperband: several successive-halving brackets with different minimum budgets."""
    return optuna.pruners.HyperbandPruner(min_resource=o.min_resource or 1, reduction_factor=o.reduction_factor)


@PRUNERS.register("median")
def _median(optuna: Any, o: SearchOptions) -> Any:
    """Stop a trial below the median of the earlier trials at the same resource."""
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=o.min_resource)


@PRUNERS.register("none")
def _nop(optuna: Any, o: SearchOptions) -> Any:
    """No pruning: every trial uses its whole budget."""
    return optuna.pruners.NopPruner()


def default_storage(out: str | Path) -> str:
    """``sqlite:///<out>/study.db``: the study's default storage."""
    return f"sqlite:///{Path(out).absolute() / 'study.db'}"


def open_storage(url: str) -> Any:
    """An Optuna RDB storage for ``url`` (SQLite, PostgreSQL, MySQL...) with heartbeats (every 30 s): a trial
    whose heartbeat is 90 s old (its process was killed) is failed by the next trial to start, and retried once."""
    optuna = import_optuna()
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    storages = optuna.storages
    try:
        with warnings.catch_warnings():  # heartbeats are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if "heartbeat_stale_trial_callback" in inspect.signature(storages.RDBStorage).parameters:  # >= 4.9
                retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
            else:
                retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=1)}
            return storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=90,
                                       **retry)
    except (ImportError, ModuleNotFoundError) as exc:
        raise TuneError(f"storage {url}: a database driver is missing ({exc}); e.g. pip install psycopg2-binary "
                        f"for postgresql://") from None
    except Exception as exc:  # sqlalchemy's errors: bad URL, unreachable server
        raise TuneError(f"cannot open the study storage {url}: {str(exc).splitlines()[0]}") from None


def load_study(storage: str, study_name: str | None = None) -> Any:
    """An existing study of ``storage`` (the only one there, when ``study_name`` is not given)."""
    optuna = import_optuna()
    store = open_storage(storage)
    names = [s.study_name for s in store.get_all_studies()]
    if study_name is None:
        if len(names) != 1:
            raise TuneError(f"{storage} holds {len(names)} studies ({', '.join(names) or 'none'}): "
                            f"name one with --study-name")
        study_name = names[0]
    if study_name not in names:
        raise TuneError(f"no study '{study_name}' in {storage} (studies there: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=study_name, storage=store)


@dataclass(frozen=True)
class Budget:
    """A proxy trial's budget: wall-clock minutes (``train.max_minutes``) or optimiser steps."""

    minutes: float = 0.0
    steps: int = 0

    def __post_init__(self) -> None:
        if (self.minutes > 0) == (self.steps > 0):
            raise TuneError("give the trial budget as minutes or as steps (one of them, > 0)")

    def scaled(self, factor: float) -> Budget:
        return Budget(self.minutes * factor, int(round(self.steps * factor)))

    def overrides(self) -> list[str]:
        if self.minutes > 0:
            return [f"train.max_minutes={self.minutes:g}"]
        return [f"train.steps={self.steps}", "train.max_minutes=0"]

    def describe(self) -> str:
        return f"{self.minutes:g} min" if self.minutes > 0 else f"{self.steps} steps"


def run_overrides(budget: Budget, out_dir: Path, subset: float, threads: int) -> list[str]:
    """The settings of one proxy (or fidelity) run: budget, folder, subset, threads, no progress bar."""
    out = [*budget.overrides(), f"train.out_dir={out_dir}", "train.progress=false"]
    if subset < 1.0:
        out.append(f"data.train_subset={subset:g}")
    if threads > 0:
        out.append(f"train.threads={threads}")
    return out


class PruningReporter:
    """The trainer's ``on_validation`` observer for one trial: reports the validation accuracy to the
    trial at the training step (step budgets) or the elapsed second (time budgets), and stops the run
    (:class:`strkit.engine.loop.StopTraining`) when the pruner says so."""

    def __init__(self, trial: Any, by_time: bool) -> None:
        self.trial = trial
        self.by_time = by_time
        self.t0 = time.perf_counter()
        self.last_resource = 0
        self.pruned_at: int | None = None

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        from strkit.engine.loop import StopTraining

        resource = int(time.perf_counter() - self.t0) if self.by_time else step
        resource = max(resource, self.last_resource + 1)
        self.last_resource = resource
        self.trial.report(float(metrics["val_accuracy"]), resource)
        if self.trial.should_prune():
            self.pruned_at = resource
            raise StopTraining(f"pruned by the study's pruner at {'second' if self.by_time else 'step'} {resource}")


@dataclass(frozen=True)
class StudyJob:
    """Everything a worker process needs to work on a study (plain values, picklable)."""

    space: str
    extra_overrides: tuple[str, ...]
    out: str
    storage: str
    study_name: str
    budget: Budget
    trials: int
    subset: float = 1.0
    threads: int = 0
    options: SearchOptions = SearchOptions()


class Objective:
    """Optuna objective: train one proxy trial, return its best validation accuracy."""

    def __init__(self, space: SearchSpace, job: StudyJob) -> None:
        self.space = space
        self.job = job

    def __call__(self, trial: Any) -> float:
        optuna = import_optuna()
        from strkit.engine.trainer import Trainer

        values = self.space.suggest(trial)
        protocol = self.space.protocol(values)
        trial.set_user_attr("protocol", protocol)
        out_dir = Path(self.job.out) / "trials" / str(trial.number)
        cfg = build_config(self.space.base, protocol,
                           [*self.space.proxy, *run_overrides(self.job.budget, out_dir, self.job.subset,
                                                              self.job.threads)])
        reporter = PruningReporter(trial, by_time=self.job.budget.minutes > 0)
        # The folder belongs to this trial number of this study (run_study refuses a new study over old trials).
        trainer = Trainer(cfg, overwrite=True, on_validation=reporter)
        trainer.fit()
        trial.set_user_attr("steps", trainer.step)
        if "val_accuracy" not in trainer.best:
            raise TuneError(f"trial {trial.number}: the run validated nothing (no validation data?)")
        trial.set_user_attr("best_step", int(trainer.best["step"]))
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at {reporter.pruned_at}")
        return float(trainer.best["val_accuracy"])


FINISHED = ("COMPLETE", "PRUNED")


def finished_trials(study: Any) -> int:
    """Trials that count towards ``--trials``: complete or pruned (failed ones are retried)."""
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def create_study(job: StudyJob, space: SearchSpace, worker: int = 0) -> Any:
    """Create the study of ``job`` or open it when it exists (a rerun continues it); refuses a study made
    from a different search space, or a new study over the trial folders of an old one."""
    optuna = import_optuna()
    o = job.options
    sampler = SAMPLERS.get(o.sampler)(optuna, o)  # (checks that the sampler is usable before the study is made)
    study = optuna.create_study(storage=open_storage(job.storage), study_name=job.study_name, sampler=sampler,
                                pruner=PRUNERS.get(o.pruner)(optuna, o), direction="maximize", load_if_exists=True)
    # A seed of its own per worker and per (re)start, so that a continued study does not repeat its first trials.
    seed = o.seed + 100_003 * worker + len(study.get_trials(deepcopy=False))
    study.sampler = SAMPLERS.get(o.sampler)(optuna, dataclasses.replace(o, seed=seed))
    attrs = study.user_attrs
    if "space_fingerprint" not in attrs:
        trials_dir = Path(job.out) / "trials"
        if not study.get_trials(deepcopy=False) and trials_dir.is_dir() and any(trials_dir.iterdir()):
            raise TuneError(f"{trials_dir} holds the trials of another study: use another --out, or delete it")
        for key, value in {"space_fingerprint": space.fingerprint, "space": str(space.path.resolve()),
                           "base": str(space.base), "proxy": space.proxy, "overrides": space.overrides,
                           "budget": dataclasses.asdict(job.budget), "subset": job.subset}.items():
            study.set_user_attr(key, value)
    elif attrs["space_fingerprint"] != space.fingerprint:
        raise TuneError(f"study '{job.study_name}' in {job.storage} was made with another search space or other "
                        f"overrides ({attrs.get('space')}): use another --out / --study-name")
    elif attrs.get("budget") != dataclasses.asdict(job.budget) or attrs.get("subset") != job.subset:
        raise TuneError(f"study '{job.study_name}' in {job.storage} runs trials of "
                        f"{Budget(**attrs['budget']).describe()} on subset {attrs.get('subset'):g}, not "
                        f"{job.budget.describe()} on {job.subset:g}: rerun with its budget, or use another --out")
    return study


def run_worker(job: StudyJob, worker: int = 0, pruner: Any = None) -> None:
    """Work on the study until it holds ``job.trials`` finished trials (one process).

    Args:
        pruner: an Optuna pruner object to use instead of ``job.options.pruner`` (tests, library use).
    """
    optuna = import_optuna()
    space = load_space(job.space, job.extra_overrides)
    study = create_study(job, space, worker)
    if pruner is not None:
        study.pruner = pruner
    if finished_trials(study) >= job.trials:
        return
    stop = optuna.study.MaxTrialsCallback(job.trials, states=tuple(getattr(optuna.trial.TrialState, s)
                                                                    for s in FINISHED))
    failures = FailureStreak()
    study.optimize(Objective(space, job), callbacks=[stop, failures], catch=(RuntimeError,), gc_after_trial=True)
    if failures.count >= failures.limit:
        raise TuneError(f"{failures.count} trials in a row failed (see the messages above); the study stopped. "
                        f"Fix the cause and rerun the same command to continue")


class FailureStreak:
    """Optuna callback: stop the study after ``limit`` failed trials in a row (a broken setup, not a bad
    protocol), instead of sampling failing trials forever."""

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit
        self.count = 0

    def __call__(self, study: Any, trial: Any) -> None:
        if trial.state.name != "FAIL":
            self.count = 0
            return
        self.count += 1
        if self.count >= self.limit:
            study.stop()


def worker_logging(tag: str) -> None:
    """In a spawned worker process: strkit's INFO messages to stderr, each line tagged ``tag`` (once)."""
    logger = logging.getLogger("strkit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s {tag} %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _worker_main(job: StudyJob, worker: int) -> None:
    """Entry point of a spawned worker process: strkit's messages to stderr, then :func:`run_worker`."""
    worker_logging(f"worker {worker}")
    run_worker(job, worker)


def run_study(job: StudyJob, jobs: int = 1) -> Any:
    """Run the study with ``jobs`` worker processes on this machine (threads split between them; one
    worker runs in this process) and return it. Killed and rerun, it continues where it was."""
    space = load_space(job.space, job.extra_overrides)  # every check before any work
    create_study(job, space)
    if jobs <= 1:
        run_worker(job)
    else:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(job, i), name=f"strkit-tune-{i}") for i in range(jobs)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join()
        failed = [p.name for p in procs if p.exitcode]
        if failed:
            raise TuneError(f"worker process(es) {', '.join(failed)} failed (see their messages above); rerun "
                            f"the same command to continue the study")
    return load_study(job.storage, job.study_name)
