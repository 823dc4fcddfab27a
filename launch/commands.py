"""What every merchant-fl-* command shares: bad input is one line `PROG: error: ...` and exit code 2,
never a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from core.errors import InputError


def run_command(prog: str, body: Callable[[], None]) -> int:
    try:
        body()
    except InputError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
