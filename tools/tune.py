"""Command-line entry point; see `strkit.cli.tune`."""

from strkit.cli.tune import main

if __name__ == "__main__":
    raise SystemExit(main())
