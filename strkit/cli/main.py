"""strkit COMMAND [ARGS...]: one entry point for every tool (also python -m strkit COMMAND).

Commands: models (bundled models, configs and registered modules), train, eval, recognize, export, synth,
search, create-lmdb, bench, rectify, curate, plot-curve. 'strkit COMMAND --help' shows a command's options; each is
also its own console script (strkit-eval, ...) and tools/ script.
Exit status: the command's; 2 for an unknown command.
"""

from __future__ import annotations

import importlib
import sys

from strkit.cli.common import fail

#: command -> module of ``strkit.cli`` whose ``main(argv)`` runs it.
COMMANDS: dict[str, str] = {
    "models": "models", "train": "train", "eval": "eval", "recognize": "recognize", "export": "export",
    "synth": "synth", "search": "search", "create-lmdb": "create_lmdb", "bench": "bench", "rectify": "rectify",
    "curate": "curate", "plot-curve": "plot_curve",
}


def usage() -> str:
    """The command list (``strkit --help``)."""
    return f"usage: strkit COMMAND [ARGS...]\n\n{__doc__.split(chr(10), 2)[2].strip()}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        return fail(f"unknown command '{command}'; commands: {', '.join(COMMANDS)} (see strkit --help)")
    return int(importlib.import_module(f"strkit.cli.{COMMANDS[command]}").main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
