"""Shared bits of the command-line tools: logging, one-line errors, argument checks and types."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

log = logging.getLogger("strkit")

#: Set this environment variable (to anything) to get the traceback of an error instead of one line.
DEBUG_ENV = "STRKIT_DEBUG"


def setup_logging(verbose: bool = False) -> None:
    """Log strkit messages to stderr (INFO, or DEBUG with ``verbose``)."""
    logger = logging.getLogger("strkit")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def one_line(message: str) -> str:
    """``message`` with its line breaks (and the blank lines around them) folded into single spaces."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def fail(message: str) -> int:
    """Print a one-line error for the user and return the exit status 2."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return 2


def resume_path(arg: str | None, out_dir: str) -> Path | None:
    """The checkpoint ``--resume`` names: ``None`` (no resume), the given path, or for ``auto`` (the flag
    alone) ``<train.out_dir>/last.pt``, which must exist.

    Raises:
        FileNotFoundError: ``auto`` and there is no ``last.pt`` in ``out_dir``.
    """
    if arg != "auto":
        return Path(arg) if arg else None
    last = Path(out_dir) / "last.pt"
    if not last.is_file():
        raise FileNotFoundError(f"--resume: {last} does not exist (nothing to resume in train.out_dir)")
    return last


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line on stderr (``PROG: error: ... (see
    PROG --help)``) with the exit status 2, like every other error of the tools."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")

    def parse_with_overrides(self, argv: list[str] | None = None) -> argparse.Namespace:
        """``parse_args`` for a tool whose (sub)command takes ``key.sub=value`` overrides (``args.overrides``):
        overrides may also stand after options, e.g. ``CONFIG --protocol FILE train.steps=5`` or ``run SPACE
        --out DIR data.workers=1`` (plain argparse takes the positional list only once), and an override right
        after a bare ``--resume`` (``--resume train.steps=60000``) is an override, not a checkpoint path.
        Overrides keep their command-line order; anything else left over is the usual one-line error."""
        argv = list(sys.argv[1:] if argv is None else argv)
        args, extra = self.parse_known_args(argv)
        stray = [a for a in extra if a.startswith("-") or "=" not in a]
        if stray or (extra and not hasattr(args, "overrides")):
            self.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        if not hasattr(args, "overrides"):
            return args
        taken = Counter([*(args.overrides or []), *extra])
        resume = getattr(args, "resume", None)
        if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
            taken[resume] += 1
            args.resume = "auto"  # the value --resume takes without one
        args.overrides = []
        for arg in argv:  # argparse collects positionals run by run: put them back in command-line order
            if taken[arg] > 0:
                args.overrides.append(arg)
                taken[arg] -= 1
        return args


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into an interruption (:func:`sigterm_interrupts`): the tool stops as on Ctrl-C."""


def _raise_terminated(_signum: int, _frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Inside the block SIGTERM (``kill``, ``timeout``, a batch scheduler) raises :class:`Terminated`, a
    ``KeyboardInterrupt``, so that a long write stops as on Ctrl-C and keeps what it committed. Handlers can
    only be set in the main thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(exc: KeyboardInterrupt, kept: str) -> int:
    """Say on one line how the tool stopped and what was ``kept``; the exit status the signal means
    (143 for SIGTERM, 130 for Ctrl-C)."""
    term = isinstance(exc, Terminated)
    print(f"\n{'stopped by SIGTERM' if term else 'interrupted'}: {one_line(kept)}", file=sys.stderr)
    return 128 + (signal.SIGTERM if term else signal.SIGINT)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a mistake the user can fix (reported in one line) rather than a bug.

    That is every exception class defined by strkit (``ConfigError``, ``RegistryError``, ``CheckpointError``,
    ``LmdbError``, ``GtFormatError``, ``BenchmarkError``, ``ExportError``...) and the ``OSError`` and
    ``ValueError`` that files and values given by the user raise.
    """
    if isinstance(exc, OSError | ValueError):
        return True
    return any(cls.__module__.split(".")[0] == "strkit" for cls in type(exc).__mro__)


def user_errors(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a tool's ``main``: every user error it raises (:func:`is_user_error`) becomes one line on
    stderr and the exit status 2; set ``STRKIT_DEBUG=1`` for the traceback instead."""

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return main(*args, **kwargs)
        except Exception as exc:
            runtime = sys.modules.get("strkit.engine.runtime")  # only a run loop raises it: no import here
            if runtime is not None and isinstance(exc, runtime.RunInterrupted):
                # a long run killed on purpose: last.pt is saved, say how to go on; exit as the kill would
                print(f"stopped: {one_line(str(exc))}", file=sys.stderr)
                return 128 + exc.signum
            if os.environ.get(DEBUG_ENV) or not is_user_error(exc):
                raise
            message = str(exc) or type(exc).__name__
            if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the error line
                message = message.strip().splitlines()[-1]
            return fail(message)

    return wrapper


# -- argument types and checks ------------------------------------------------------------------------
def _int_at_least(lowest: int, meaning: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest} ({meaning}), got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def positive_float(text: str) -> float:
    """``type=`` for a number that must be positive (a ratio, a temperature...)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


positive_float.__name__ = "number"

#: ``type=`` for ``--threads``: 0 = the library's default, else that many threads.
threads_arg = _int_at_least(0, "threads; 0 = the default")
#: ``type=`` for ``--batch-size`` and other counts that must be positive.
positive_int = _int_at_least(1, "a count")
#: ``type=`` for counts where 0 means none or all (``--workers``, ``--parity-count``...).
non_negative_int = _int_at_least(0, "a count; 0 = none")


def check_device(device: str, what: str = "--device") -> str:
    """``device`` if this machine has it (``cpu``, ``cuda``, ``cuda:N``, ``mps``...), else ``ValueError``
    naming what is available; runs before any model is loaded."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device '{device}': use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {device}: this machine has no CUDA GPU that PyTorch can use; "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {device}: there are only {torch.cuda.device_count()} CUDA device(s) "
                             f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return device
    if dev.type == "mps" and torch.backends.mps.is_available():
        return device
    raise ValueError(f"{what} {device}: not available here; use cpu" +
                     (" or cuda" if torch.cuda.is_available() else ""))


def add_model_overrides(parser: argparse.ArgumentParser, extra_help: str = "") -> None:
    """``--set model.KEY=VALUE ...`` (into ``args.overrides``): settings of a trained model that keep its
    weights, applied when it is loaded (:func:`strkit.models.pretrained.model_from_payload`)."""
    parser.add_argument("--set", nargs="+", default=[], metavar="model.KEY=VALUE", dest="overrides",
                        help="read with changed model settings that keep the weights, e.g. "
                             "model.decoder.iterations=1 (an iterative_vl decoder with fewer refinement rounds)"
                             + extra_help)


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--progress / --no-progress`` (into ``args.progress``): a progress bar on stderr; default: only when
    stderr is a terminal."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar on stderr (default: only when stderr is a terminal)")


def progress_enabled(flag: bool | None) -> bool:
    """The ``--progress`` choice, or whether stderr is a terminal when it was not given."""
    return sys.stderr.isatty() if flag is None else flag


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels N`` (into ``args.max_pixels``): refuse images whose header announces more pixels,
    before decoding them (0 = no limit of strkit's own; :mod:`strkit.data.image_limits`)."""
    from strkit.data.image_limits import DEFAULT_MAX_PIXELS

    parser.add_argument("--max-pixels", type=non_negative_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse images of more than N pixels (width × height), read from the header "
                             f"before decoding: a guard against decompression bombs (default {DEFAULT_MAX_PIXELS:,}; "
                             f"0 = no limit)")

