"""uvicorn's settings for connections, and the header deadline uvicorn itself lacks.

uvicorn closes a connection idle between requests (timeout_keep_alive) but sets no deadline
on a request's line and headers, nor on a new connection that sends nothing: a client
trickling headers a byte at a time would hold its connection forever (slowloris). Body
deadlines are the route's (vmjax.serve.app reads the body under --body_timeout_s).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from vmjax.serve.limits import MAX_HEADER_BYTES, Limits


class HeaderDeadline(H11Protocol):
    """h11 connection that must deliver each request's headers within `header_timeout_s`.

    The clock starts when the connection opens or a response completes, and stops when a
    request's headers are in. If part of a request came, the client gets 408; either way the
    connection is closed.
    """

    header_timeout_s = 10.0
    _timer: asyncio.TimerHandle | None = None
    _partial = False  # whether bytes came since the clock started

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._partial = True
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers are in: its route takes over
            self._disarm()

    def on_response_complete(self) -> None:
        # Before super(): it handles pipelined requests already received, which disarms.
        if not self.transport.is_closing():
            self._arm()
        super().on_response_complete()

    def _arm(self) -> None:
        self._disarm()
        self._partial = False
        self._timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._partial:
            body = json.dumps(
                {
                    "error": f"request headers not received within {self.header_timeout_s:g} s "
                    "(--header_timeout_s)",
                    "status": 408,
                }
            ).encode()
            head = (
                "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            # Raw bytes, not h11: h11 sends no response before a request has arrived.
            self.transport.write(head.encode() + body)
        self.transport.close()


def uvicorn_config(app: Any, limits: Limits, **kwargs: Any) -> uvicorn.Config:
    """uvicorn.Config for `app` with the connection limits; kwargs: host, port, log_level, ..."""
    protocol = type(
        "HeaderDeadline", (HeaderDeadline,), {"header_timeout_s": limits.header_timeout_s}
    )
    return uvicorn.Config(
        app,
        http=protocol,
        timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]  (seconds; float works)
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        **kwargs,
    )
