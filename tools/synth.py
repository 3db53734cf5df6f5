"""Command-line entry point; see `strkit.cli.synth`."""

from strkit.cli.synth import main

if __name__ == "__main__":
    raise SystemExit(main())
