"""UDP transport: one link message per datagram, on any host and port the caller names.

The sender fragments chunks larger than `MAX_FRAGMENT_BYTES` (`ecdc_stream.io.transport`
describes the message format). The receiver reassembles them, or drops a chunk whose fragments
do not all arrive. Datagrams are at most `MAX_DATAGRAM_BYTES` (1232) bytes, so IP never fragments them.
"""

from __future__ import annotations

import logging
import math
import socket

from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.io.transport import (
    MAX_DATAGRAM_BYTES,
    LinkDecoder,
    StreamEnd,
    TransportError,
    TransportUrl,
)

logger = logging.getLogger(__name__)

# A receive buffer of 4 MiB keeps several seconds of any stream while the receiver is busy.
RECEIVE_BUFFER_BYTES = 4 << 20


def _wait_readable(sock: socket.socket) -> Any:
    wait = getattr(anyio, "wait_readable", None) or anyio.wait_socket_readable
    return wait(sock)


def _wait_writable(sock: socket.socket) -> Any:
    wait = getattr(anyio, "wait_writable", None) or anyio.wait_socket_writable
    return wait(sock)


def _open_socket(url: TransportUrl) -> tuple[socket.socket, Any]:
    """Return a non-blocking UDP socket of the address family of `url`'s host."""
    try:
        infos = socket.getaddrinfo(url.host, url.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise TransportError(f"cannot resolve the host of {url}: {exc.strerror or exc}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock, address


# The receiver reads the socket itself instead of through anyio's UDP socket, whose asyncio
# implementation (anyio 4.x) reads eagerly into a queue of 100 datagrams and drops the rest
# while the application is busy. The kernel's receive buffer keeps far more.


class UdpSender:
    """Pipeline sink: send each link message (`bytes`) as one datagram to `url`."""

    def __init__(self, url: TransportUrl):
        if url.scheme != "udp":
            raise TransportError(f"{url} is not a udp:// address")
        self.url = url
        self.datagrams = 0
        self.bytes_sent = 0
        self.send_errors = 0

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        """Send every message from `receive` until it ends."""
        sock, address = _open_socket(self.url)
        with sock:
            async with receive, send:
                async for message in receive:
                    if len(message) > MAX_DATAGRAM_BYTES:
                        raise ValueError(f"link message of {len(message)} bytes does not fit a datagram")
                    await self._send(sock, address, message)

    async def _send(self, sock: socket.socket, address: Any, message: bytes) -> None:
        while True:
            try:
                sock.sendto(message, address)
            except BlockingIOError:
                await _wait_writable(sock)
                continue
            except OSError as exc:
                # No listener yet (ICMP port unreachable) is normal before a receiver starts.
                self.send_errors += 1
                logger.debug("datagram to %s not sent: %s", self.url, exc)
                return
            self.datagrams += 1
            self.bytes_sent += len(message)
            return


class UdpReceiver:
    """Pipeline source: receive datagrams on `url`, decode them, send link events.

    Bind with `await bind()` first to learn the port (port 0 picks a free one); `run` binds
    itself otherwise. The source ends `linger_s` after the end message arrived (to collect
    reordered stragglers), or when no datagram arrived for `idle_timeout_s` once the stream
    started, which is how a receiver ends when every end message was lost.
    """

    def __init__(
        self,
        url: TransportUrl,
        decoder: LinkDecoder | None = None,
        idle_timeout_s: float = 10.0,
        linger_s: float = 0.5,
        start_timeout_s: float = math.inf,
    ):
        if url.scheme != "udp":
            raise TransportError(f"{url} is not a udp:// address")
        self.url = url
        self.decoder = decoder if decoder is not None else LinkDecoder()
        self.idle_timeout_s = idle_timeout_s
        self.linger_s = linger_s
        self.start_timeout_s = start_timeout_s
        self.datagrams = 0
        self.timed_out = False
        self._socket: socket.socket | None = None

    async def bind(self) -> int:
        """Open the socket and return the bound port."""
        if self._socket is None:
            sock, address = _open_socket(self.url)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
                sock.bind(address)
            except OSError as exc:
                sock.close()
                raise TransportError(f"cannot listen on {self.url}: {exc.strerror or exc}") from None
            self._socket = sock
        return self.port

    @property
    def port(self) -> int:
        """The bound port (0 before `bind`)."""
        return 0 if self._socket is None else int(self._socket.getsockname()[1])

    async def aclose(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        """Receive until the stream ends or times out, sending each link event to `send`."""
        await self.bind()
        sock = self._socket
        assert sock is not None
        end_deadline: float | None = None

        async with receive, send:
            try:
                while True:
                    if end_deadline is not None:
                        timeout = max(0.0, end_deadline - anyio.current_time())
                    else:
                        timeout = self.idle_timeout_s if self.datagrams else self.start_timeout_s

                    datagram = None
                    with anyio.move_on_after(timeout):
                        datagram = await self._receive(sock)
                    if datagram is None:
                        if end_deadline is None:
                            self.timed_out = True
                            logger.warning("no datagram for %.1f s: ending the stream", timeout)
                        break

                    self.datagrams += 1
                    for event in self.decoder.feed_datagram(datagram):
                        if isinstance(event, StreamEnd) and end_deadline is None:
                            end_deadline = anyio.current_time() + self.linger_s
                        await send.send(event)
            finally:
                await self.aclose()

    @staticmethod
    async def _receive(sock: socket.socket) -> bytes:
        while True:
            try:
                # Datagrams above the safe size are read whole (up to 64 KiB) and then rejected.
                return sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                await _wait_readable(sock)
            except ConnectionRefusedError:
                # An ICMP error from an earlier send on this socket; the socket stays usable.
                continue
