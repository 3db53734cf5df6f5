"""Command-line entry point; see `strkit.cli.create_lmdb`."""

from strkit.cli.create_lmdb import main

if __name__ == "__main__":
    raise SystemExit(main())
