"""uvicorn's HTTP protocol with a header read timeout, which uvicorn lacks (its keep-alive timeout
only covers idle connections between requests, so a client that sends half a request's headers
holds its connection open for as long as it likes).

A connection has LBDN_HEADER_TIMEOUT_S to send a request's headers, counted from the connection's
start and, on a kept-alive connection, from the next request's first byte; then it is closed. Bodies
and idle kept-alive connections are not covered here (uvicorn's timeout_keep_alive covers the
latter); the reverse proxy of docker-compose.yml bounds slow bodies (README "Running it elsewhere").
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol (uvicorn's fast parser) that closes a connection whose request headers do
    not arrive within `header_timeout_s` seconds (set on a subclass by `with_header_timeout`)."""

    header_timeout_s = 10.0
    _deadline: asyncio.TimerHandle | None = None
    _reading_headers = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._reading_headers and self._deadline is None:
            self._arm()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._reading_headers = True  # the next request's first byte starts its clock

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if self._reading_headers and not in_flight and not self.transport.is_closing():
            self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to give uvicorn (`http=`), closing connections after `seconds` of headers."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": seconds})
