"""``python -m sdk``: the sessiontrace command line (``doctor``, ``run``); see docs/cli.md."""

from sdk.cli import main

if __name__ == "__main__":
    raise SystemExit(main(prog="python -m sdk"))
