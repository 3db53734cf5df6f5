"""Command-line entry point; see `strkit.cli.plot_curve`."""

from strkit.cli.plot_curve import main

if __name__ == "__main__":
    raise SystemExit(main())
