"""UDP on loopback: real sockets on 127.0.0.1 with ephemeral ports, faults, hostile datagrams."""

from __future__ import annotations

import socket
import struct
import tracemalloc
import zlib

import anyio
import numpy as np
import pytest

from ecdc_stream.faults import FaultConfig, FaultInjector
from ecdc_stream.io.transport import (
    MAX_BODY_BYTES,
    MAX_FRAGMENT_BYTES,
    MAX_PENDING_REASSEMBLIES,
    LinkFramer,
    StreamHeader,
    _message,
    chunk_messages,
    header_message,
    parse_url,
)
from ecdc_stream.io.udp import UdpReceiver, UdpSender
from ecdc_stream.pipeline.core import run_stages
from ecdc_stream.pipeline.jitter import DEFAULT_MAX_AHEAD, JitterBuffer
from ecdc_stream.pipeline.records import Gap, Packet
from ecdc_stream.pipeline.report import LinkStats

METADATA = {"model": "tiny_24khz", "acv": 4, "sample_rate": 24000}
CHUNK = 1000
STREAM_ID = 4242


def framed(sequence: int, size: int) -> Packet:
    payload = np.random.default_rng(sequence).bytes(size)
    return Packet(sequence, struct.pack("!II", len(payload), zlib.crc32(payload)) + payload)


def packets(count: int = 40) -> list[Packet]:
    # Every fifth chunk is larger than a datagram and travels in fragments.
    return [framed(i, 3000 if i % 5 == 0 else 400) for i in range(count)]


def chunk_samples(sequence: int, total: int | None) -> int:
    return CHUNK


def source_of(items: list):
    async def source(receive, send):
        async with receive, send:
            for item in items:
                await send.send(item)

    return source


class Collector:
    def __init__(self):
        self.items: list = []

    async def run(self, receive, send):
        async with receive, send:
            async for item in receive:
                self.items.append(item)


async def open_receiver(**kwargs) -> tuple[UdpReceiver, int]:
    receiver = UdpReceiver(parse_url("udp://127.0.0.1:0"), idle_timeout_s=kwargs.pop("idle_timeout_s", 3.0), **kwargs)
    port = await receiver.bind()
    assert port > 0
    return receiver, port


async def loop(items: list, faults: FaultConfig | None = None, count: int | None = None):
    """Send `items` through an optional injector over UDP loopback into a jitter buffer."""
    receiver, port = await open_receiver()
    stats = LinkStats(sample_rate=1000)
    buffer = JitterBuffer(chunk_samples, window_ms=300, stats=stats)
    collector = Collector()
    total = len(items) if count is None else count
    framer = LinkFramer(STREAM_ID, METADATA, lambda: (total, total * CHUNK))
    sender = UdpSender(parse_url(f"udp://127.0.0.1:{port}"))
    stages = [source_of(items)] + ([FaultInjector(faults)] if faults else []) + [framer, sender]
    injector = stages[1] if faults else None

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(run_stages, receiver, buffer, collector)
            await run_stages(*stages)
    return collector.items, stats, receiver, injector


async def test_loopback_delivers_every_chunk():
    sent = packets()
    out, stats, receiver, _ = await loop(sent)
    assert out == sent
    assert stats.received == 40
    assert stats.end_received
    assert not receiver.decoder.rejected
    assert receiver.datagrams > 40


async def test_loopback_with_faults_counts_match():
    sent = packets(60)
    config = FaultConfig(loss=0.1, ber=2e-4, duplicate=0.05, reorder=0.05, reorder_depth=2, seed=3)
    out, stats, _, injector = await loop(sent, config)
    record = injector.record

    assert [r.sequence for r in out] == list(range(60))
    assert stats.lost == len(record.dropped)
    assert stats.corrupt == len(record.damaged)
    assert stats.duplicated == len(record.duplicated)
    assert stats.reordered == len(record.reordered)
    assert stats.late == 0
    for item in out:
        if isinstance(item, Packet):
            assert item == sent[item.sequence]
        else:
            assert item.sequence in set(record.dropped) | record.damaged


async def test_receiver_that_missed_first_header_still_decodes():
    receiver, port = await open_receiver()
    framer = LinkFramer(STREAM_ID, METADATA, lambda: (12, 12 * CHUNK), header_every=4)
    messages = [m for p in packets(12) for m in framer.frame(p)] + framer.finish()
    collector = Collector()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(run_stages, receiver, collector)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                # The first datagram (the header) is lost.
                for message in messages[1:]:
                    raw.sendto(message, ("127.0.0.1", port))
    headers = [e for e in collector.items if isinstance(e, StreamHeader)]
    assert headers == [StreamHeader(STREAM_ID, METADATA)]
    assert receiver.decoder.header is not None
    assert {e.sequence for e in collector.items if isinstance(e, Packet)} == set(range(12))


async def test_lost_end_marker_ends_by_idle_timeout():
    receiver, port = await open_receiver(idle_timeout_s=0.3)
    framer = LinkFramer(STREAM_ID, METADATA, lambda: (5, 5 * CHUNK))
    messages = [m for p in packets(5) for m in framer.frame(p)]
    stats = LinkStats(sample_rate=1000)
    collector = Collector()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(run_stages, receiver, JitterBuffer(chunk_samples, 300, stats), collector)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                for message in messages:
                    raw.sendto(message, ("127.0.0.1", port))
    assert receiver.timed_out
    assert not stats.end_received
    assert [r.sequence for r in collector.items] == list(range(5))


