"""`lmzoo <verb>`: a dict of verbs → functions. A user mistake prints one line and exits 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from lmzoo.errors import UserError

# verb name → (one-line help, function adding its arguments, function running it)
VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]] = {}


def verb(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args)`` as ``lmzoo <name>``."""

    def register(fn: Callable[[argparse.Namespace], int | None]):
        VERBS[name] = (help, arguments, fn)
        return fn

    return register


# --- verbs: each family/task adds its verbs above this line ---


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage errors: one line, exit 2
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmzoo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    for name, (help, arguments, fn) in VERBS.items():
        p = sub.add_parser(name, help=help, description=help)
        arguments(p)
        p.set_defaults(_run=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
