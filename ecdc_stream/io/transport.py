"""The link format shared by the UDP, TCP and pipe transports, and transport URLs.

Every transport carries *link messages*. A message starts with a fixed 30-byte prefix
(all integers big-endian):

    offset  size  field
    0       4     magic b"ECDL"
    4       1     link format version (1)
    5       1     kind: 1 stream header, 2 chunk, 3 stream end
    6       2     fragment index (chunk messages; 0 otherwise)
    8       2     fragment count (chunk messages; 1 otherwise)
    10      4     stream id, random per sender run
    14      4     chunk sequence number (chunk messages), header repeat counter, or chunk count (end)
    18      4     body length in bytes
    22      4     CRC-32 of the body
    26      4     CRC-32 of bytes 0-25

and the body follows. A chunk message's body is the framed acv=4 chunk
(`[u32 payload length][u32 CRC-32][payload]`), or one fragment of it. A header message's body
is the .ecdc header (magic, version, JSON metadata) of the stream. Senders repeat it at
intervals, so a receiver that starts late or loses the first datagram still decodes. An
end message's body is JSON `{"chunks": N, "total_samples": S}`; senders send it several times.

UDP sends one message per datagram and splits a chunk larger than `MAX_FRAGMENT_BYTES` into
fragments that are reassembled, or dropped as a whole, by the receiver. TCP and pipes send the
messages back to back; the reader finds the next magic whose prefix CRC matches after any
damage, so it resynchronises at the next intact message whatever byte was corrupted.

NOTE: the link has no authentication. A sender that can reach the receiver and copies a stream
id from the traffic can replace chunks that have not arrived yet (they then count as corrupt),
or end a stream whose header does not state its length early with a forged end message. A
receiver locks onto the first valid header it gets, so a forged first header captures it unless
`expected_model` (`receive --expect-model`) rules the forgery out.
"""

from __future__ import annotations

import io
import json
import logging
import math
import secrets
import struct
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Union

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.container.header import encode_header, read_header
from ecdc_stream.errors import EcdcError, InvalidArgumentError
from ecdc_stream.pipeline.records import Packet

logger = logging.getLogger(__name__)

MAGIC = b"ECDL"
LINK_VERSION = 1

KIND_HEADER = 1
KIND_CHUNK = 2
KIND_END = 3

_PREFIX = struct.Struct("!4sBBHHIIIII")
PREFIX_BYTES = _PREFIX.size
_PREFIX_CHECKED_BYTES = PREFIX_BYTES - 4

# 1232 bytes is the largest UDP payload that fits the 1280-byte minimum IPv6 MTU after the IPv6
# (40 bytes) and UDP (8 bytes) headers, so such datagrams are never fragmented by IP on any
# standard path. A 30-byte prefix leaves 1202 bytes; fragments carry at most 1200.
MAX_DATAGRAM_BYTES = 1232
MAX_FRAGMENT_BYTES = 1200

