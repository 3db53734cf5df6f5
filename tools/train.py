"""Command-line entry point; see `strkit.cli.train`."""

from strkit.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
