"""Command-line entry point; see `strkit.cli.curate`."""

from strkit.cli.curate import main

if __name__ == "__main__":
    raise SystemExit(main())
