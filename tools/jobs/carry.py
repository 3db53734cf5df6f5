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

What is carried, per run folder: ``last.pt`` (the full state of a resume, its float tensors in 16 bits:
22 MB instead of 44 for the campaign, so that no carried file passes 25 MB; ``restore`` widens them back to
float32, so the resume is exact but for that one rounding; not once the job marked the run finished with
``NAME.done`` beside it), ``best.pt`` (as it is), the small
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
from typing import Any

import torch

from strkit.atomic import atomic_path, write_text_atomic

#: Checkpoints that travel whole; every other ``*.pt`` is a snapshot (carried until scored) or not carried.
CHECKPOINTS = ("last.pt", "best.pt")
#: Larger files than this are left behind with a warning (a carried file is committed to the repository).
MAX_FILE_MB = 120.0
MANIFEST = "MANIFEST.json"
#: The key of a carried ``last.pt`` that lists the tensors :func:`narrow` stored in 16 bits.
NARROWED = "carry_narrowed"
#: Tensors whose magnitude reaches this are narrowed to bfloat16 rather than float16 (max 65,504).
HALF_MAX = 32768.0
#: Files of the carry folder itself (its top level) that are not run files: never removed, never restored.
OWN_FILES = (MANIFEST, "jobs.txt")
CURVE_CACHE = "curve.json"
#: Run folders with this in their name stay on the machine (a run moved aside by device_pack.py --take-back).
LOCAL_ONLY = ".before_piece"


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
        if any(part.endswith(".partial") or part.startswith(".") or LOCAL_ONLY in part
               for part in path.relative_to(runs).parts):
            continue
        if path.name == "last.pt" and finished(path.parent):
            continue
        if path.suffix == ".onnx":  # an export: remade from its checkpoint (the bundled ones live in the package)
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


def narrow(obj: Any, path: tuple[Any, ...] = ()) -> tuple[Any, list[tuple[Any, ...]]]:
    """``obj`` (a checkpoint payload) with its float32 tensors of more than one element stored in 16 bits:
    the optimiser's state (``train_state/optimizer``: Adam's moments, whose squares are far below float16's
    range) and any tensor beyond :data:`HALF_MAX` in bfloat16, the other weights and their average in float16;
    scalars (Adam's step counts) keep float32.
    Returns the new object and the paths it narrowed, for :func:`widen`."""
    if isinstance(obj, torch.Tensor):
        if obj.dtype != torch.float32 or obj.numel() <= 1:
            return obj, []
        in_half = path[:2] != ("train_state", "optimizer") and bool(obj.abs().max() < HALF_MAX)
        low = torch.float16 if in_half else torch.bfloat16
        return obj.to(low), [path]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else None
    if items is None:
        return obj, []
    out: Any = {} if isinstance(obj, dict) else [None] * len(obj)
    paths: list[tuple[Any, ...]] = []
    for key, value in items:
        out[key], inner = narrow(value, (*path, key))
        paths += inner
    return out, paths


def widen(payload: dict[str, Any]) -> dict[str, Any]:
    """Undo :func:`narrow` on a carried ``last.pt`` (the paths it lists go back to float32), in place."""
    for path in payload.pop(NARROWED, []):
        parent = payload
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = parent[path[-1]].float()
    return payload


def carry_checkpoint(src: Path, dst: Path) -> int | None:
    """Write ``src`` (a ``last.pt``) to ``dst`` narrowed (:func:`narrow`); returns its step. A file torch
    cannot read is copied as it is (None)."""
    try:
        payload = torch.load(src, map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - not a checkpoint torch reads: carry its bytes
        shutil.copy2(src, dst)
        return None
    if not isinstance(payload, dict):
        shutil.copy2(src, dst)
        return None
    slim, paths = narrow(payload)
    slim[NARROWED] = paths
    torch.save(slim, dst)
    return int(payload["step"]) if "step" in payload else None


def save(runs: Path, carry: Path) -> dict[str, dict[str, float | int | bool | None]]:
    """Mirror the selected files of ``runs`` into ``carry`` (copy what changed, drop what is no longer
    selected) and write ``carry/MANIFEST.json`` (per run folder: the step a
    resume continues from, MB carried, finished)."""
    carry.mkdir(parents=True, exist_ok=True)
    keep = set(selected(runs))
    steps: dict[Path, int | None] = {}  # the step of each run's last.pt
    for rel in keep:
        src, dst = runs / rel, carry / rel
        if rel.name != "last.pt" and dst.is_file() and filecmp.cmp(src, dst, shallow=False):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            if rel.name == "last.pt":
                steps[rel.parent] = carry_checkpoint(src, tmp)
            else:
                shutil.copy2(src, tmp)
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
            step = steps.get(run) or last_step(runs / run)
            manifest[run.as_posix()] = {"step": step, "mb": round(size / 2**20, 1),
                                        "finished": finished(runs / run)}
    manifest = dict(sorted(manifest.items()))
    write_text_atomic(carry / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return manifest


def restore(carry: Path, runs: Path) -> list[Path]:
    """Copy every carried file that ``runs`` lacks into it; returns the files copied (relative)."""
    copied = []
    for path in sorted(carry.rglob("*")):
        rel = path.relative_to(carry)
        if not path.is_file() or rel.as_posix() in OWN_FILES or (runs / rel).exists():
            continue
        (runs / rel).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(runs / rel) as tmp:
            restore_file(path, tmp)
        copied.append(rel)
    return copied


def restore_file(path: Path, dst: Path) -> None:
    """Write the carried file ``path`` to ``dst``: a narrowed ``last.pt`` widened back, anything else copied."""
    payload = None
    if path.name == "last.pt":
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - carried as bytes (carry_checkpoint): restore the bytes
            payload = None
    if isinstance(payload, dict) and NARROWED in payload:
        torch.save(widen(payload), dst)
    else:
        shutil.copy2(path, dst)


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
