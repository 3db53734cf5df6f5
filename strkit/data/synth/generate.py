"""Write synthetic samples into an STR LMDB, in parallel, resumable, identical for any worker count.

Workers render contiguous chunks of sample indices and return ``(index, jpeg bytes, label, geometry)``;
the parent process is the only writer and writes the chunks in index order (``Pool.imap`` keeps the
order), so record ``k`` of the LMDB is sample ``start_index + k - 1`` of the seed whatever the number
of workers. An interrupted run leaves ``<out>.partial``; ``resume=True`` continues it after its last
committed record (the run's settings, stored in the ``meta`` key, must match).

Keys: the usual ``num-samples``, ``image-%09d`` (JPEG), ``label-%09d``; with geometry, ``geom-%09d``
(JSON, see :class:`~strkit.data.synth.renderer.SynthSample`); ``meta`` (JSON: config, charset, font
list, lexicon and palette hashes, library versions, seed, start index, count).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from strkit.data.lmdb.format import GEOMETRY_KEY
from strkit.data.lmdb.writer import LmdbWriter
from strkit.data.synth.renderer import Renderer

log = logging.getLogger("strkit")

META_KEY = "meta"
Record = tuple[int, bytes, str, bytes | None]

_WORKER: dict[str, Any] = {}


def render_records(renderer: Renderer, start: int, stop: int, seed: int, geometry: bool) -> list[Record]:
    """Samples ``start..stop-1`` of ``seed`` as storage records."""
    out: list[Record] = []
    for i in range(start, stop):
        s = renderer.render(i, seed=seed, geometry=geometry)
        geom = json.dumps(s.geometry, separators=(",", ":")).encode() if geometry else None
        out.append((i, renderer.encode(s.image), s.label, geom))
    return out


def _init_worker(renderer: Renderer, set_threads: bool) -> None:
    # The parent decides how to stop: Ctrl-C in a terminal (SIGINT to the whole group) is left to it, and
    # SIGTERM keeps its default action here (the parent's own handler, inherited through fork, is not the
    # worker's: Pool.terminate() stops workers with SIGTERM).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if set_threads:  # spawned workers; forked ones inherit the parent's setting (calling it after a fork
        cv2.setNumThreads(1)  # of a process that imported torch can deadlock)
    _WORKER["renderer"] = renderer


def _work(job: tuple[int, int, int, bool]) -> list[Record]:
    start, stop, seed, geometry = job
    return render_records(_WORKER["renderer"], start, stop, seed, geometry)


def chunks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut into consecutive ranges of at most ``size``."""
    return [(a, min(a + size, stop)) for a in range(start, stop, size)]


def iter_records(renderer: Renderer, start: int, stop: int, seed: int, geometry: bool, workers: int,
                 chunk: int = 200) -> Iterator[Record]:
    """Records ``start..stop-1`` in index order, rendered by ``workers`` processes."""
    jobs = [(a, b, seed, geometry) for a, b in chunks(start, stop, chunk)]
    if workers <= 1:
        for job in jobs:
            yield from render_records(renderer, *job)
        return
    method = "spawn" if sys.platform == "win32" else "fork"
    prev = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one OpenCV thread per worker: forked workers inherit it
    try:
        pool = mp.get_context(method).Pool(workers, initializer=_init_worker,
                                           initargs=(renderer, method != "fork"))
    finally:
        cv2.setNumThreads(prev)
    with pool:
        for records in pool.imap(_work, jobs):
            yield from records


@dataclass
class GenerateResult:
    """What :func:`generate_lmdb` did."""

    path: Path
    written: int
    resumed_from: int
    seconds: float
    bytes_on_disk: int

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def _run_meta(renderer: Renderer, seed: int, start_index: int, count: int, geometry: bool) -> dict[str, Any]:
    meta = renderer.meta()
    meta["run"] = {"seed": seed, "start_index": start_index, "count": count, "geometry": geometry}
    return meta


def _same_run(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings that differ between a partial LMDB's meta and this run (``count`` may differ)."""
    diffs = []
    for key in ("config", "charset", "fonts", "lexicon", "palette", "versions"):
        if old.get(key) != new.get(key):
            diffs.append(key)
    for key in ("seed", "start_index", "geometry"):
        if old.get("run", {}).get(key) != new["run"][key]:
            diffs.append(f"run.{key}")
    return diffs


def generate_lmdb(renderer: Renderer, out: str | Path, count: int, seed: int = 0, start_index: int = 0,
                  workers: int = 1, resume: bool = False, overwrite: bool = False, geometry: bool = False,
                  progress: bool = True, chunk: int = 200) -> GenerateResult:
    """Render samples ``start_index .. start_index+count-1`` of ``seed`` into the LMDB ``out``.

    Args:
        renderer: the renderer (its fonts and lexicon are shared with forked workers).
        out: the LMDB folder to create (``<out>.partial`` while writing).
        count: number of samples in the finished LMDB.
        seed: the data seed.
        start_index: index of the first sample (shard a large set by giving each shard its own range).
        workers: rendering processes (1 = render in this process).
        resume: continue ``<out>.partial`` after its committed records.
        overwrite: replace an existing ``out`` (or discard a partial one when not resuming).
        geometry: also store ``geom-%09d`` records.
        progress: show a progress bar.
        chunk: samples per worker task.

    Raises:
        FileExistsError: ``out`` exists (without ``overwrite``), or a partial exists (without ``resume``).
        ValueError: resuming a partial LMDB written with other settings.
    """
    if count < 0 or start_index < 0 or seed < 0:
        raise ValueError(f"count, start_index and seed must be >= 0, got {count}, {start_index}, {seed}")
    out = Path(out)
    t0 = time.perf_counter()
    meta = _run_meta(renderer, seed, start_index, count, geometry)
    est = max(64 << 20, int(count * (renderer.cfg.output.width * renderer.cfg.output.height * 0.6 + 2048)))
    with LmdbWriter(out, map_size=est, overwrite=overwrite, resume=resume, commit_every=1000,
                    tool="tools/synth.py") as writer:
        done = len(writer)
        if done:
            raw = writer.get_meta(META_KEY)
            old = json.loads(raw) if raw else {}
            diffs = _same_run(old, meta)
            if diffs:
                raise ValueError(f"{out}.partial was written with other settings "
                                 f"({', '.join(diffs)} differ); "
                                 f"resume with the same preset, overrides, fonts, seed and start index, or "
                                 f"start again with --overwrite")
            if done > count:
                raise ValueError(f"{out}.partial already holds {done} samples, more than --count {count}")
        writer.put_meta(META_KEY, json.dumps(meta, sort_keys=True).encode())
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=count, initial=done, unit="img", desc=f"synth -> {out.name}", smoothing=0.05)
        try:
            expected = start_index + done
            records = iter_records(renderer, start_index + done, start_index + count, seed, geometry, workers,
                                   chunk)
            for idx, image, label, geom in records:
                if idx != expected:  # pragma: no cover - imap keeps order; guard against misuse
                    raise RuntimeError(f"sample {idx} arrived out of order (expected {expected})")
                extra = {GEOMETRY_KEY: geom} if geom is not None else None
                writer.put(image, label, extra)
                expected += 1
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return GenerateResult(out, count - done, done, seconds, size)
