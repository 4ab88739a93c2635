"""TCP and pipes on loopback: byte streams that resynchronise after damage."""

from __future__ import annotations

import io
import struct
import zlib

import anyio
import numpy as np
import pytest

from ecdc_stream.errors import EcdcError
from ecdc_stream.faults import FaultConfig, FaultInjector
from ecdc_stream.io.tcp import TcpReceiver, TcpSender
from ecdc_stream.io.transport import LinkDecoder, LinkFramer, StreamEnd, parse_url, pipe_sink, pipe_source
from ecdc_stream.pipeline.core import run_stages
from ecdc_stream.pipeline.jitter import JitterBuffer
from ecdc_stream.pipeline.records import Gap, Packet
from ecdc_stream.pipeline.report import LinkStats

METADATA = {"model": "tiny_24khz", "acv": 4, "sample_rate": 24000}
CHUNK = 1000


def framed(sequence: int, size: int = 600) -> Packet:
    payload = np.random.default_rng(sequence).bytes(size)
    return Packet(sequence, struct.pack("!II", len(payload), zlib.crc32(payload)) + payload)


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


def stream_framer(count: int) -> LinkFramer:
    return LinkFramer(99, METADATA, lambda: (count, count * CHUNK), header_every=4, max_fragment_bytes=None)


async def tcp_loop(sent: list[Packet], wire_faults: FaultConfig | None = None, receiver_delay_s: float = 0.0):
    receiver = TcpReceiver(parse_url("tcp://127.0.0.1:0"), idle_timeout_s=2.0)
    port = await receiver.bind()
    stats = LinkStats(sample_rate=1000)
    collector = Collector()
    stages = [source_of(sent), stream_framer(len(sent))]
    if wire_faults is not None:
        stages.append(FaultInjector(wire_faults))
    stages.append(TcpSender(parse_url(f"tcp://127.0.0.1:{port}"), connect_timeout_s=5))
    injector = stages[2] if wire_faults is not None else None

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(run_stages, receiver, JitterBuffer(chunk_samples, 300, stats), collector)
            await run_stages(*stages)
    return collector.items, stats, receiver, injector


async def test_tcp_delivers_every_chunk():
    sent = [framed(i) for i in range(30)]
    out, stats, receiver, _ = await tcp_loop(sent)
    assert out == sent
    assert stats.end_received
    assert receiver.connections == 1
    assert not receiver.decoder.rejected


async def test_tcp_resyncs_after_wire_damage():
    sent = [framed(i) for i in range(40)]
    # Bit errors and truncation hit whole link messages, prefixes and length fields included.
    faults = FaultConfig(ber=5e-5, truncate=0.05, seed=5)
    out, stats, receiver, injector = await tcp_loop(sent, faults)

    # Which chunk each message carried: the framer's output, header messages as None.
    framer = stream_framer(40)
    carried = [p.sequence if m[5] == 2 else None for p in sent for m in framer.frame(p)]
    hit = {carried[i] for i in injector.record.damaged if i < len(carried)} - {None}
    assert hit, "the seed should damage some chunk messages"

    assert [r.sequence for r in out] == list(range(40))
    intact = {r.sequence for r in out if isinstance(r, Packet)}
    # Damage costs exactly the messages it hit: every other chunk arrives intact.
    assert intact == set(range(40)) - hit
    assert all(r == sent[r.sequence] for r in out if isinstance(r, Packet))
    assert stats.lost + stats.corrupt == len(hit)


async def test_tcp_sender_waits_for_late_receiver():
    receiver = TcpReceiver(parse_url("tcp://127.0.0.1:0"), idle_timeout_s=2.0)
    port = await receiver.bind()
    # Close the listener and reopen it on the same port after the sender started trying.
    await receiver.aclose()
    sent = [framed(i) for i in range(5)]
    collector = Collector()

    async def start_receiver_later():
        await anyio.sleep(0.4)
        late = TcpReceiver(parse_url(f"tcp://127.0.0.1:{port}"), idle_timeout_s=2.0)
        await run_stages(late, collector)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(start_receiver_later)
            sender = TcpSender(parse_url(f"tcp://127.0.0.1:{port}"), connect_timeout_s=5)
            await run_stages(source_of(sent), stream_framer(5), sender)
    assert [e for e in collector.items if isinstance(e, Packet)] == sent


async def test_tcp_connect_fails_with_clear_error():
    receiver = TcpReceiver(parse_url("tcp://127.0.0.1:0"))
    port = await receiver.bind()
    await receiver.aclose()
    sender = TcpSender(parse_url(f"tcp://127.0.0.1:{port}"), connect_timeout_s=0.3)
    with pytest.raises(EcdcError, match="cannot connect"):
        await run_stages(source_of([framed(0)]), stream_framer(1), sender)


async def test_tcp_reconnecting_sender_continues_stream():
    receiver = TcpReceiver(parse_url("tcp://127.0.0.1:0"), idle_timeout_s=2.0)
    port = await receiver.bind()
    collector = Collector()
    url = parse_url(f"tcp://127.0.0.1:{port}")
    framer = stream_framer(10)
    first = [m for p in [framed(i) for i in range(5)] for m in framer.frame(p)]
    second = [m for p in [framed(i) for i in range(5, 10)] for m in framer.frame(p)] + framer.finish()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            group.start_soon(run_stages, receiver, collector)
            await run_stages(source_of(first), TcpSender(url))
            await run_stages(source_of(second), TcpSender(url))
    assert [e.sequence for e in collector.items if isinstance(e, Packet)] == list(range(10))
    assert receiver.connections == 2


async def test_pipe_round_trip_with_damage():
    sent = [framed(i) for i in range(20)]
    buffer = io.BytesIO()
    await run_stages(source_of(sent), stream_framer(20), lambda r, s: pipe_sink(r, s, buffer))
    data = bytearray(buffer.getvalue())
    data[len(data) // 2] ^= 0xFF
    data[18] ^= 0x01  # inside the first header's length field

    stats = LinkStats(sample_rate=1000)
    collector = Collector()
    decoder = LinkDecoder()
    source = io.BufferedReader(io.BytesIO(bytes(data)))
    await run_stages(
        lambda r, s: pipe_source(r, s, source, decoder, read_bytes=333),
        JitterBuffer(chunk_samples, 300, stats),
        collector,
    )
    assert [r.sequence for r in collector.items] == list(range(20))
    assert sum(isinstance(r, Gap) for r in collector.items) == 1
    assert decoder.header is not None
    assert stats.end_received
    assert StreamEnd(20, 20 * CHUNK) == decoder.end
