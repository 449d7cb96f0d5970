"""HTTP/1.1 under the app: uvicorn's h11 protocol, with the request head held to a limit and
refused in the v2 protocol's shape.

h11 buffers a request's head (request line and headers) up to ``max_head`` bytes. Past that, or
on bytes that are not HTTP, uvicorn answers a plain-text 400 and closes the socket at once, so a
client still sending (a 1 MiB URL) gets a connection reset, not an answer. Here the answer is
414 when the request line alone is over the limit, 431 when the headers are, else 400, each
``{"error": ...}`` and counted in ``/metrics`` (endpoint ``http``); then a lingering close: the
server stops writing, drops what the client still sends, and closes once the client has (or
after ``LINGER_SECONDS``), so the client reads the answer. uvicorn (pinned in the serve extra)
still logs its one warning line, "Invalid HTTP request received."; the web stack is imported
only inside :func:`protocol_class`.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.serve.metrics import HttpMetrics

LINGER_SECONDS = 5.0
PHRASES = {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large"}


def refusal(line: int, head: int, max_head: int) -> tuple[int, str]:
    """The status and message for a request head of ``head`` bytes whose request line has
    ``line`` (all of the head when its line never ended): 414, 431, or 400 for one within the
    limit that h11 could not read."""
    if line > max_head:
        return 414, (
            f"the request line (method and URL) is over {max_head} bytes; send long values in the body, "
            "or start kiln serve with a larger --max-header-kb"
        )
    if head > max_head:
        return 431, (
            f"the request's headers are over {max_head} bytes with the request line; send fewer or shorter "
            "headers, or start kiln serve with a larger --max-header-kb"
        )
    return 400, "the request is not HTTP/1.1 that the server can read; send a v2 request"


def protocol_class(metrics: HttpMetrics, max_head: int) -> type[asyncio.Protocol]:
    """uvicorn's ``http`` protocol for ``kiln serve`` (its config's ``h11_max_incomplete_event_size``
    must be ``max_head``)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class KilnH11Protocol(H11Protocol):
        lingering = False

        def send_400_response(self, msg: str) -> None:  # uvicorn's answer to any RemoteProtocolError
            buffered = self.conn.trailing_data[0]
            line = buffered.find(b"\n")
            status, message = refusal(len(buffered) if line < 0 else line, len(buffered), max_head)
            body = json.dumps({"error": message}).encode()
            head = (
                f"HTTP/1.1 {status} {PHRASES[status]}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
            metrics.request("http", status, 0.0)
            self.lingering = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if not self.lingering:
                super().data_received(data)

        def eof_received(self) -> None:
            if self.lingering:
                self.transport.close()

    return KilnH11Protocol
