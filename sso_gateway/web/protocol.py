"""uvicorn's httptools protocol, with a response's writes sent in one system call.

uvicorn writes a response's status line and headers as soon as the application starts it, and its body
in a second write: two `send` system calls and two TCP segments for a token response of a few hundred
octets, each of which wakes the client up (wrk spent twice as much CPU per grant on the gateway's
answers as on oidc-provider's, which node writes at once). Here every write the protocol makes in one
turn of the event loop is gathered and sent at the end of that turn: the headers and body of a response
sent without waiting in between leave together; a response that streams leaves as it did, turn by turn.
Nothing waits longer than the turn that wrote it, and closing the connection sends what is gathered first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _GatheringTransport:
    """A transport that gathers the writes of one event-loop turn into one `write` of the real one."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def _flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def close(self) -> None:
        self._flush()  # what the response wrote goes out before the connection closes
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(chunk) for chunk in self._pending)

    def __getattr__(self, name: str) -> Any:  # everything else: the real transport's
        return getattr(self._transport, name)


class GatheringHttpToolsProtocol(HttpToolsProtocol):
    """`ght gateway serve`'s HTTP/1.1 protocol: uvicorn's httptools one, its writes gathered per turn."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_GatheringTransport(transport, self.loop))  # type: ignore[arg-type]
