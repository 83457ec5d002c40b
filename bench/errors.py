"""What every bench CLI shares: the one exception type for input a person must fix, how it is printed, and --help.

Anything raising BenchError is reported as one line on stderr with exit code 2, InfrastructureError
(a service down for longer than --outage-timeout) with exit code 3.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from bench.redact import mask

EXIT_BAD_INPUT = 2
EXIT_INFRASTRUCTURE = 3  # a storage or tracking service unreachable: nothing to fix in the input, rerun later
EXIT_INTERRUPTED = 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends '(default: ...)' only where the help does not already say what the default is, and
    '(required)' instead on a required option, which has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            return f"{text} (required)"
        return text if "(default" in text else super()._get_help_string(action)


class BenchError(Exception):
    """Bad input or an unreachable service: the message says what is wrong and what to do."""


class InfrastructureError(BaseException):
    """A service (Optuna storage, MLflow tracking) unreachable, at the start or for longer than the outage window.

    A BaseException, as KeyboardInterrupt is: the process is ending, and no `except Exception` on the way
    (Optuna's own, which would record the trial as the model's failure) may take it for the trial's error.
    """


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print `error: message` as one line on stderr, any URL's password masked, and exit with `code` (2: bad input)."""
    print(f"error: {mask(' '.join(str(message).split()))}", file=sys.stderr)
    raise SystemExit(code)


def cli_main(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a CLI main: a BenchError becomes one line and exit code 2, an InfrastructureError one line
    and exit code 3, an interrupt exit 130, no traceback."""

    def wrapped(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except BenchError as exc:
            fail(str(exc))
        except InfrastructureError as exc:
            fail(str(exc), EXIT_INFRASTRUCTURE)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM before a study loop could handle it
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED

    wrapped.__doc__ = main.__doc__
    return wrapped
