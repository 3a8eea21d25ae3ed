"""The HTTP server's protection against slow clients: a deadline for reading each whole request.

uvicorn bounds idle keep-alive connections (``timeout_keep_alive``) and header size, but not how long a client may
take to send a request: one that drips a header or body byte at a time holds a connection (and, for the body, a
handler) for as long as it likes. :func:`protocol_class` returns uvicorn's own HTTP protocol with a timer that
starts at a request's first byte (or at connect) and ends when the request has been read in full; when it fires,
a request whose headers are still incomplete gets ``408 Request Timeout``, and one whose body is incomplete has its
connection closed (its handler sees a disconnect).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

logger = structlog.get_logger(__name__)

_TIMEOUT_BODY = b'{"error":{"code":"request_timeout","message":"request not received in time","details":null}}'
_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class _ReadDeadline:
    """Mixed into a uvicorn HTTP protocol: the read deadline (see the module docstring)."""

    read_timeout_s: float = 30.0
    _read_timer: asyncio.TimerHandle | None = None
    _headers_read = False
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._start_request()

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None:  # the first byte of the next request on a kept-alive connection
            self._start_request()
        super().data_received(data)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _start_request(self) -> None:
        self._stop_timer()
        self._headers_read = False
        self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _stop_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _request_read(self) -> None:
        """The whole request has arrived: no deadline until the next one starts."""
        self._stop_timer()

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        logger.warning("request_read_timeout", headers_read=self._headers_read, timeout_s=self.read_timeout_s)
        if not self._headers_read:
            self.transport.write(_TIMEOUT_408)
        self.transport.close()


def protocol_class(read_timeout_s: float) -> type[asyncio.Protocol]:
    """The HTTP protocol class for uvicorn, with a deadline of ``read_timeout_s`` for reading each request.

    uvicorn's own protocol underneath: httptools when installed (as uvicorn's ``auto`` picks), else h11.
    """
    try:
        import httptools  # noqa: F401
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return _h11_protocol(read_timeout_s)

    deadline = read_timeout_s

    class HttpToolsWithDeadline(_ReadDeadline, HttpToolsProtocol):
        read_timeout_s = deadline

        def on_headers_complete(self) -> None:
            self._headers_read = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._request_read()
            super().on_message_complete()

    return HttpToolsWithDeadline


def _h11_protocol(read_timeout_s: float) -> type[asyncio.Protocol]:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    deadline = read_timeout_s

    class H11WithDeadline(_ReadDeadline, H11Protocol):
        read_timeout_s = deadline
        conn: Any

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state in (h11.SEND_BODY, h11.DONE):
                self._headers_read = True
            if self.conn.their_state is h11.DONE:
                self._request_read()

    return H11WithDeadline
