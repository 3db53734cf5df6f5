"""``python -m strkit COMMAND ...``: the ``strkit`` command (see :mod:`strkit.cli.main`)."""

from strkit.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
