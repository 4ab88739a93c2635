"""TCP transport: link messages back to back on a byte stream.

The receiver listens and the sender connects, so a sender started first keeps trying until the
receiver is up. After any damage to the byte stream the receiver resynchronises at the next
intact message (`ecdc_stream.io.transport.StreamDecoder`). When a connection breaks, the sender
reconnects and the receiver accepts the next connection into the same stream: what was in flight
is lost and concealed.
"""

from __future__ import annotations

import logging
import math

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.io.transport import Arrival, ByteStreamReceiver, LinkDecoder, TransportError, TransportUrl

logger = logging.getLogger(__name__)

READ_BYTES = 65536


class TcpSender:
    """Pipeline sink: connect to `url` and write each link message (`bytes`) to the connection.

    connect_timeout_s: how long to keep retrying the connection, at the start and after a break.
    """

    def __init__(self, url: TransportUrl, connect_timeout_s: float = 10.0):
        if url.scheme != "tcp":
            raise TransportError(f"{url} is not a tcp:// address")
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self.bytes_sent = 0
        self.messages_dropped = 0

    async def _connect(self) -> SocketStream:
        deadline = anyio.current_time() + self.connect_timeout_s
        while True:
            try:
                return await anyio.connect_tcp(self.url.host, self.url.port)
            except OSError as exc:
                if anyio.current_time() >= deadline:
                    raise TransportError(
                        f"cannot connect to {self.url} within {self.connect_timeout_s:g} s: {exc.strerror or exc}; "
                        "start the receiver first"
                    ) from None
                await anyio.sleep(0.1)

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        """Write every message from `receive` until it ends, reconnecting after a break."""
        async with receive, send:
            connection: SocketStream | None = await self._connect()
            try:
                async for message in receive:
                    data = message.item if isinstance(message, Arrival) else message
                    if connection is None:
                        logger.warning("connection to %s lost: reconnecting", self.url)
                        connection = await self._connect()
                    try:
                        await connection.send(data)
                        self.bytes_sent += len(data)
                    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        self.messages_dropped += 1
                        await connection.aclose()
                        connection = None
            finally:
                if connection is not None:
                    await connection.aclose()


class TcpReceiver:
    """Pipeline source: listen on `url`, read connections one after another, send link events.

    Ends `linger_s` after the end message, when a connection closes after the end message, or
    when nothing arrived for `idle_timeout_s` once the stream had started.
    """

    def __init__(
        self,
        url: TransportUrl,
        decoder: LinkDecoder | None = None,
        idle_timeout_s: float = 10.0,
        linger_s: float = 0.5,
        start_timeout_s: float = math.inf,
    ):
        if url.scheme != "tcp":
            raise TransportError(f"{url} is not a tcp:// address")
        self.url = url
        self.receiver = ByteStreamReceiver(decoder or LinkDecoder(), idle_timeout_s, linger_s)
        self.start_timeout_s = start_timeout_s
        self.connections = 0
        self.timed_out = False
        self._listener: SocketListener | None = None

    @property
    def decoder(self) -> LinkDecoder:
        """The link decoder, with the counts of rejected messages."""
        return self.receiver.decoder

    async def bind(self) -> int:
        """Start listening and return the bound port."""
        if self._listener is None:
            try:
                listeners = await anyio.create_tcp_listener(local_host=self.url.host, local_port=self.url.port)
            except OSError as exc:
                raise TransportError(f"cannot listen on {self.url}: {exc.strerror or exc}") from None
            # NOTE: a host name that resolves to several addresses (localhost: IPv4 and IPv6)
            # gives several listeners; only the first one accepts connections.
            self._listener = listeners.listeners[0]
            for extra in listeners.listeners[1:]:
                await extra.aclose()
        return self.port

    @property
    def port(self) -> int:
        """The bound port (0 before `bind`)."""
        return 0 if self._listener is None else int(self._listener.extra(SocketAttribute.local_port))

    async def aclose(self) -> None:
        """Stop listening."""
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        """Accept connections and forward their events until the stream ends or times out."""
        await self.bind()
        assert self._listener is not None
        receiver = self.receiver

        async with receive, send:
            try:
                while receiver.end_deadline is None or anyio.current_time() < receiver.end_deadline:
                    connection = None
                    with anyio.move_on_after(receiver.timeout(self.connections > 0)):
                        connection = await self._listener.accept()
                    if connection is None:
                        self.timed_out = receiver.end_deadline is None
                        break
                    self.connections += 1
                    async with connection:
                        if await self._read(connection, send):
                            break
                    receiver.stream.finish()
            finally:
                await self.aclose()

    async def _read(self, connection: SocketStream, send: MemoryObjectSendStream) -> bool:
        """Forward one connection's bytes; return True when the stream is over."""
        receiver = self.receiver
        while True:
            data = None
            with anyio.move_on_after(receiver.timeout(True)):
                try:
                    data = await connection.receive(READ_BYTES)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return receiver.end_deadline is not None
            if data is None:
                self.timed_out = receiver.end_deadline is None
                return True
            await receiver.forward(data, send)
