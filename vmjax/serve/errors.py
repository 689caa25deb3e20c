"""The one exception a request handler raises for a bad request: the status, message, headers."""

from __future__ import annotations

# Sent with answers given before the body is read (408, 413, 503 when full): the client may
# still be sending it, so the connection cannot carry another request (h11 closes it).
CLOSE = {"Connection": "close"}
RETRY_AFTER_S = 1  # what 503 answers tell a client to wait: work here takes seconds, not minutes
RETRY = {"Retry-After": str(RETRY_AFTER_S)}


class RequestError(ValueError):
    """A bad request: `status` is the HTTP status to answer with, the message says what is wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def past_deadline(while_: str) -> RequestError:
    """What a worker thread raises once the request's deadline passed (it was answered 503)."""
    return RequestError(503, f"the request ran past its deadline while {while_}", RETRY)