# A chunk of 2 s at 24 kbps is 6 kB; 1 MiB bounds what a reader buffers for one message.
MAX_BODY_BYTES = 1 << 20
MAX_FRAGMENTS = -(-MAX_BODY_BYTES // MAX_FRAGMENT_BYTES)

# How many partly reassembled chunks a UDP receiver keeps before it drops the oldest.
MAX_PENDING_REASSEMBLIES = 64

# How many times a sender sends the end message.
END_REPEATS = 3


class TransportError(EcdcError):
    """A transport could not be opened or used: bad URL, address in use, connection refused."""


# ----------------------------------------------------------------------------------------------
# Encoding


def _message(kind: int, stream_id: int, sequence: int, body: bytes, index: int = 0, count: int = 1) -> bytes:
    body_crc = zlib.crc32(body)
    prefix = _PREFIX.pack(MAGIC, LINK_VERSION, kind, index, count, stream_id, sequence, len(body), body_crc, 0)
    prefix_crc = zlib.crc32(prefix[:_PREFIX_CHECKED_BYTES])
    return prefix[:_PREFIX_CHECKED_BYTES] + struct.pack("!I", prefix_crc) + body


def header_message(stream_id: int, metadata: dict[str, Any], repeat: int = 0) -> bytes:
    """Encode the stream header message carrying the .ecdc header for `metadata`."""
    return _message(KIND_HEADER, stream_id, repeat, encode_header(metadata))


def end_message(stream_id: int, num_chunks: int, total_samples: int) -> bytes:
    """Encode the end message: the stream has `num_chunks` chunks and `total_samples` samples."""
    body = json.dumps({"chunks": num_chunks, "total_samples": total_samples}).encode()
    return _message(KIND_END, stream_id, num_chunks, body)


def chunk_messages(stream_id: int, packet: Packet, max_fragment_bytes: int | None = MAX_FRAGMENT_BYTES) -> list[bytes]:
    """Encode one framed chunk as link messages.

    With `max_fragment_bytes` set (UDP) the chunk is split into fragments of at most that many
    bytes; with None (byte streams) it travels as one message.
    """
    data = packet.data
    if len(data) > MAX_BODY_BYTES:
        raise InvalidArgumentError(
            f"chunk {packet.sequence} is {len(data)} bytes, more than the link limit of {MAX_BODY_BYTES}: use shorter chunks"
        )
    if max_fragment_bytes is None or len(data) <= max_fragment_bytes:
        return [_message(KIND_CHUNK, stream_id, packet.sequence, data)]

    pieces = [data[i : i + max_fragment_bytes] for i in range(0, len(data), max_fragment_bytes)]
    return [
        _message(KIND_CHUNK, stream_id, packet.sequence, piece, index, len(pieces))
        for index, piece in enumerate(pieces)
    ]


# ----------------------------------------------------------------------------------------------
# Events a receiver produces


@dataclass(frozen=True)
class StreamHeader:
    """The header of the stream a receiver locked onto: its id and .ecdc metadata."""

    stream_id: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class StreamEnd:
    """The sender's end message: the stream has `num_chunks` chunks and `total_samples` samples."""

    num_chunks: int
    total_samples: int


@dataclass(frozen=True)
class DamagedChunk:
    """A chunk whose message arrived with a damaged body, so it cannot be decoded."""

    sequence: int


LinkEvent = Union[StreamHeader, StreamEnd, Packet, DamagedChunk]


@dataclass(frozen=True)
class Arrival:
    """An item with the time it arrived at the receiver, in s, on the link's clock.

    Stages on a virtual clock (fault injection in `simulate`) stamp items this way. A receiver
    stamps other items with the real clock when it takes them.
    """

    item: Any
    time_s: float


@dataclass(frozen=True)
class _Prefix:
    kind: int
    index: int
    count: int
    stream_id: int
    sequence: int
    body_length: int
    body_crc: int


def _parse_prefix(data: bytes | memoryview) -> _Prefix | str:
    """Parse a message prefix, returning the rejection reason instead when it is invalid."""
    if len(data) < PREFIX_BYTES:
        return "too_short"
    magic, version, kind, index, count, stream_id, sequence, length, body_crc, prefix_crc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        return "bad_magic"
    if zlib.crc32(bytes(data[:_PREFIX_CHECKED_BYTES])) != prefix_crc:
        return "bad_prefix_crc"
    if version != LINK_VERSION:
        return "bad_version"
    if kind not in (KIND_HEADER, KIND_CHUNK, KIND_END):
        return "bad_kind"
    if length > MAX_BODY_BYTES:
        return "bad_length"
    if count == 0 or count > MAX_FRAGMENTS or index >= count:
        return "bad_fragment"
    if kind != KIND_CHUNK and count != 1:
        return "bad_fragment"
    return _Prefix(kind, index, count, stream_id, sequence, length, body_crc)


@dataclass
class _Reassembly:
    count: int
    pieces: dict[int, bytes] = field(default_factory=dict)
    damaged: bool = False
    size: int = 0


class LinkDecoder:
    """Turn received link messages into events, rejecting and counting everything invalid.

    The decoder locks onto the stream of the first valid header message (or of `stream_id`, when
    given) and drops messages of other streams, headers that disagree with the first, and every
    malformed message, counting each under a reason in `rejected`. Its memory is bounded: at
    most `MAX_PENDING_REASSEMBLIES` chunks are reassembled at once, each at most
    `MAX_BODY_BYTES`.
    """

    def __init__(self, stream_id: int | None = None, expected_model: str | None = None):
        self.stream_id = stream_id
        self.expected_model = expected_model
        self.header: StreamHeader | None = None
        self.end: StreamEnd | None = None
        self.rejected: Counter[str] = Counter()
        self.messages = 0
        self._reassembly: OrderedDict[int, _Reassembly] = OrderedDict()
        self._done: set[int] = set()
        self._done_order: list[int] = []

    @property
    def pending_reassemblies(self) -> int:
        """Number of chunks whose fragments are partly received."""
        return len(self._reassembly)

    def _reject(self, reason: str) -> list[LinkEvent]:
        self.rejected[reason] += 1
        logger.debug("dropped a link message: %s", reason)
        return []

    def feed_datagram(self, datagram: bytes) -> list[LinkEvent]:
        """Decode one datagram holding exactly one message."""
        prefix = _parse_prefix(datagram)
        if isinstance(prefix, str):
            return self._reject(prefix)
        if len(datagram) != PREFIX_BYTES + prefix.body_length:
            return self._reject("bad_length")
        return self._accept(prefix, datagram[PREFIX_BYTES:])

    def _accept(self, prefix: _Prefix, body: bytes) -> list[LinkEvent]:
        """Handle a message whose prefix is valid and whose body has the declared length."""
        body_ok = zlib.crc32(body) == prefix.body_crc

        if prefix.kind == KIND_HEADER:
            if not body_ok:
                return self._reject("bad_body_crc")
            return self._accept_header(prefix, body)

        if self.stream_id is not None and prefix.stream_id != self.stream_id:
            return self._reject("foreign_stream")

        if prefix.kind == KIND_END:
            if not body_ok:
                return self._reject("bad_body_crc")
            return self._accept_end(prefix, body)

        self.messages += 1
        if prefix.count == 1:
            if not body_ok:
                return [DamagedChunk(prefix.sequence)]
            return [Packet(prefix.sequence, bytes(body))]
        return self._accept_fragment(prefix, body, body_ok)

    def _accept_header(self, prefix: _Prefix, body: bytes) -> list[LinkEvent]:
        try:
            metadata = read_header(io.BytesIO(body), "link header")
        except EcdcError:
            return self._reject("bad_header")

        if self.stream_id is not None and prefix.stream_id != self.stream_id:
            return self._reject("foreign_stream")
        if self.expected_model is not None and metadata.get("model") != self.expected_model:
            return self._reject("foreign_model")
        if self.header is not None:
            if metadata != self.header.metadata:
                return self._reject("header_mismatch")
            self.messages += 1
            return []

        self.stream_id = prefix.stream_id
        self.header = StreamHeader(prefix.stream_id, metadata)
        self.messages += 1
        return [self.header]

    def _accept_end(self, prefix: _Prefix, body: bytes) -> list[LinkEvent]:
        try:
            fields = json.loads(body.decode())
            num_chunks = fields["chunks"]
            total = fields["total_samples"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            return self._reject("bad_end")
        valid = all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 48 for v in (num_chunks, total))
        if not valid or num_chunks != prefix.sequence:
            return self._reject("bad_end")

        # An end message must agree with the header it follows: its total with a total the
        # header states, and its chunk count with the chunk length.
        if self.header is None:
            return self._reject("end_before_header")
        known_total = self.header.metadata.get("total_samples")
        chunk_samples = self.header.metadata.get("chunk_samples")
        if _is_count(known_total) and total != known_total:
            return self._reject("end_mismatch")
        if _is_count(chunk_samples) and chunk_samples > 0 and num_chunks != -(-total // chunk_samples):
            return self._reject("bad_end")

        end = StreamEnd(num_chunks, total)
        self.messages += 1
        if self.end is not None:
            return [] if end == self.end else self._reject("end_mismatch")
        self.end = end
        return [end]

    def _accept_fragment(self, prefix: _Prefix, body: bytes, body_ok: bool) -> list[LinkEvent]:
        sequence = prefix.sequence
        if sequence in self._done:
            # A fragment of a chunk already reassembled or given up belongs to another copy. The
            # copy is reported once, at its first fragment, as a damaged copy: the jitter buffer
            # counts it as a duplicate, or as corrupt when no whole copy ever arrived.
            return [DamagedChunk(sequence)] if prefix.index == 0 else []

        entry = self._reassembly.get(sequence)
        if entry is None:
            if len(self._reassembly) >= MAX_PENDING_REASSEMBLIES:
                oldest, _ = self._reassembly.popitem(last=False)
                self._mark_done(oldest)
                self.rejected["reassembly_evicted"] += 1
            entry = _Reassembly(prefix.count)
            self._reassembly[sequence] = entry
        if entry.count != prefix.count:
            return self._reject("bad_fragment")
        if prefix.index in entry.pieces:
            return []
        if entry.size + len(body) > MAX_BODY_BYTES:
            del self._reassembly[sequence]
            self._mark_done(sequence)
            return self._reject("bad_length")

        entry.pieces[prefix.index] = bytes(body)
        entry.size += len(body)
        entry.damaged = entry.damaged or not body_ok
        if len(entry.pieces) < entry.count:
            return []

        del self._reassembly[sequence]
        self._mark_done(sequence)
        if entry.damaged:
            return [DamagedChunk(sequence)]
        return [Packet(sequence, b"".join(entry.pieces[i] for i in range(entry.count)))]

    def _mark_done(self, sequence: int) -> None:
        # Remember a bounded number of finished sequence numbers, so that late duplicate
        # fragments do not start a new reassembly.
        self._done.add(sequence)
        self._done_order.append(sequence)
        if len(self._done_order) > 4 * MAX_PENDING_REASSEMBLIES:
            self._done.discard(self._done_order.pop(0))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class StreamDecoder:
    """Split a byte stream (TCP, pipe) into link messages and decode them.

    After damage anywhere, a length field included, the decoder scans for the next magic whose
    prefix CRC matches and resumes there. It buffers at most one message
    (`PREFIX_BYTES + MAX_BODY_BYTES`).
    """

    def __init__(self, link: LinkDecoder):
        self.link = link
        self.skipped_bytes = 0
        self._buffer = bytearray()

    @property
    def buffered_bytes(self) -> int:
        """Bytes held while waiting for the rest of a message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[LinkEvent]:
        """Add bytes received from the stream and decode every message they complete."""
        self._buffer += data
        events: list[LinkEvent] = []
        while True:
            step = self._next_message()
            if step is None:
                return events
            events.extend(step)

    def _skip(self, count: int) -> None:
        del self._buffer[:count]
        self.skipped_bytes += count

    def _next_message(self) -> list[LinkEvent] | None:
        """Decode the message at the start of the buffer, or return None to wait for bytes."""
        buffer = self._buffer
        start = buffer.find(MAGIC)
        if start < 0:
            # Keep the last bytes: they may be the start of a magic split across reads.
            keep = len(MAGIC) - 1
            if len(buffer) > keep:
                self._skip(len(buffer) - keep)
            return None
        if start > 0:
            self._skip(start)
        if len(buffer) < PREFIX_BYTES:
            return None

        prefix = _parse_prefix(memoryview(buffer)[:PREFIX_BYTES])
        if isinstance(prefix, str):
            self.link.rejected[prefix] += 1
            self._skip(1)
            return []
        end = PREFIX_BYTES + prefix.body_length
        if len(buffer) < end:
            return None

        body = bytes(buffer[PREFIX_BYTES:end])
        if zlib.crc32(body) != prefix.body_crc:
            # The prefix is intact but the body is not: report it, then search from just after
            # the prefix, because bytes may have been lost and the next message may start inside.
            self._skip(PREFIX_BYTES)
            if prefix.kind == KIND_CHUNK:
                if self.link.stream_id is not None and prefix.stream_id != self.link.stream_id:
                    self.link.rejected["foreign_stream"] += 1
                    return []
                self.link.messages += 1
                return [DamagedChunk(prefix.sequence)]
            self.link.rejected["bad_body_crc"] += 1
            return []

        del self._buffer[:end]
        return self.link._accept(prefix, body)

    def finish(self) -> list[LinkEvent]:
        """Account for bytes left when the stream ends: a truncated last message."""
        if self._buffer:
            self.link.rejected["truncated_tail"] += 1
            self._skip(len(self._buffer))
        return []


def iter_messages(data: bytes) -> Iterator[bytes]:
    """Yield the messages of an undamaged byte stream (for tests and tools)."""
    position = 0
    while position < len(data):
        prefix = _parse_prefix(data[position : position + PREFIX_BYTES])
        if isinstance(prefix, str):
            raise ValueError(f"no valid link message at byte {position}: {prefix}")
        end = position + PREFIX_BYTES + prefix.body_length
        yield data[position:end]
        position = end


# ----------------------------------------------------------------------------------------------
# URLs


@dataclass(frozen=True)
class TransportUrl:
    """A parsed transport address: scheme "udp", "tcp" or "pipe", and host and port for sockets."""

    scheme: str
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.scheme == "pipe":
            return "-"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_url(text: str) -> TransportUrl:
    """Parse `udp://HOST:PORT`, `tcp://HOST:PORT` or `-` (standard input or output).

    IPv6 hosts are written in brackets (`udp://[::1]:5004`). Port 0 asks the system for a free
    port when binding. Raises InvalidArgumentError naming the text for anything else.
    """
    if text in ("-", "pipe:", "pipe://"):
        return TransportUrl("pipe")

    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("udp", "tcp"):
        raise InvalidArgumentError(
            f"transport {text!r} is not supported: use udp://HOST:PORT, tcp://HOST:PORT or - for a pipe"
        )

    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise InvalidArgumentError(f"transport {text!r} has a malformed IPv6 address: write udp://[::1]:PORT")
        port_text = port_text[1:]
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise InvalidArgumentError(f"transport {text!r} lacks a port: write {scheme}://HOST:PORT")
    if not host:
        raise InvalidArgumentError(f"transport {text!r} lacks a host: write {scheme}://127.0.0.1:PORT")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidArgumentError(f"transport {text!r} has port {port_text!r}: use a number from 0 to 65535")
    return TransportUrl(scheme, host, int(port_text))


# ----------------------------------------------------------------------------------------------
# Stages shared by the transports


class LinkFramer:
    """Pipeline stage: framed chunks (`Packet`) in, link messages (`bytes`) out.

    Sends the stream header before the first chunk and again every `header_every` chunks, and
    `END_REPEATS` end messages when the input ends. `Arrival` records pass through with their
    time, each message inheriting it.

    metadata: the .ecdc header metadata of the stream.
    end_totals: called at the end, returns `(number of chunks, total samples)` of the stream.
    max_fragment_bytes: fragment size for datagrams, or None for byte streams.
    """

    def __init__(
        self,
        stream_id: int,
        metadata: dict[str, Any],
        end_totals: Callable[[], tuple[int, int]],
        header_every: int = 4,
        max_fragment_bytes: int | None = MAX_FRAGMENT_BYTES,
    ):
        if header_every < 1:
            raise InvalidArgumentError(f"header interval is {header_every} chunks: give 1 or more")
        self.stream_id = stream_id
        self.metadata = metadata
        self.end_totals = end_totals
        self.header_every = header_every
        self.max_fragment_bytes = max_fragment_bytes
        self.messages = 0
        self._chunks = 0
        self._headers = 0

    def frame(self, packet: Packet) -> list[bytes]:
        """Return the messages for one chunk, preceded by the header when one is due."""
        out = []
        if self._chunks % self.header_every == 0:
            out.append(header_message(self.stream_id, self.metadata, self._headers))
            self._headers += 1
        self._chunks += 1
        out.extend(chunk_messages(self.stream_id, packet, self.max_fragment_bytes))
        self.messages += len(out)
        return out

    def finish(self) -> list[bytes]:
        """Return the end messages (and a header, if no chunk was sent at all)."""
        num_chunks, total_samples = self.end_totals()
        out = [] if self._chunks else [header_message(self.stream_id, self.metadata, 0)]
        out += [end_message(self.stream_id, num_chunks, total_samples)] * END_REPEATS
        self.messages += len(out)
        return out

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        """Frame every packet from `receive` and send the messages to `send`."""
        async with receive, send:
            last_time: float | None = None
            async for item in receive:
                if isinstance(item, Arrival):
                    last_time = item.time_s
                    for message in self.frame(item.item):
                        await send.send(Arrival(message, item.time_s))
                else:
                    for message in self.frame(item):
                        await send.send(message)
            for message in self.finish():
                # On a virtual clock the end messages arrive with the last chunk.
                await send.send(message if last_time is None else Arrival(message, last_time))


def new_stream_id() -> int:
    """Return a random stream id (u32) for one sender run."""
    return secrets.randbits(32)


class Pacer:
    """Pipeline stage that lets item i through no earlier than i * interval_s / speed after the first.

    Gives a file the pace of a live stream; `speed` 0 (or below) disables pacing.
    """

    def __init__(self, interval_s: float, speed: float = 1.0):
        self.interval_s = interval_s
        self.speed = speed

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            start = None
            index = 0
            async for item in receive:
                if self.speed > 0:
                    now = anyio.current_time()
                    start = now if start is None else start
                    wait = start + index * self.interval_s / self.speed - now
                    if wait > 0:
                        await anyio.sleep(wait)
                index += 1
                await send.send(item)


class ByteStreamReceiver:
    """Shared receive loop of the byte-stream transports: decode, stamp and forward link events.

    Ends `linger_s` after the end message, or when no byte arrived for `idle_timeout_s` once the
    stream had started, or at the end of the byte stream when `end_on_close` is set.
    """

    def __init__(self, decoder: LinkDecoder, idle_timeout_s: float, linger_s: float):
        self.decoder = decoder
        self.stream = StreamDecoder(decoder)
        self.idle_timeout_s = idle_timeout_s
        self.linger_s = linger_s
        self.bytes_received = 0
        self.end_deadline: float | None = None

    def timeout(self, started: bool) -> float:
        """Seconds to wait for the next read before the receiver gives up."""
        if self.end_deadline is not None:
            return max(0.0, self.end_deadline - anyio.current_time())
        return self.idle_timeout_s if started else math.inf

    async def forward(self, data: bytes, send: MemoryObjectSendStream) -> None:
        """Decode `data` and send the events it completes."""
        self.bytes_received += len(data)
        for event in self.stream.feed(data):
            if isinstance(event, StreamEnd) and self.end_deadline is None:
                self.end_deadline = anyio.current_time() + self.linger_s
            await send.send(event)


async def pipe_sink(receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream, output: BinaryIO) -> None:
    """Pipeline stage: write link messages (`bytes`) to a binary file or pipe, such as standard output."""
    async with receive, send:
        async for message in receive:
            data = message.item if isinstance(message, Arrival) else message
            await anyio.to_thread.run_sync(_write_flush, output, data)


def _write_flush(output: BinaryIO, data: bytes) -> None:
    output.write(data)
    output.flush()


async def pipe_source(
    receive: MemoryObjectReceiveStream,
    send: MemoryObjectSendStream,
    source: BinaryIO,
    decoder: LinkDecoder,
    read_bytes: int = 65536,
) -> None:
    """Pipeline stage: read a link byte stream from a binary file or pipe until its end, send link events."""
    receiver = ByteStreamReceiver(decoder, math.inf, 0.0)
    read = getattr(source, "read1", source.read)
    async with receive, send:
        while True:
            data = await anyio.to_thread.run_sync(read, read_bytes)
            if not data:
                break
            await receiver.forward(data, send)
        receiver.stream.finish()
