"""Command-line entry point; see `strkit.cli.export`."""

from strkit.cli.export import main

if __name__ == "__main__":
    raise SystemExit(main())
