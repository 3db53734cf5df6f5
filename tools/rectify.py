"""Command-line entry point; see `strkit.cli.rectify`."""

from strkit.cli.rectify import main

if __name__ == "__main__":
    raise SystemExit(main())
