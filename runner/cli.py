"""What every command shares: `--set`, and bad input as one line on stderr with exit code 2."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Callable, Optional

from runner.config import ConfigError

USAGE_ERROR = 2
"""Exit code of a command given a bad spec, override or argument (nothing was started)."""


def add_set_option(parser: argparse.ArgumentParser, help: str = "override, e.g. loss.margin=0.5") -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def command(main: Callable[[Optional[list[str]]], int]) -> Callable[[Optional[list[str]]], int]:
    """Wrap a command's main(): a ConfigError prints `error: <key>: ...` (a line per problem) and returns 2.

    A closed stdout (`... --list | head`) ends the command quietly instead of with a
    BrokenPipeError traceback.
    """
    @functools.wraps(main)
    def wrapper(argv: Optional[list[str]] = None, **kwargs) -> int:
        try:
            code = main(argv, **kwargs)
            # a listing sits in stdout's buffer until exit: flush it here, where a closed pipe is caught
            sys.stdout.flush()
            return code
        except ConfigError as exc:
            for line in str(exc).splitlines():  # ConfigErrors: one line per distinct problem
                print(f"error: {line}", file=sys.stderr)
            return USAGE_ERROR
        except BrokenPipeError:
            # point stdout at /dev/null so the interpreter's final flush does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return wrapper
