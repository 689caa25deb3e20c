"""What one request and the whole server may take: body size, time, and concurrent work.

A request's memory is bounded by its body (at most `max_body_bytes`; the JSON and TFRecord
readers keep a small multiple of it), so admitting at most `max_concurrent` requests and
`max_inflight_bytes` of body at once bounds the server's memory; the rest get 503 with
Retry-After at once, before their body is read, rather than queueing without end.
"""

from __future__ import annotations

import dataclasses

MAX_HEADER_BYTES = 16 << 10  # unfinished request line and headers (h11's limit): else 400


@dataclasses.dataclass(frozen=True)
class Limits:
    """The server's limits; the defaults are the command line's."""

    max_body_bytes: int = 64 << 20  # larger bodies: 413
    max_concurrent: int = 64  # POST /predict requests being read or worked on at once
    max_inflight_bytes: int = 256 << 20  # their bodies (Content-Length, else max_body_bytes)
    request_timeout_s: float = 30.0  # body read -> answer (parse, queue, model, response): 503
    body_timeout_s: float = 60.0  # the whole body must arrive within it: 408
    header_timeout_s: float = 10.0  # a request's line and headers (and an idle connection)
    keep_alive_s: float = 5.0  # an idle connection between requests is closed after it

    def __post_init__(self) -> None:
        problems = [
            f"{f.name}={getattr(self, f.name)} must be > 0"
            for f in dataclasses.fields(self)
            if not getattr(self, f.name) > 0
        ]
        if self.max_inflight_bytes < self.max_body_bytes:
            problems.append(
                f"max_inflight_bytes={self.max_inflight_bytes} is below max_body_bytes="
                f"{self.max_body_bytes}: a request of the largest allowed body could never run"
            )
        if problems:
            raise ValueError("; ".join(problems))


class Admission:
    """Counts admitted requests and their body bytes. Used from the event loop only: no lock."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.requests = 0
        self.bytes = 0

    def enter(self, nbytes: int) -> bool:
        """Admits a request of `nbytes` of body if both budgets hold it; False when full."""
        if (
            self.requests >= self.limits.max_concurrent
            or self.bytes + nbytes > self.limits.max_inflight_bytes
        ):
            return False
        self.requests += 1
        self.bytes += nbytes
        return True

    def leave(self, nbytes: int) -> None:
        self.requests -= 1
        self.bytes -= nbytes
