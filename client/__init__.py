"""The `lbdn` client: a small HTTP client of the lbdn service and the commands built on it.

Imports no server code (no api, worker or lipcore): httpx, httpx-sse, rich and matplotlib only, so it
can be installed on a laptop that talks to a GPU server. `Client` is the library; `client.cli` the
commands of the `lbdn` entry point.
"""

from client.http import ApiError, Client

__all__ = ["ApiError", "Client"]
