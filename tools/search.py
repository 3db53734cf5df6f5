"""Command-line entry point; see `strkit.cli.search`."""

from strkit.cli.search import main

if __name__ == "__main__":
    raise SystemExit(main())
