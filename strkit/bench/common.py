"""What the speed tools share: where model configs and trained models are found, and the machine a
timing is taken on: peak memory, load and busy cores, one fresh process per case (:func:`run_isolated`)
and a gate that waits for other work to stop (:class:`LoadGate`, :func:`run_case`).

Timings mean little on a loaded machine: on a 2-core machine shared with a 1-thread job, 2-thread
timings are distorted far more than the load suggests (the two intra-op threads wait for each other at
every operator while one shares its core), so compare only figures taken with the other core idle.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from strkit.config import ConfigError, load_config

#: Folder of the shipped model configs (``configs/models/<name>.yaml``).
MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "models"


_T = TypeVar("_T")


_R = TypeVar("_R")


#: Model files the inference benchmark times with their trained weights instead of a config's random ones.
TRAINED_MODEL_SUFFIXES = (".pt", ".onnx")


def trained_model_path(model: str) -> Path | None:
    """``model`` as a checkpoint (``.pt``) or exported ONNX file when it names one, else None.

    Raises:
        ConfigError: it has such a suffix but the file does not exist.
    """
    path = Path(model).expanduser()
    if path.suffix.lower() not in TRAINED_MODEL_SUFFIXES:
        return None
    if not path.is_file():
        raise ConfigError(f"model '{model}': no such file; give a checkpoint written by tools/train.py (.pt) or "
                          f"an ONNX file written by tools/export.py (.onnx)")
    return path


def model_config_path(model: str) -> Path:
    """``configs/models/<model>.yaml``, or ``model`` itself when it is a YAML file (or, for the inference
    benchmark, a trained ``.pt`` / ``.onnx`` file: see :func:`trained_model_path`).

    Raises:
        ConfigError: none of these exists (the shipped names are listed).
    """
    path = Path(model).expanduser()
    if (path.suffix in (".yaml", ".yml") and path.is_file()) or trained_model_path(model) is not None:
        return path
    candidate = MODEL_CONFIG_DIR / f"{model}.yaml"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"model '{model}': no such model config; give one of {', '.join(names) or '(none)'} "
                      f"(configs/models/) or the path of a model YAML file")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: the high-water mark of the process's current
    address space. ``getrusage``'s ``ru_maxrss`` is not used there because it survives ``execve``, so a
    benchmark child spawned by a large parent (e.g. the timing probe at the end of a search) would
    report at least the parent's resident size at fork time. Elsewhere: ``ru_maxrss``.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 20) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def load_1min() -> float:
    """The 1-minute load average (0.0 where the OS does not report it)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat`` (``None`` where it does not exist)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_cores(interval_s: float = 1.0) -> float | None:
    """How many cores were busy (all processes) during the next ``interval_s`` seconds, measured
    while this process sleeps; ``None`` where ``/proc/stat`` is not available. Unlike the load
    average it does not remember the benchmark's own previous case."""
    before = _cpu_times()
    time.sleep(interval_s)
    after = _cpu_times()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])


def lstm_overrides(model: str, lstm_autocast: bool) -> list[str]:
    """``["model.sequence.autocast=true"]`` when asked for and the model's sequence stage is ``bilstm``."""
    if not lstm_autocast:
        return []
    cfg = load_config(model_config_path(model))
    return ["model.sequence.autocast=true"] if cfg.model.sequence.get("name") == "bilstm" else []


def run_isolated(func: Callable[[_T], _R], case: _T) -> _R:
    """Run ``func(case)`` in a fresh (spawned) Python process and return its result.

    ``func`` must be a module-level function and ``case`` / its result picklable. Exceptions raised
    in the child are re-raised here.
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(func, case).result()


def fmt_params(n: int) -> str:
    return f"{n:,}"


def fmt_busy(busy: float | None) -> str:
    return "–" if busy is None else f"{busy:.2f}"


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class LoadGate:
    """Waits (at most ``retries`` times ``wait_s`` seconds) until at most ``max_busy`` cores are busy
    with other work, so that timings are not taken while others share the cores; ``waits`` records
    the busy-core figures that made it wait."""

    max_busy: float = 0.5
    retries: int = 3
    wait_s: float = 30.0
    waits: list[float] = field(default_factory=list)

    def wait(self, log: Callable[[str], None] = print) -> float | None:
        """Returns the busy cores measured last (possibly still above ``max_busy``)."""
        busy = busy_cores()
        for _ in range(self.retries):
            if busy is None or busy <= self.max_busy:
                break
            log(f"{busy:.2f} cores busy with other work (> {self.max_busy}): waiting {self.wait_s:.0f} s")
            self.waits.append(busy)
            time.sleep(self.wait_s)
            busy = busy_cores()
        return busy


def run_case(func: Callable[[_T], _R], case: _T, gate: LoadGate | None = None, isolate: bool = True) -> _R:
    """Measure one case: wait for ``gate``, note the load, run ``func(case)`` (in a fresh process when
    ``isolate``) and attach ``load_1min`` / ``busy_cores`` (as measured just before) to the result."""
    busy = gate.wait() if gate is not None else busy_cores()
    load = load_1min()
    if isolate:
        result = run_isolated(func, case)
    else:
        threads = torch.get_num_threads()
        try:
            result = func(case)
        finally:
            torch.set_num_threads(threads)
    result.load_1min, result.busy_cores = load, busy  # type: ignore[attr-defined]
    return result
