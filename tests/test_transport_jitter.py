"""The receiver's jitter buffer: order, windows, late and duplicate copies, bounds."""

from __future__ import annotations

import struct
import zlib

import anyio
import numpy as np

from ecdc_stream.faults import FaultConfig, FaultModel
from ecdc_stream.io.transport import Arrival, DamagedChunk, StreamEnd
from ecdc_stream.pipeline.jitter import DEFAULT_MAX_AHEAD, RESYNC_RUN, JitterBuffer
from ecdc_stream.pipeline.records import Gap, Packet
from ecdc_stream.pipeline.report import LinkStats

CHUNK = 1000


def framed(sequence: int, size: int = 100) -> Packet:
    payload = np.random.default_rng(sequence).bytes(size)
    return Packet(sequence, struct.pack("!II", len(payload), zlib.crc32(payload)) + payload)


def chunk_samples(sequence: int, total: int | None) -> int:
    if total is None:
        return CHUNK
    return max(0, min(CHUNK, total - sequence * CHUNK))


def new_buffer(**kwargs) -> JitterBuffer:
    return JitterBuffer(chunk_samples, window_ms=500, stats=LinkStats(sample_rate=1000), virtual_clock=True, **kwargs)


def feed(buffer: JitterBuffer, arrivals: list[tuple[object, float]]) -> list:
    out = []
    for item, time in arrivals:
        out += buffer.push(Arrival(item, time), 0.0)
    return out + buffer.flush()


def describe(out: list) -> list[tuple[int, str]]:
    return [(r.sequence, "packet" if isinstance(r, Packet) else r.reason) for r in out]


def test_in_order_passes_at_once():
    buffer = new_buffer()
    assert buffer.push(Arrival(framed(0), 0.0), 0.0) == [framed(0)]
    assert buffer.push(Arrival(framed(1), 0.1), 0.0) == [framed(1)]
    assert buffer.stats.received == 2


def test_reorder_within_window():
    buffer = new_buffer()
    out = feed(buffer, [(framed(0), 0.0), (framed(2), 0.1), (framed(1), 0.3), (framed(3), 0.4)])
    assert out == [framed(0), framed(1), framed(2), framed(3)]
    assert buffer.stats.reordered == 1
    assert buffer.stats.lost == 0


def test_missing_chunk_given_up_after_window_then_late():
    buffer = new_buffer()
    out = feed(
        buffer,
        [(framed(0), 0.0), (framed(2), 0.1), (framed(3), 0.55), (framed(4), 0.61), (framed(1), 0.7), (framed(5), 0.8)],
    )
    assert describe(out) == [(0, "packet"), (1, "lost"), (2, "packet"), (3, "packet"), (4, "packet"), (5, "packet")]
    stats = buffer.stats
    assert (stats.received, stats.lost, stats.late, stats.reordered) == (5, 0, 1, 0)
    assert stats.concealed_samples == CHUNK


def test_gap_released_when_window_ends():
    buffer = new_buffer()
    assert buffer.push(Arrival(framed(0), 0.0), 0.0) == [framed(0)]
    assert buffer.push(Arrival(framed(2), 1.0), 0.0) == []
    assert buffer.deadline == 1.5
    assert describe(buffer.poll(1.49)) == []
    assert describe(buffer.poll(1.5)) == [(1, "lost"), (2, "packet")]


def test_duplicates_counted_once_delivered():
    buffer = new_buffer()
    out = feed(buffer, [(framed(0), 0.0), (framed(0), 0.1), (framed(2), 0.2), (framed(2), 0.3), (framed(1), 0.4)])
    assert out == [framed(0), framed(1), framed(2)]
    assert buffer.stats.duplicated == 2


def test_corrupt_chunk_becomes_gap():
    damaged = bytearray(framed(1).data)
    damaged[20] ^= 1
    truncated = framed(2).data[:50]
    buffer = new_buffer()
    out = feed(buffer, [(framed(0), 0.0), (Packet(1, bytes(damaged)), 0.1), (Packet(2, truncated), 0.2),
                        (DamagedChunk(3), 0.3), (framed(4), 0.4)])
    assert describe(out) == [(0, "packet"), (1, "corrupt"), (2, "corrupt"), (3, "corrupt"), (4, "packet")]
    assert buffer.stats.corrupt == 3
    assert all(g.num_samples == CHUNK for g in out if isinstance(g, Gap))


def test_intact_copy_replaces_damaged_one():
    buffer = new_buffer()
    out = feed(buffer, [(framed(0), 0.0), (DamagedChunk(2), 0.1), (framed(2), 0.2), (framed(1), 0.3)])
    assert out == [framed(0), framed(1), framed(2)]
    assert buffer.stats.corrupt == 0


