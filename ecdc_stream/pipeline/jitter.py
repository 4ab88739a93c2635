"""The receiver's reorder (jitter) buffer: link events in arrival order, chunks in sequence order.

Input: `Packet`, `DamagedChunk`, `StreamHeader` and `StreamEnd` records from a link decoder,
plain or wrapped in `Arrival` with the time they arrived. Output: for every sequence number from
the first one on, in order, either the `Packet` (arrived intact) or a `Gap` (lost, corrupt).

When chunk n is missing but a later chunk (or the end message) has arrived, the buffer waits up
to `window_ms` from the first arrival of such evidence, then gives chunk n up as lost. A copy of
chunk n that arrives after that is counted late and dropped. The buffer holds at most
`max_ahead` chunks beyond the next one to release. Anything further ahead, and anything beyond
the announced end, is dropped and counted, so hostile sequence numbers cannot grow it.
"""

from __future__ import annotations

import logging
import math
import struct
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.io.transport import Arrival, DamagedChunk, StreamEnd, StreamHeader
from ecdc_stream.pipeline.records import Gap, Packet
from ecdc_stream.pipeline.report import LinkStats

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_MS = 2500.0
DEFAULT_MAX_AHEAD = 256
DEFAULT_MAX_BUFFERED_BYTES = 16 << 20

# After this many out-of-range chunks with consecutive sequence numbers the buffer concludes that
# the sender really moved on (an outage longer than `max_ahead` chunks) and jumps there.
RESYNC_RUN = 4
# The largest jump it makes that way, in chunks; a longer outage is reported and not concealed.
MAX_RESYNC_JUMP = 1 << 16

# How many released sequence numbers the buffer remembers to tell late copies from duplicates.
HISTORY = 4096

ChunkSamples = Callable[[int, "int | None"], int]

_FRAMING = struct.Struct("!II")


def framed_chunk_intact(data: bytes) -> bool:
    """Check the acv=4 framing of one chunk: the length field and the CRC-32 of the payload."""
    if len(data) < _FRAMING.size:
        return False
    length, crc = _FRAMING.unpack_from(data)
    payload = data[_FRAMING.size :]
    return length == len(payload) and zlib.crc32(payload) == crc


