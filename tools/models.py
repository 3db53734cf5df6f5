"""Command-line entry point; see `strkit.cli.models`."""

from strkit.cli.models import main

if __name__ == "__main__":
    raise SystemExit(main())