def test_end_marker_conceals_lost_tail_exactly():
    buffer = new_buffer()
    total = 4 * CHUNK + 300
    out = feed(buffer, [(framed(0), 0.0), (framed(1), 0.1), (StreamEnd(5, total), 0.2)])
    assert describe(out) == [(0, "packet"), (1, "packet"), (2, "lost"), (3, "lost"), (4, "lost")]
    assert [g.num_samples for g in out[2:]] == [CHUNK, CHUNK, 300]
    assert buffer.stats.output_samples == total
    assert buffer.stats.chunks_expected == 5


def test_lost_end_marker_ends_at_last_chunk():
    buffer = new_buffer()
    out = feed(buffer, [(framed(0), 0.0), (framed(3), 0.1)])
    assert describe(out) == [(0, "packet"), (1, "lost"), (2, "lost"), (3, "packet")]
    assert not buffer.stats.end_received
    assert buffer.stats.report().chunks_sent is None


def test_far_future_and_beyond_end_are_dropped():
    buffer = new_buffer()
    buffer.push(Arrival(framed(0), 0.0), 0.0)
    for sequence in (10**6, 2**32 - 1, 5000):
        assert buffer.push(Arrival(framed(sequence), 0.1), 0.0) == []
    assert buffer.buffered == 0
    assert buffer.push(Arrival(StreamEnd(3, 3000), 0.2), 0.0) == []
    assert buffer.push(Arrival(framed(7), 0.3), 0.0) == []
    out = buffer.flush()
    assert describe(out) == [(1, "lost"), (2, "lost")]
    assert buffer.stats.rejected == {"out_of_range": 3, "beyond_end": 1}


def test_buffer_bounded_under_flood():
    buffer = new_buffer()
    buffer.push(Arrival(framed(1), 0.0), 0.0)
    rng = np.random.default_rng(0)
    for sequence in rng.integers(2, 2**32, size=5000):
        buffer.push(Arrival(framed(int(sequence)), 0.0), 0.0)
    for sequence in range(2, 5000):
        buffer.push(Arrival(framed(sequence), 0.0), 0.0)
    assert buffer.buffered <= DEFAULT_MAX_AHEAD + 1


def test_buffer_bytes_bounded():
    buffer = JitterBuffer(chunk_samples, window_ms=500, virtual_clock=True, max_buffered_bytes=10_000)
    for sequence in range(1, 200):
        buffer.push(Arrival(framed(sequence, 1000), 0.0), 0.0)
    assert buffer.buffered_bytes <= 10_000
    assert buffer.stats.rejected["buffer_full"] > 0


def test_resync_after_long_outage():
    buffer = new_buffer(max_ahead=8)
    out = buffer.push(Arrival(framed(0), 0.0), 0.0)
    for sequence in range(100, 100 + RESYNC_RUN + 2):
        out += buffer.push(Arrival(framed(sequence), 1.0), 0.0)
    assert [r.sequence for r in out] == list(range(0, 100 + RESYNC_RUN + 2))
    assert sum(isinstance(r, Gap) for r in out) == 99


def test_counts_match_fault_record():
    config = FaultConfig(loss=0.1, ber=5e-4, truncate=0.02, duplicate=0.05, reorder=0.05, reorder_depth=2, seed=21)
    model = FaultModel(config)
    arrivals = []
    for sequence in range(500):
        model.push(framed(sequence, 150), sequence * 0.1)
        arrivals += model.pop_due(sequence * 0.1)
    arrivals += model.flush()

    # The window (500 ms) is longer than any hold-back (2 packets of 100 ms), so nothing is late.
    buffer = new_buffer()
    out = feed(buffer, arrivals + [(StreamEnd(500, 500 * CHUNK), arrivals[-1][1])])
    record = model.record
    stats = buffer.stats
    assert [r.sequence for r in out] == list(range(500))
    assert stats.lost == len(record.dropped)
    assert stats.corrupt == len(record.damaged)
    assert stats.duplicated == len(record.duplicated)
    assert stats.reordered == len(record.reordered)
    assert stats.late == 0
    assert stats.received == 500 - len(record.dropped) - len(record.damaged)
    assert {r.sequence for r in out if isinstance(r, Packet)} == set(range(500)) - set(record.dropped) - record.damaged


async def test_stage_real_clock_gives_up_without_more_input():
    stats = LinkStats(sample_rate=1000)
    buffer = JitterBuffer(chunk_samples, window_ms=100, stats=stats)
    out = []
    send_in, receive_in = anyio.create_memory_object_stream(10)
    send_out, receive_out = anyio.create_memory_object_stream(10)

    async with anyio.create_task_group() as group:
        group.start_soon(buffer.run, receive_in, send_out)
        await send_in.send(framed(0))
        await send_in.send(framed(2))
        out.append(await receive_out.receive())
        start = anyio.current_time()
        out.append(await receive_out.receive())
        waited = anyio.current_time() - start
        out.append(await receive_out.receive())
        await send_in.aclose()
        async for record in receive_out:
            out.append(record)

    assert describe(out) == [(0, "packet"), (1, "lost"), (2, "packet")]
    assert 0.05 <= waited <= 1.0