def hostile_datagrams(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Return (kind, datagram) pairs of every hostile kind, fresh random ones each call."""
    huge_prefix = bytearray(chunk_messages(STREAM_ID, framed(1, 100))[0])
    huge_prefix[18:22] = struct.pack("!I", 0xFFFFFFF0)
    far = int(rng.integers(10**6, 2**32))
    # A fragment of a chunk that claims the most fragments allowed, so that it would start a
    # reassembly of up to 1 MiB.
    fragment = _message(2, STREAM_ID, int(rng.integers(0, 2**32)), bytes(MAX_FRAGMENT_BYTES), 0, MAX_BODY_BYTES // MAX_FRAGMENT_BYTES)
    return [
        ("random", rng.bytes(int(rng.integers(0, 1400)))),
        ("huge_length", bytes(huge_prefix)),
        ("wrong_magic", b"RIFF" + chunk_messages(STREAM_ID, framed(1, 100))[0][4:]),
        ("replayed", chunk_messages(STREAM_ID, framed(1, 100))[0]),
        ("far_future", chunk_messages(STREAM_ID, framed(far, 100))[0]),
        ("other_model", header_message(STREAM_ID, dict(METADATA, model="encodec_48khz"))),
        ("other_stream_header", header_message(STREAM_ID + 1, dict(METADATA, model="encodec_48khz"))),
        ("fragment_flood", fragment),
        ("bad_end", _message(3, STREAM_ID, 7, b'{"chunks": 7, "total_samples": "many"}')),
    ]


async def test_hostile_datagrams_are_counted_and_dropped():
    receiver, port = await open_receiver(idle_timeout_s=1.0)
    stats = LinkStats(sample_rate=1000)
    buffer = JitterBuffer(chunk_samples, 300, stats)
    collector = Collector()
    framer = LinkFramer(STREAM_ID, METADATA, lambda: (10, 10 * CHUNK))
    good = [m for p in packets(10) for m in framer.frame(p)]
    rng = np.random.default_rng(0)
    kinds_sent = 0

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(run_stages, receiver, buffer, collector)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                for index, message in enumerate(good):
                    raw.sendto(message, ("127.0.0.1", port))
                    for _, datagram in hostile_datagrams(rng):
                        raw.sendto(datagram, ("127.0.0.1", port))
                        kinds_sent += 1
                    if index % 5 == 0:
                        await anyio.sleep(0.01)
                for message in framer.finish():
                    raw.sendto(message, ("127.0.0.1", port))

    # The genuine stream comes through whole, in order.
    assert [r.sequence for r in collector.items] == list(range(10))
    assert all(isinstance(r, Packet) for r in collector.items)

    rejected = receiver.decoder.rejected
    assert rejected["bad_magic"] >= len(good) * 2 - 5  # random bytes may rarely be too short
    assert rejected["bad_prefix_crc"] == len(good)
    assert rejected["header_mismatch"] == len(good)
    assert rejected["foreign_stream"] == len(good)
    assert rejected["bad_end"] == len(good)
    assert stats.rejected["out_of_range"] == len(good)
    # Replayed chunk 1: once it went out, every copy is a duplicate.
    assert stats.duplicated >= len(good) - 2
    assert receiver.decoder.pending_reassemblies <= MAX_PENDING_REASSEMBLIES


async def test_receiver_memory_bounded_under_flood():
    receiver, port = await open_receiver(idle_timeout_s=1.0)
    buffer = JitterBuffer(chunk_samples, 300, LinkStats(sample_rate=1000))
    collector = Collector()
    rng = np.random.default_rng(1)
    framer = LinkFramer(STREAM_ID, METADATA, lambda: (1, CHUNK))

    def flood(count: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.sendto(framer.frame(framed(0, 100))[0], ("127.0.0.1", port))
            for _ in range(count):
                for _, datagram in hostile_datagrams(rng):
                    raw.sendto(datagram, ("127.0.0.1", port))
                # Chunks that start a reassembly or wait in the jitter buffer, all different.
                sequence = int(rng.integers(1, DEFAULT_MAX_AHEAD))
                raw.sendto(chunk_messages(STREAM_ID, framed(sequence, 2000))[0], ("127.0.0.1", port))
                raw.sendto(chunk_messages(STREAM_ID, framed(sequence, 500))[0], ("127.0.0.1", port))

    async def pace(count: int) -> None:
        for _ in range(count):
            await anyio.to_thread.run_sync(flood, 50)
            await anyio.sleep(0.005)

    tracemalloc.start()
    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(run_stages, receiver, buffer, collector)
                await pace(3)
                _, first_peak = tracemalloc.get_traced_memory()
                await pace(15)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert receiver.datagrams > 5000
    assert receiver.decoder.pending_reassemblies <= MAX_PENDING_REASSEMBLIES
    assert buffer.buffered <= DEFAULT_MAX_AHEAD + 1
    # Five times the traffic leaves the peak where it was after the first burst (plus slack).
    assert peak < first_peak + (8 << 20)
    assert peak < 64 << 20


@pytest.mark.parametrize("bad", ["udp://127.0.0.1:0x", "udp://256.1.1.1:5000"])
async def test_bad_bind_address_raises(bad):
    from ecdc_stream.errors import EcdcError

    with pytest.raises(EcdcError):
        receiver = UdpReceiver(parse_url(bad))
        await receiver.bind()
