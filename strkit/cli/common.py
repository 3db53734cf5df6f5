"""Shared bits of the command-line tools."""

from __future__ import annotations

import argparse
import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    """Log strkit messages to stderr (INFO, or DEBUG with ``verbose``)."""
    logger = logging.getLogger("strkit")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def fail(message: str) -> int:
    """Print a one-line error for the user and return the exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def add_model_overrides(parser: argparse.ArgumentParser, extra_help: str = "") -> None:
    """``--set model.KEY=VALUE ...`` (into ``args.overrides``): settings of a trained model that keep its
    weights, applied when it is loaded (:func:`strkit.models.pretrained.model_from_payload`)."""
    parser.add_argument("--set", nargs="+", default=[], metavar="model.KEY=VALUE", dest="overrides",
                        help="read with changed model settings that keep the weights, e.g. "
                             "model.decoder.iterations=1 (an iterative_vl decoder with fewer refinement rounds)"
                             + extra_help)


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """``--max-pixels N`` (into ``args.max_pixels``): refuse images whose header announces more pixels,
    before decoding them (0 = no limit of strkit's own; :mod:`strkit.data.image_limits`)."""
    from strkit.data.image_limits import DEFAULT_MAX_PIXELS

    parser.add_argument("--max-pixels", type=_non_negative_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help=f"refuse images of more than N pixels (width × height), read from the header "
                             f"before decoding: a guard against decompression bombs (default {DEFAULT_MAX_PIXELS:,}; "
                             f"0 = no limit)")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
