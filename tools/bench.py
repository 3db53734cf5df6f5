"""Command-line entry point; see `strkit.cli.bench`."""

from strkit.cli.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
