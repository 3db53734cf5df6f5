"""The output folder of a run (``train.out_dir``): never overwritten by accident, cleaned on start.

A training, search or language-model pre-training run writes ``last.pt``, ``best.pt`` and
``metrics.csv`` into ``train.out_dir``. :func:`prepare_out_dir` runs before the first of them is
written:

* a folder that already holds one of them belongs to an earlier run: it is refused unless the run
  resumes (``--resume``) or replaces it (``--overwrite``, which deletes those files first);
* on resume at step N, the ``metrics.csv`` rows logged after step N (by the interrupted run, past its
  last checkpoint) are dropped, so the resumed run does not log those steps twice;
* temporary files that a killed checkpoint write left behind (:func:`strkit.checkpoint.stale_temporaries`)
  are deleted.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Protocol

from strkit.atomic import atomic_write
from strkit.checkpoint import remove_stale_temporaries

log = logging.getLogger("strkit")

#: The files whose presence marks ``train.out_dir`` as holding a run.
RUN_OUTPUTS = ("last.pt", "best.pt", "metrics.csv")
METRICS_FILE = "metrics.csv"


class RunDirError(ValueError):
    """``train.out_dir`` holds an earlier run and neither resume nor overwrite was asked for."""


def existing_outputs(out_dir: Path) -> list[str]:
    """The :data:`RUN_OUTPUTS` present in ``out_dir``."""
    return [name for name in RUN_OUTPUTS if (out_dir / name).exists()]


def trim_metrics(path: Path, step: int) -> int:
    """Drop the rows of ``metrics.csv`` (``step,key,value``) logged after ``step``; returns how many.

    The file is rewritten atomically; a file that is not in that form is left as it is.
    """
    if not path.is_file():
        return 0
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0][:1] != ["step"]:
        return 0
    kept = [rows[0]]
    for row in rows[1:]:
        try:
            if row and float(row[0]) > step:
                continue
        except ValueError:
            pass
        kept.append(row)
    dropped = len(rows) - len(kept)
    if dropped:
        with atomic_write(path, "w", newline="") as fh:
            csv.writer(fh).writerows(kept)
    return dropped


def prepare_out_dir(out_dir: str | Path, *, resume_step: int | None = None, overwrite: bool = False,
                    resumed_from: str | Path | None = None) -> None:
    """Make ``out_dir`` ready for a run (see the module docstring). Call it on one process only.

    Args:
        out_dir: ``train.out_dir``.
        resume_step: the step the run resumes at (``None``: a fresh run).
        overwrite: a fresh run may replace the earlier run's outputs.
        resumed_from: the checkpoint resumed from, for the log line.

    Raises:
        RunDirError: ``out_dir`` holds an earlier run and the run neither resumes nor overwrites, or
            both are asked for.
    """
    out_dir = Path(out_dir)
    resuming = resume_step is not None
    if resuming and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: resume continues the run in "
                          f"{out_dir}, overwrite replaces it. Pass one of them.")
    existing = existing_outputs(out_dir)
    if existing and not resuming:
        if not overwrite:
            raise RunDirError(f"train.out_dir {out_dir} already holds a run ({', '.join(existing)}): pass "
                              f"--resume to continue it, --overwrite to replace it, or set another "
                              f"train.out_dir.")
        for name in existing:
            (out_dir / name).unlink()
        log.info("--overwrite: removed %s from %s", ", ".join(existing), out_dir)
    removed = remove_stale_temporaries(out_dir)
    if removed:
        log.info("removed %d temporary file(s) of interrupted checkpoint writes from %s: %s", len(removed),
                 out_dir, ", ".join(p.name for p in removed))
    if resuming:
        dropped = trim_metrics(out_dir / METRICS_FILE, int(resume_step))
        log.info("resumed from %s at step %d%s", resumed_from or out_dir / "last.pt", resume_step,
                 f" ({dropped} metrics.csv rows after that step dropped)" if dropped else "")


class _Ranks(Protocol):
    """What :func:`prepare_out_dir_on_main` needs of the run's ranks (:class:`strkit.engine.runtime.Ranks`)."""

    @property
    def is_main(self) -> bool: ...

    def broadcast(self, obj: object) -> object: ...


def prepare_out_dir_on_main(ranks: _Ranks, out_dir: str | Path, **kwargs: object) -> None:
    """:func:`prepare_out_dir` on rank 0; its refusal is raised on every rank."""
    error = None
    if ranks.is_main:
        try:
            prepare_out_dir(out_dir, **kwargs)  # type: ignore[arg-type]
        except RunDirError as exc:
            error = str(exc)
    error = ranks.broadcast(error)
    if error:
        raise RunDirError(str(error))
