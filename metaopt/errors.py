"""User-facing errors: one clear line on stderr and a non-zero exit, never a traceback.

Library code raises `UserError` for anything the user can fix (bad path, bad option, foreign file); every
CLI's `main` is wrapped in `cli_entry`, which turns it into `error: <message>` and exit status 2.
Programming errors still raise normally so that bugs stay visible.
"""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """An error caused by the user's input, reported as a single line."""


def cli_entry(main):
    """Decorate a CLI `main(argv=None)`: UserError -> one line + exit 2; Ctrl-C -> exit 130."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted (the last checkpoint is intact; rerun with --resume)", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
