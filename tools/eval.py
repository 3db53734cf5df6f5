"""Command-line entry point; see `strkit.cli.eval`."""

from strkit.cli.eval import main

if __name__ == "__main__":
    raise SystemExit(main())
