"""What every `lbdn` command shares: exit codes, where output goes (`Ui`) and `UsageError`.

Exit codes follow the server's problem+json status: 0 ok, 1 job failed or server error, 2 bad
request (400/413/415/422) or bad local input, 3 not found (404), 4 conflict (409), 5 authentication
(401/403), 6 service unreachable, 130 detached with Ctrl-C (the job keeps running).
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_AUTH, EXIT_UNREACHABLE = 0, 1, 2, 3, 4, 5, 6
EXIT_DETACHED = 130


def exit_code(status: int) -> int:
    """The exit code of an HTTP error status (0: the service was not reached)."""
    if status == 0:
        return EXIT_UNREACHABLE
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 409:
        return EXIT_CONFLICT
    if status in (401, 403):
        return EXIT_AUTH
    if 400 <= status < 500:
        return EXIT_USAGE
    return EXIT_FAILED


class UsageError(Exception):
    """Bad input on this side (a missing file, mixed arguments)."""


class Ui:
    """Where output goes: rich on stdout, messages on stderr, or JSON only."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        print(json.dumps(value, indent=2, default=str), flush=True)

    def say(self, *things: Any) -> None:
        if not self.as_json:
            self.out.print(*things)
