"""Who may call the server: an optional bearer token, and refusing to listen beyond localhost
without one."""

from __future__ import annotations

import hmac
import ipaddress
import socket
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "VMJAX_SERVE_TOKEN"
OPEN_PATHS = ("/healthz",)  # load balancers and probes carry no token


class BearerToken:
    """ASGI middleware: every path but OPEN_PATHS needs `Authorization: Bearer <token>` (401).

    The check runs before the route, so a request without the token is answered before its
    body is read. hmac.compare_digest takes as long for a near miss as for a far one, so the
    token cannot be found byte by byte from response times.
    """

    def __init__(self, app: ASGIApp, token: str, on_reject: Callable[[], None] = lambda: None):
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                self.on_reject()
                what = "wrong" if given else "missing"
                response = JSONResponse(
                    {"error": f"{what} token: send 'Authorization: Bearer <token>'", "status": 401},
                    status_code=401,
                    # Close: the client may be sending a body we will not read.
                    headers={"WWW-Authenticate": "Bearer", "Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    try:
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)
    except ValueError:  # a scoped IPv6 address (fe80::1%eth0) is a link, not loopback
        return False
