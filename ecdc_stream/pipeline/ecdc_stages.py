"""Stages around the acv=4 format: entropy coding, .ecdc writer and reader, seeking.

    encode: ... CodeChunk -> ChunkEncodeStage -> Packet -> EcdcSink
    decode: EcdcSource -> Packet | Gap -> ChunkDecodeStage -> CodeChunk | Gap -> ...

The entropy coder runs in worker threads. The writer flushes every chunk as soon as it is
framed (and fsyncs it with `fsync=True`), so a recording killed at any moment is readable up to
its last complete chunk. On a clean end it fills the stream length into the header when the
output is seekable. The reader turns chunks that are missing or fail their CRC into `Gap`s of
the right duration and can start at any chunk without decoding the ones before it.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import BinaryIO

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.container import acv4
from ecdc_stream.container.header import read_header
from ecdc_stream.errors import InvalidArgumentError, UnsupportedStreamError
from ecdc_stream.pipeline.records import CodeChunk, Gap, Packet

log = logging.getLogger(__name__)

# The start of an acv=4 payload, after the 8-byte frame header: sequence, frames, samples.
_PAYLOAD_START = struct.Struct(">IHI")

# Chunks decoded together when several are waiting (file decoding); a live stream decodes
# each chunk as soon as it arrives.
DEFAULT_DECODE_BATCH = 16


def packet_samples(data: bytes) -> int:
    """Return the audio samples an intact framed acv=4 chunk covers."""
    return _PAYLOAD_START.unpack_from(data, 8)[2]


class ChunkEncodeStage:
    """Pipeline stage: `CodeChunk` in, framed acv=4 `Packet` out, coded in a worker thread."""

    def __init__(self, coder: acv4.ChunkCoder) -> None:
        self.coder = coder

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            async for chunk in receive:
                framed = await anyio.to_thread.run_sync(self.coder.encode, chunk)
                await send.send(Packet(chunk.sequence, framed))


class ChunkDecodeStage:
    """Pipeline stage: `Packet | Gap` in, `CodeChunk | Gap` out.

    A packet that fails its CRC or its decoding becomes a `Gap(reason="corrupt")` of the
    duration the stream parameters give its sequence number. Packets already waiting are decoded
    together, up to `batch` at a time, which is faster and gives identical codes.
    """

    def __init__(self, coder: acv4.ChunkCoder, batch: int = DEFAULT_DECODE_BATCH) -> None:
        self.coder = coder
        self.batch = max(1, batch)
        self.corrupt = 0

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            pending: list[Packet | Gap] = []
            async for item in receive:
                pending.append(item)
                # Take whatever else is already waiting, without waiting for more.
                while len(pending) < self.batch:
                    try:
                        pending.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                for out in await anyio.to_thread.run_sync(self._decode, pending):
                    await send.send(out)
                pending = []

    def _decode(self, items: list[Packet | Gap]) -> list[CodeChunk | Gap]:
        packets = [item for item in items if isinstance(item, Packet)]
        decoded = iter(self.coder.decode_batch([packet.data for packet in packets]))
        out: list[CodeChunk | Gap] = []
        for item in items:
            if isinstance(item, Gap):
                out.append(item)
                continue
            result = next(decoded)
            if isinstance(result, acv4.CorruptChunkError):
                self.corrupt += 1
                log.warning("chunk %d is corrupt and will be concealed: %s", item.sequence, result)
                out.append(Gap(item.sequence, self._duration(item.sequence), "corrupt"))
            else:
                out.append(result)
        return out

    def _duration(self, sequence: int) -> int:
        try:
            return acv4.chunk_duration(self.coder.params, sequence)
        except InvalidArgumentError:
            return self.coder.params.chunk_samples


class EcdcSink:
    """Pipeline sink: writes `Packet`s as an acv=4 stream to a binary file object.

    The header is written before the first chunk, each chunk is flushed (and fsynced with
    `fsync=True`) as it arrives. At the end of the input, or when the pipeline is cancelled,
    the header's length field is filled in if `fo` is seekable. `fo` is not closed.
    """

    def __init__(self, fo: BinaryIO, coder: acv4.ChunkCoder, fsync: bool = False) -> None:
        self.fo = fo
        self.coder = coder
        self.fsync = fsync
        self.writer: acv4.Acv4Writer | None = None
        self.bytes_written = 0
        self.end_sample = 0

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        self.writer = acv4.Acv4Writer(self.fo, self.coder, fsync=self.fsync)
        try:
            async with receive, send:
                async for packet in receive:
                    samples = packet_samples(packet.data)
                    self.writer.write_framed(packet.data, samples)
                    self.bytes_written += len(packet.data)
                    # The stream ends where its last chunk ends, even if chunks went missing.
                    self.end_sample = max(self.end_sample, packet.sequence * self.coder.params.chunk_samples + samples)
        finally:
            self.writer.close(self.end_sample)

    @property
    def samples_written(self) -> int:
        """Audio samples covered by the chunks written so far."""
        return self.writer.samples_written if self.writer is not None else 0


@dataclass(frozen=True)
class SeekRange:
    """The chunks [first, last] that a seek reads, and where the requested audio lies in them.

    skip: samples to drop from the start of chunk `first`.
    length: samples wanted in total, or None for everything to the end.
    """

    first: int
    last: int | None
    skip: int
    length: int | None


def seek_range(params: acv4.StreamParams, start_seconds: float = 0.0, end_seconds: float | None = None) -> SeekRange:
    """Return the chunks that hold [start_seconds, end_seconds) of a stream, from its parameters alone.

    Chunk i covers samples [i * chunk_samples, (i + 1) * chunk_samples), whatever the model.
    Raises InvalidArgumentError for a negative start, an end before the start, or a start at or
    beyond the end of a stream of known length.
    """
    if start_seconds < 0 or (end_seconds is not None and end_seconds <= start_seconds):
        raise InvalidArgumentError(
            f"--start {start_seconds:g} and --end {end_seconds} must satisfy 0 <= start < end (seconds)"
        )
    start = int(round(start_seconds * params.sample_rate))
    if params.total_samples is not None and start >= params.total_samples:
        raise InvalidArgumentError(
            f"--start {start_seconds:g} s is at or beyond the end of the stream "
            f"({params.total_samples / params.sample_rate:.2f} s long)"
        )
    first = start // params.chunk_samples
    if end_seconds is None:
        return SeekRange(first, None, start - first * params.chunk_samples, None)

    end = max(start, int(round(end_seconds * params.sample_rate)))
    if params.total_samples is not None:
        end = min(end, params.total_samples)
    last = max(first, (end - 1) // params.chunk_samples)
    return SeekRange(first, last, start - first * params.chunk_samples, end - start)


class EcdcSource:
    """Pipeline source: the chunks of an acv=4 stream as `Packet`s, missing ones as `Gap`s.

    Reads from `fo` positioned after the header (`params` are the header's). Chunks before
    `seek.first` are skipped by their sequence number without being decoded, and reading stops
    after `seek.last`. Repeated chunks and chunks whose sequence number goes back are dropped.
    With a known stream length, chunks missing at the end become gaps too. Bytes after the
    stream's last chunk are ignored with a warning, for a file read to its end.

    chunks, gaps: counts after the run.
    """

    def __init__(self, fo: BinaryIO, params: acv4.StreamParams, seek: SeekRange | None = None, source: str = "input") -> None:
        self.fo = fo
        self.params = params
        self.seek = seek or SeekRange(0, None, 0, None)
        self.source = source
        self.chunks = 0
        self.gaps = 0

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        done = object()
        stream_bytes = acv4.remaining_bytes(self.fo)
        consumed = 0  # bytes the reader has gone through: every chunk and damaged region so far
        reader = acv4.iter_framed_chunks(self.fo, self.params)
        expected = self.seek.first
        last = self.seek.last
        if self.params.num_chunks is not None:
            final = self.params.num_chunks - 1
            last = final if last is None else min(last, final)
        damaged = False

        async with receive, send:
            while last is None or expected <= last:
                item = await anyio.to_thread.run_sync(next, reader, done)
                if item is done:
                    break
                consumed += item.length if isinstance(item, acv4.DamagedRegion) else len(item.data)
                if isinstance(item, acv4.DamagedRegion):
                    damaged = True
                    log.warning("%s: skipped %d damaged bytes", self.source, item.length)
                    continue
                if item.sequence < expected:
                    continue
                if last is not None and item.sequence > last:
                    # A chunk beyond the range: the ones before it that never came are lost.
                    item = None
                if item is None or item.sequence > expected:
                    stop = last + 1 if item is None else item.sequence
                    for sequence in range(expected, stop):
                        await self._send_gap(send, sequence, "corrupt" if damaged else "lost")
                    expected = stop
                if item is None:
                    break
                await send.send(Packet(item.sequence, item.data))
                self.chunks += 1
                expected = item.sequence + 1
                damaged = False

            # With a known length, chunks that never came at the end are gaps too.
            if last is not None and self.params.num_chunks is not None:
                for sequence in range(expected, last + 1):
                    await self._send_gap(send, sequence, "corrupt" if damaged else "lost")

        # Reading stopped at the last chunk. Anything after it, such as a second stream appended
        # with `cat`, is not part of this stream. The file's size gives its length without reading it.
        read_to_end = self.params.num_chunks is not None and last == self.params.num_chunks - 1
        if read_to_end and stream_bytes is not None and stream_bytes > consumed:
            log.warning("%s: ignored %d bytes after the stream's last chunk", self.source, stream_bytes - consumed)

    async def _send_gap(self, send: MemoryObjectSendStream, sequence: int, reason: str) -> None:
        self.gaps += 1
        log.warning("%s: chunk %d is missing (%s) and will be concealed", self.source, sequence, reason)
        await send.send(Gap(sequence, acv4.chunk_duration(self.params, sequence), reason))


def open_ecdc(fo: BinaryIO, source: str = "input") -> acv4.StreamParams:
    """Read the header of an acv=4 stream from `fo` and return its parameters.

    Raises UnsupportedStreamError for a stream in the original EnCodec formats, which have no
    chunks to stream: decode those with `ecdc-stream decode`.
    """
    metadata = read_header(fo, source)
    if "acv" not in metadata:
        raise UnsupportedStreamError(
            f"{source} is in the original EnCodec format, which cannot be streamed or seeked: "
            "decode it with `ecdc-stream decode`, or re-encode it with `--lm`"
        )
    params = acv4.StreamParams.from_metadata(metadata, source)
    # NOTE: on a pipe the length cannot be checked against the input's size, so a corrupt length
    # field there is concealed as silence until the reader of the output stops.
    acv4.check_length_fits(params, acv4.remaining_bytes(fo), source)
    return params