class JitterBuffer:
    """Reorder chunks by sequence number, give up missing ones after a window, count everything.

    chunk_samples: `(sequence, total_samples or None) -> samples` the chunk covers, for gaps.
    window_ms: how long to wait for a missing chunk once a later one arrived, in ms.
    stats: counters to update (see `LinkStats`).
    virtual_clock: take time only from `Arrival` stamps (a simulation) instead of the real clock.
    num_chunks: the number of chunks when known in advance (from the stream header).
    """

    def __init__(
        self,
        chunk_samples: ChunkSamples,
        window_ms: float = DEFAULT_WINDOW_MS,
        stats: LinkStats | None = None,
        virtual_clock: bool = False,
        num_chunks: int | None = None,
        total_samples: int | None = None,
        max_ahead: int = DEFAULT_MAX_AHEAD,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        first_sequence: int = 0,
    ):
        self.chunk_samples = chunk_samples
        self.window_s = window_ms / 1000.0
        self.stats = stats if stats is not None else LinkStats()
        self.virtual_clock = virtual_clock
        self.num_chunks = num_chunks
        self.total_samples = total_samples
        self.max_ahead = max_ahead
        self.max_buffered_bytes = max_buffered_bytes
        self.next = first_sequence
        self.stats.first_sequence = first_sequence
        if num_chunks is not None:
            self.stats.chunks_expected = num_chunks

        # sequence -> (Packet, or None for a damaged copy, arrival time in s)
        self._slots: dict[int, tuple[Packet | None, float]] = {}
        self._end_time: float | None = None
        self._highest = first_sequence - 1
        self._now = -math.inf
        self._lost: set[int] = set()
        self._released: deque[int] = deque()
        self._out_of_range_run: list[tuple[int, Packet | None, float]] = []
        self._jump_to: int | None = None
        self._buffered_bytes = 0

    @property
    def buffered(self) -> int:
        """Chunks held while waiting for an earlier one."""
        return len(self._slots)

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the chunks held."""
        return self._buffered_bytes

    # ------------------------------------------------------------------------------------------
    # Synchronous core

    def push(self, item: Any, now: float) -> list[Packet | Gap]:
        """Take one link event that arrived at `now` (s) and return what can be released."""
        if isinstance(item, Arrival):
            now = item.time_s
            item = item.item
        self._now = max(self._now, now)

        if isinstance(item, Packet):
            intact = framed_chunk_intact(item.data)
            self._arrive(item.sequence, item if intact else None)
        elif isinstance(item, DamagedChunk):
            self._arrive(item.sequence, None)
        elif isinstance(item, StreamEnd):
            self._set_end(item)
        elif isinstance(item, StreamHeader):
            pass
        else:
            raise TypeError(f"the jitter buffer cannot take {type(item).__name__} records")
        return self.poll(self._now)

    def _set_end(self, end: StreamEnd) -> None:
        self.stats.end_received = True
        if self.num_chunks is None:
            self.num_chunks = end.num_chunks
            self.stats.chunks_expected = end.num_chunks
        if self.total_samples is None:
            self.total_samples = end.total_samples
        if self._end_time is None:
            self._end_time = self._now

        # Chunks held beyond the end cannot be part of the stream.
        for sequence in [s for s in self._slots if s >= self.num_chunks]:
            self._take(sequence)
            self.stats.rejected["beyond_end"] += 1

    def _arrive(self, sequence: int, packet: Packet | None) -> None:
        stats = self.stats

        if sequence < self.next:
            if sequence in self._lost and packet is not None:
                self._lost.discard(sequence)
                stats.lost -= 1
                stats.late += 1
                logger.info("chunk %d arrived after it was concealed", sequence)
            else:
                stats.duplicated += 1
            return

        if self.num_chunks is not None and sequence >= self.num_chunks:
            stats.rejected["beyond_end"] += 1
            return

        if sequence > self.next + self.max_ahead and self._jump_to is None:
            self._out_of_range(sequence, packet)
            return

        held = self._slots.get(sequence)
        if held is not None:
            stats.duplicated += 1
            if held[0] is None and packet is not None:
                # An intact copy replaces a damaged one that is still waiting.
                self._slots[sequence] = (packet, held[1])
                self._buffered_bytes += len(packet.data)
            return

        self._store(sequence, packet, self._now)

    def _out_of_range(self, sequence: int, packet: Packet | None) -> None:
        run = self._out_of_range_run
        if run and sequence != run[-1][0] + 1:
            self.stats.rejected["out_of_range"] += len(run)
            run.clear()
        run.append((sequence, packet, self._now))
        if len(run) < RESYNC_RUN:
            return

        start = run[0][0]
        if start - self.next > MAX_RESYNC_JUMP:
            self.stats.rejected["out_of_range"] += len(run)
            run.clear()
            logger.warning("ignoring chunks from %d on: %d chunks ahead of the next expected", start, start - self.next)
            return

        logger.warning("chunks %d to %d never arrived: jumping ahead to chunk %d", self.next, start - 1, start)
        self._jump_to = start
        for held_sequence, held_packet, arrived in run:
            self._store(held_sequence, held_packet, arrived)
        run.clear()

    def _store(self, sequence: int, packet: Packet | None, arrived: float) -> None:
        size = len(packet.data) if packet is not None else 0
        if self._buffered_bytes + size > self.max_buffered_bytes:
            self.stats.rejected["buffer_full"] += 1
            return
        if sequence < self._highest:
            self.stats.reordered += 1
        self._highest = max(self._highest, sequence)
        self._slots[sequence] = (packet, arrived)
        self._buffered_bytes += size

    def poll(self, now: float) -> list[Packet | Gap]:
        """Release what is due at time `now` (s): chunks in order and gaps whose window passed."""
        self._now = max(self._now, now)
        out: list[Packet | Gap] = []

        while True:
            if self.num_chunks is not None and self.next >= self.num_chunks:
                break
            if self.next in self._slots:
                out.append(self._release(self._take(self.next)))
                continue
            if self._jump_to is not None and self.next < self._jump_to:
                out.append(self._release(None, "lost"))
                continue
            deadline = self.deadline
            if deadline is None or self._now < deadline:
                break
            out.append(self._release(None, "lost"))

        if self._jump_to is not None and self.next >= self._jump_to:
            self._jump_to = None
        return out

    def _take(self, sequence: int) -> Packet | None:
        packet, _ = self._slots.pop(sequence)
        if packet is not None:
            self._buffered_bytes -= len(packet.data)
        return packet

    @property
    def deadline(self) -> float | None:
        """When the next missing chunk will be given up (s), or None while nothing shows it missing."""
        if self.num_chunks is not None and self.next >= self.num_chunks:
            return None
        evidence = [t for _, t in self._slots.values()]
        if self._end_time is not None:
            evidence.append(self._end_time)
        if not evidence:
            return None
        return min(evidence) + self.window_s

    def _release(self, packet: Packet | None, reason: str = "corrupt") -> Packet | Gap:
        sequence = self.next
        self.next += 1
        self._released.append(sequence)
        if len(self._released) > HISTORY:
            self._lost.discard(self._released.popleft())

        if packet is not None:
            self.stats.received += 1
            self.stats.output_samples += self.chunk_samples(sequence, self.total_samples)
            return packet

        samples = self.chunk_samples(sequence, self.total_samples)
        if reason == "lost":
            self.stats.lost += 1
            self._lost.add(sequence)
        else:
            self.stats.corrupt += 1
        self.stats.concealed_samples += samples
        self.stats.output_samples += samples
        logger.info("chunk %d %s: concealing %d samples", sequence, reason, samples)
        return Gap(sequence, samples, reason)

    def flush(self) -> list[Packet | Gap]:
        """Release everything at the end of input: held chunks in order, every hole as lost."""
        out: list[Packet | Gap] = []
        last = self._highest if self.num_chunks is None else self.num_chunks - 1
        while self.next <= last:
            if self.next in self._slots:
                out.append(self._release(self._take(self.next)))
            else:
                out.append(self._release(None, "lost"))
        self._slots.clear()
        self._buffered_bytes = 0
        if self._out_of_range_run:
            self.stats.rejected["out_of_range"] += len(self._out_of_range_run)
        self._out_of_range_run.clear()
        return out

    # ------------------------------------------------------------------------------------------
    # Pipeline stage

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        """Pipeline stage: link events in, `Packet | Gap` in sequence order out."""
        self.stats.started_at = anyio.current_time()
        async with receive, send:
            while True:
                deadline = None if self.virtual_clock else self.deadline
                timeout = math.inf if deadline is None else max(0.0, deadline - anyio.current_time())
                item = None
                try:
                    item = receive.receive_nowait()
                except anyio.WouldBlock:
                    with anyio.move_on_after(timeout):
                        try:
                            item = await receive.receive()
                        except anyio.EndOfStream:
                            break
                except anyio.EndOfStream:
                    break

                if item is None:
                    released = self.poll(anyio.current_time())
                else:
                    now = self._now if self.virtual_clock else anyio.current_time()
                    released = self.push(item, now)
                for record in released:
                    await send.send(record)

            for record in self.flush():
                await send.send(record)
