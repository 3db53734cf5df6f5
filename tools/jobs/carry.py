"""Carry the long jobs' state from one machine to the next, through the repository.

The long jobs (tools/jobs/*.sh) keep their runs in a folder outside the work tree (``STATE/runs``). That
folder survives between sessions only while the machine does; twice it did not (sessions 10 and 14), and
the campaign lost 4.1 and 1.3 one-core hours. ``save`` copies what each run needs to continue, and to be
reported, into a folder of the repository (``carry/``, committed at the end of a session); ``restore``
puts it back under a new ``STATE/runs``. The synthetic LMDBs are not carried: the jobs render them again,
record for record the same, from their seeds.

    python tools/jobs/carry.py save /root/strkit-jobs/state/runs carry      # then: git add -A carry; git commit
    python tools/jobs/carry.py restore carry /root/strkit-jobs/state/runs   # first thing on a new machine
    python tools/jobs/carry.py status carry                                 # what is carried: run, step, MB

What is carried, per run folder: ``last.pt`` (the full state of an exact resume; not once the job marked the
run finished with ``NAME.done`` beside it), ``best.pt``, the small
files (``metrics.csv``, ``curve.json``, configs, reports, ``*.done`` markers, evaluation tables) and the
snapshots that the learning-curve cache (``curve.json``, tools/plot_curve.py) has not scored yet: a scored
snapshot is a point of the curve already, so only its scores travel. Temporaries of an interrupted write
are never carried. ``save`` mirrors: a file it carried before and no longer selects (a snapshot scored
since) leaves ``carry/``. ``restore`` never replaces a file that exists under ``STATE/runs``: on a machine
that kept its state, the local files are the newer ones. The carry folder's own files (``MANIFEST.json``,
``jobs.txt``: the jobs tools/jobs/restart.sh starts) are neither mirrored nor restored.
"""

from __future__ import annotations

import argparse
import csv
import filecmp
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

#: Checkpoints that travel whole; every other ``*.pt`` is a snapshot (carried until scored) or not carried.
CHECKPOINTS = ("last.pt", "best.pt")
#: Larger files than this are left behind with a warning (a carried file is committed to the repository).
MAX_FILE_MB = 120.0
MANIFEST = "MANIFEST.json"
#: Files of the carry folder itself (its top level) that are not run files: never removed, never restored.
OWN_FILES = (MANIFEST, "jobs.txt")
CURVE_CACHE = "curve.json"


def scored_snapshots(run_dir: Path) -> set[str]:
    """The snapshot file names of ``run_dir`` that its learning-curve cache holds scores of."""
    path = run_dir / CURVE_CACHE
    if not path.is_file():
        return set()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    return {key.split("@", 1)[0] for key in cache}


def finished(run_dir: Path) -> bool:
    """Whether the job marked the run finished (``NAME.done`` beside the run folder ``NAME``): its
    ``last.pt`` has nothing left to resume and is not carried (``best.pt`` is)."""
    return (run_dir.parent / f"{run_dir.name}.done").is_file()


def is_temporary(path: Path) -> bool:
    """A file an interrupted atomic write left behind (``.name.tmp*``, ``*.tmp``, ``*.partial``)."""
    name = path.name
    return name.startswith(".") or ".tmp" in name or name.endswith(".partial")


def selected(runs: Path) -> Iterator[Path]:
    """The files under ``runs`` to carry, as paths relative to ``runs``."""
    for path in sorted(runs.rglob("*")):
        if not path.is_file() or path.is_symlink() or is_temporary(path):
            continue
        if any(part.endswith(".partial") or part.startswith(".") for part in path.relative_to(runs).parts):
            continue
        if path.name == "last.pt" and finished(path.parent):
            continue
        if path.suffix == ".pt" and path.name not in CHECKPOINTS:
            if path.parent.name != "snapshots" or path.name in scored_snapshots(path.parent.parent):
                continue
        if path.stat().st_size > MAX_FILE_MB * 2**20:
            print(f"carry: left behind {path} ({path.stat().st_size / 2**20:.0f} MB > {MAX_FILE_MB:.0f} MB)",
                  file=sys.stderr)
            continue
        yield path.relative_to(runs)


