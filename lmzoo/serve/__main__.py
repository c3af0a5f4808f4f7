"""``python -m lmzoo.serve RUN_OR_MODEL ...``: the same as ``lmzoo serve``."""

from __future__ import annotations

import argparse
import sys

from lmzoo.errors import UserError
from lmzoo.serve import HELP, add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmzoo.serve", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
