"""What a finished study gives: ready-to-run protocols, the trials table, parameter importances, the
optimisation history, and the proxy-fidelity check (chosen protocols retrained at a multiple of the proxy
budget, with the rank correlation of proxy and long scores).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from strkit.atomic import atomic_path, atomic_write, write_text_atomic
from strkit.engine.tuning.protocol_space import TuneError, build_config, import_optuna
from strkit.engine.tuning.trials import Budget, run_overrides, worker_logging

log = logging.getLogger("strkit")


def study_base(study: Any) -> Path:
    """The base config of ``study``. A study records it as an absolute path, which is gone when the study
    file moved (another checkout, a copy of ``study.db`` on a new machine): then the longest tail of that
    path that exists below the working directory is taken (``configs/train/x.yaml`` from the repository root).

    Raises:
        TuneError: no such tail exists either.
    """
    recorded = Path(study.user_attrs["base"])
    if recorded.is_file():
        return recorded
    parts = recorded.parts[1:] if recorded.is_absolute() else recorded.parts
    for i in range(len(parts)):
        tail = Path(*parts[i:])
        if tail.is_file():
            log.info("the study's base config %s is gone; using %s", recorded, tail)
            return tail.absolute()
    raise TuneError(f"study '{study.study_name}': its base config {recorded} does not exist, nor any tail of that "
                    f"path below {Path.cwd()}; run from the folder the study was made in (the repository root)")


def protocol_yaml(study: Any, trial: Any, out: Path, note: str) -> str:
    """A ready-to-run protocol file of ``trial``: ``_base_`` (the base config, relative to ``out``) and the
    protocol, so that both ``tools/train.py BASE --protocol FILE`` and ``tools/train.py FILE`` run it."""
    base_path = study_base(study)
    base = os.path.relpath(base_path, Path(out).absolute())
    shown = os.path.relpath(base_path) if base_path.is_relative_to(Path.cwd()) else str(base_path)
    header = (f"# {note}: trial {trial.number} of study '{study.study_name}', proxy validation accuracy "
              f"{trial.value:.2f} ({Budget(**study.user_attrs['budget']).describe()} per trial)\n"
              f"# run: tools/train.py {shown} --protocol THIS_FILE   (or: tools/train.py THIS_FILE)\n")
    body = {"_base_": base, **trial.user_attrs.get("protocol", {})}
    return header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)


def trial_rows(study: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """The trials table: number, state, value, steps, seconds and every parameter."""
    trials = study.get_trials(deepcopy=False)
    names = list(dict.fromkeys(n for t in trials for n in t.params))
    rows = []
    for t in trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else math.nan
        row = {"number": t.number, "state": t.state.name,
               "value": t.value if t.value is not None else (
                   t.intermediate_values[t.last_step] if t.last_step is not None else math.nan),
               "steps": t.user_attrs.get("steps", ""), "seconds": round(seconds, 1)}
        row.update({n: t.params.get(n, "") for n in names})
        rows.append(row)
    return ["number", "state", "value", "steps", "seconds", *names], rows


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def param_importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances ({} when there are too few complete trials to compute them)."""
    optuna = import_optuna()
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    try:
        with warnings.catch_warnings():  # "few trials" notes: the report says how many trials there are
            warnings.simplefilter("ignore", UserWarning)
            return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        log.warning("parameter importances not computed: %s", exc)
        return {}


