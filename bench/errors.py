"""What every bench CLI shares: the one exception type for input a person must fix, how it is printed, and --help.

Anything raising BenchError is reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

from bench.redact import mask

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: ...)' only where the help does not already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "(default" in text else super()._get_help_string(action)


class BenchError(Exception):
    """Bad input or an unreachable service: the message says what is wrong and what to do."""


def fail(message: str) -> NoReturn:
    """Print `error: message` as one line on stderr, any URL's password masked, and exit with code 2."""
    print(f"error: {mask(' '.join(str(message).split()))}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def cli_main(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI main: a BenchError becomes one line and exit code 2, an interrupt exit 130, no traceback."""

    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except BenchError as exc:
            fail(str(exc))
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM before a study loop could handle it
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    wrapped.__doc__ = main.__doc__
    return wrapped
