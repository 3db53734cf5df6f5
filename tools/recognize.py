"""Command-line entry point; see `strkit.cli.recognize`."""

from strkit.cli.recognize import main

if __name__ == "__main__":
    raise SystemExit(main())