def last_step(run_dir: Path) -> int | None:
    """The last step ``metrics.csv`` (``step,key,value`` rows) logged, or None without one."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    steps = []
    with path.open(newline="") as fh:
        for row in csv.reader(fh):
            try:
                steps.append(int(float(row[0])))
            except (ValueError, IndexError):
                continue
    return max(steps) if steps else None


def resume_step(run_dir: Path) -> int | None:
    """The step a resume of ``run_dir`` continues from (its ``last.pt``), else the last logged step."""
    path = run_dir / "last.pt"
    if path.is_file():
        import torch  # only here: the rest of the tool copies files

        try:
            payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except Exception:  # noqa: BLE001 - not a checkpoint torch reads: report the logged step instead
            payload = None
        if isinstance(payload, dict) and "step" in payload:
            return int(payload["step"])
    return last_step(run_dir)


def save(runs: Path, carry: Path) -> dict[str, dict[str, float | int | bool | None]]:
    """Mirror the selected files of ``runs`` into ``carry`` (copy what changed, drop what is no longer
    selected) and write ``carry/MANIFEST.json`` (per run folder: the step a
    resume continues from, MB carried, finished)."""
    carry.mkdir(parents=True, exist_ok=True)
    keep = set(selected(runs))
    for rel in keep:
        src, dst = runs / rel, carry / rel
        if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".carrytmp")
        shutil.copy2(src, tmp)
        tmp.replace(dst)
    for path in sorted(carry.rglob("*"), reverse=True):
        rel = path.relative_to(carry)
        if path.is_file() and rel.as_posix() not in OWN_FILES and rel not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    manifest: dict[str, dict[str, float | int | bool | None]] = {}
    for rel in keep:
        if rel.name == "metrics.csv":
            run = rel.parent
            size = sum(p.stat().st_size for p in (carry / run).rglob("*") if p.is_file())
            manifest[run.as_posix()] = {"step": resume_step(runs / run), "mb": round(size / 2**20, 1),
                                        "finished": finished(runs / run)}
    manifest = dict(sorted(manifest.items()))
    (carry / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def restore(carry: Path, runs: Path) -> list[Path]:
    """Copy every carried file that ``runs`` lacks into it; returns the files copied (relative)."""
    copied = []
    for path in sorted(carry.rglob("*")):
        rel = path.relative_to(carry)
        if not path.is_file() or rel.as_posix() in OWN_FILES or (runs / rel).exists():
            continue
        (runs / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, runs / rel)
        copied.append(rel)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save", help="copy what resumes each run of RUNS into CARRY")
    p.add_argument("runs", type=Path)
    p.add_argument("carry", type=Path)
    p = sub.add_parser("restore", help="copy the carried files that RUNS lacks into it")
    p.add_argument("carry", type=Path)
    p.add_argument("runs", type=Path)
    p = sub.add_parser("status", help="print the runs CARRY holds")
    p.add_argument("carry", type=Path)
    args = parser.parse_args(argv)
    if args.command == "save":
        if not args.runs.is_dir():
            print(f"error: runs folder {args.runs} not found (give STATE/runs of the long jobs)", file=sys.stderr)
            return 2
        manifest = save(args.runs, args.carry)
    elif args.command == "restore":
        if not args.carry.is_dir():
            print(f"error: carry folder {args.carry} not found (nothing was carried; start the jobs afresh)",
                  file=sys.stderr)
            return 2
        args.runs.mkdir(parents=True, exist_ok=True)
        copied = restore(args.carry, args.runs)
        print(f"restored {len(copied)} files into {args.runs}")
        return 0
    else:
        path = args.carry / MANIFEST
        if not path.is_file():
            print(f"error: {path} not found (run 'carry.py save RUNS {args.carry}' first)", file=sys.stderr)
            return 2
        manifest = json.loads(path.read_text())
    for run, info in manifest.items():
        print(f"{run}: step {info['step']}{' (finished)' if info.get('finished') else ''}, {info['mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