def plot_history(study: Any, path: Path) -> None:
    """Optimisation history (PNG, matplotlib): each trial's value (pruned: its last reported value) and the
    best so far."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    _, rows = trial_rows(study)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for state, style in (("COMPLETE", dict(marker="o", color="tab:blue")),
                         ("PRUNED", dict(marker="x", color="tab:gray"))):
        pts = [(r["number"], r["value"]) for r in rows if r["state"] == state and not math.isnan(r["value"])]
        if pts:
            ax.scatter(*zip(*pts, strict=True), label=state.lower(), **style)
    best, xs, ys = -math.inf, [], []
    for r in rows:
        if r["state"] == "COMPLETE":
            best = max(best, r["value"])
        if best > -math.inf:
            xs.append(r["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"study {study.study_name}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def write_report(study: Any, out: str | Path, top: int = 5) -> dict[str, Path]:
    """Write the study's report into ``out``: ``best.yaml`` and ``top/<rank>-trial<n>.yaml`` (ready-to-run
    protocols), ``trials.csv``, ``report.md`` (trials table, importances, cost) and ``history.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    columns, rows = trial_rows(study)
    files["trials.csv"] = out / "trials.csv"
    with atomic_write(files["trials.csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    complete = sorted((t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"),
                      key=lambda t: -t.value)
    if complete:
        files["best.yaml"] = out / "best.yaml"
        write_text_atomic(files["best.yaml"], protocol_yaml(study, complete[0], out, "best protocol"))
        (out / "top").mkdir(exist_ok=True)
        for rank, t in enumerate(complete[:top], 1):
            write_text_atomic(out / "top" / f"{rank}-trial{t.number}.yaml",
                              protocol_yaml(study, t, out / "top", f"protocol ranked {rank}"))
    importances = param_importances(study)
    files["history.png"] = out / "history.png"
    plot_history(study, files["history.png"])
    states = {s: sum(r["state"] == s for r in rows) for s in dict.fromkeys(r["state"] for r in rows)}
    starts = [t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start]
    ends = [t.datetime_complete for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() / 60 if starts and ends else 0.0
    attrs = study.user_attrs
    lines = [f"# Protocol search: study `{study.study_name}`", "",
             f"- search space: `{attrs.get('space')}`; base config: `{attrs.get('base')}`",
             f"- proxy budget: {Budget(**attrs['budget']).describe()} per trial, subset {attrs.get('subset', 1.0):g}",
             f"- trials: {len(rows)} ({', '.join(f'{n} {s.lower()}' for s, n in states.items())}); "
             f"wall time {wall:.1f} min (first start to last end)",
             f"- best: trial {complete[0].number}, validation accuracy {complete[0].value:.2f} -> `best.yaml`"
             if complete else "- best: no complete trial yet", "",
             "## Parameter importances", ""]
    if importances:
        lines += ["| parameter | importance |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in importances.items()]
    else:
        lines.append("(not computed: too few complete trials)")
    lines += ["", "## Trials", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    lines += ["", "![optimisation history](history.png)", ""]
    files["report.md"] = out / "report.md"
    write_text_atomic(files["report.md"], "\n".join(lines))
    return files


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 2 pairs or a constant side."""
    if len(a) != len(b):
        raise ValueError("spearman: sequences of different lengths")
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else math.nan


@dataclass
class FidelityResult:
    """Proxy vs long scores of the chosen protocols and their Spearman rank correlation."""

    rows: list[dict[str, Any]]
    rho: float
    factor: float

    def table(self) -> str:
        lines = [f"| trial | chosen as | proxy accuracy | accuracy at {self.factor:g}x budget |", "|---|---|---|---|"]
        lines += [f"| {r['trial']} | {r['chosen']} | {r['proxy']:.2f} | {r['long']:.2f} |" for r in self.rows]
        return "\n".join(lines) + f"\n\nSpearman rank correlation (proxy vs {self.factor:g}x): {self.rho:.3f}\n"


def _long_run(number: int, base: str, protocol: dict[str, Any], overrides: list[str], run_dir: str,
              budget: str) -> float:
    """Train the fidelity run of trial ``number`` (continuing its ``last.pt`` when an earlier attempt was
    cut), record its best validation accuracy in ``run_dir/fidelity.json`` and return it. A top-level
    function, so that a spawned worker process can run it."""
    from strkit.engine.trainer import Trainer

    cfg = build_config(base, protocol, overrides)
    last = Path(run_dir) / "last.pt"
    if last.is_file():
        log.info("fidelity: continuing %s", last)
        trainer = Trainer(cfg, resume=last)
    else:
        trainer = Trainer(cfg, overwrite=True)
    trainer.fit()
    score = float(trainer.best.get("val_accuracy", math.nan))
    write_text_atomic(Path(run_dir) / "fidelity.json",
                      json.dumps({"trial": number, "val_accuracy": score, "budget": budget}))
    return score


def _long_run_worker(args: tuple[int, str, dict[str, Any], list[str], str, str]) -> float:
    """:func:`_long_run` in a pool worker: strkit's messages to stderr first."""
    worker_logging("fidelity")
    return _long_run(*args)


def fidelity_check(study: Any, out: str | Path, factor: float = 4.0, top: int = 5, random_count: int = 2,
                   seed: int = 0, threads: int = 0, jobs: int = 1) -> FidelityResult:
    """Retrain the ``top`` best and ``random_count`` random other complete protocols at ``factor`` times the
    proxy budget (in ``<out>/fidelity/x<factor>/<trial>``) and compare the rankings. Finished runs are
    reused and a cut one continues from its ``last.pt``, so a rerun continues; ``jobs`` > 1 trains that many
    runs at once in worker processes (give each its share of the cores with ``threads``). Writes
    ``fidelity.csv``, ``fidelity.md`` and ``fidelity_best.yaml`` (the protocol that scored best at the longer
    budget, ready to run like ``best.yaml``: with a low rank correlation it is the better pick) into ``out``."""
    complete = sorted((t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"),
                      key=lambda t: -t.value)
    if len(complete) < 2:
        raise TuneError(f"study '{study.study_name}' has {len(complete)} complete trial(s): the fidelity check "
                        f"needs at least 2")
    chosen = [(t, "top") for t in complete[:top]]
    rest = complete[top:]
    chosen += [(t, "random") for t in random.Random(seed).sample(rest, min(random_count, len(rest)))]
    attrs = study.user_attrs
    budget = Budget(**attrs["budget"]).scaled(factor)
    base = str(study_base(study))  # once: a moved study's lookup logs what it found
    long: dict[int, float] = {}
    todo: list[tuple[int, str, dict[str, Any], list[str], str, str]] = []
    for t, why in chosen:
        run_dir = Path(out) / "fidelity" / f"x{factor:g}" / str(t.number)
        result = run_dir / "fidelity.json"
        if result.is_file():
            long[t.number] = json.loads(result.read_text())["val_accuracy"]
            continue
        log.info("fidelity: trial %d (%s) at %s", t.number, why, budget.describe())
        overrides = [*attrs["proxy"], *run_overrides(budget, run_dir, attrs.get("subset", 1.0), threads)]
        todo.append((t.number, base, t.user_attrs["protocol"], overrides, str(run_dir),
                     budget.describe()))
    if jobs > 1 and len(todo) > 1:
        import concurrent.futures
        import multiprocessing

        # Not a multiprocessing.Pool: its workers are daemonic and may not start the DataLoader workers of
        # a run with data.workers > 0; an executor's workers may (one run per worker process).
        with concurrent.futures.ProcessPoolExecutor(min(jobs, len(todo)), mp_context=multiprocessing.get_context(
                "spawn"), max_tasks_per_child=1) as pool:
            scores = list(pool.map(_long_run_worker, todo))
    else:
        scores = [_long_run(*a) for a in todo]
    long.update((a[0], score) for a, score in zip(todo, scores, strict=True))
    rows = [{"trial": t.number, "chosen": why, "proxy": float(t.value), "long": float(long[t.number])}
            for t, why in chosen]
    res = FidelityResult(rows, spearman([r["proxy"] for r in rows], [r["long"] for r in rows]), factor)
    with atomic_write(Path(out) / "fidelity.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["trial", "chosen", "proxy", "long"])
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(Path(out) / "fidelity.md", res.table())
    winner = max(chosen, key=lambda c: long[c[0].number])[0]
    note = f"best protocol at {factor:g}x the proxy budget ({long[winner.number]:.2f} there)"
    write_text_atomic(Path(out) / "fidelity_best.yaml", protocol_yaml(study, winner, Path(out), note))
    return res
