"""Command-line entry point; see `strkit.cli.guard_calibration`."""

from strkit.cli.guard_calibration import main

if __name__ == "__main__":
    raise SystemExit(main())
