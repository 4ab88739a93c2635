"""Throughput of the transports on loopback, and whether a receiver keeps up with a live stream.

Part 1 (link only, no model) measures chunks per second through the UDP sender (link framing
and `sendto`) and through the UDP receiver (datagram decoding, reassembly, jitter buffer). The
chunk sizes are those of a 24 kHz stream at 6 kbps (about 800 bytes per 1 s chunk) and of a
48 kHz stream at 24 kbps (about 3 kB, sent in 3 fragments).

Part 2 (full receiver): a 48 kHz stream at 6 kbps is sent unpaced over UDP loopback to the
receiver of `ecdc-stream receive` (jitter buffer, acv=4 decoding with the exact LM, EnCodec
decoder, concealment). The receiver's speed in seconds of audio per second must exceed 1 for it
to keep up with a live stream; the margin is that speed minus 1. Unpaced chunks queue up, so
the receiver decodes them in batches, which a live stream does not allow.

Part 3 (live pace): the same chunks are sent one per chunk duration, as a live sender emits
them, so the receiver decodes each chunk alone as it arrives. It keeps up when the last chunk
is written about one chunk's decoding time after it was sent, however long the stream. The
receiver's CPU time per second of audio is its load: the margin is 1 / load.

    python benchmarks/bench_transport.py                 # both parts; part 2 needs weights
    python benchmarks/bench_transport.py --link-only
    python benchmarks/bench_transport.py --weights DIR   # published or random checkpoints

Without --weights and ECDC_STREAM_WEIGHTS, part 2 writes seeded random checkpoints to a
temporary folder (the speed does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from ecdc_stream.io.transport import MAX_FRAGMENT_BYTES, LinkDecoder, LinkFramer, parse_url
from ecdc_stream.io.udp import UdpReceiver, UdpSender
from ecdc_stream.pipeline.core import run_stages
from ecdc_stream.pipeline.jitter import JitterBuffer
from ecdc_stream.pipeline.records import Packet
from ecdc_stream.pipeline.report import LinkStats

RECORDING_48K = Path(__file__).resolve().parents[2] / "shared" / "audio" / "test_48k.wav"
METADATA = {"model": "benchmark"}


def framed(sequence: int, size: int) -> Packet:
    payload = np.random.default_rng(sequence).bytes(size)
    return Packet(sequence, struct.pack("!II", len(payload), zlib.crc32(payload)) + payload)


def list_source(items: list[Any]):
    async def source(receive, send):
        async with receive, send:
            for item in items:
                await send.send(item)

    return source


async def discard(receive, send):
    async with receive, send:
        async for _ in receive:
            pass


async def sender_throughput(count: int, size: int) -> float:
    """Return the chunks per second that link framing and `sendto` sustain for `size`-byte chunks.

    The datagrams go to a bound socket that is never read, so the kernel drops what overflows.
    """
    packets = [framed(i, size) for i in range(count)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        framer = LinkFramer(1, METADATA, lambda: (count, count), header_every=16, max_fragment_bytes=MAX_FRAGMENT_BYTES)
        start = time.perf_counter()
        await run_stages(list_source(packets), framer, UdpSender(parse_url(f"udp://127.0.0.1:{port}")))
        return count / (time.perf_counter() - start)


async def receiver_throughput(count: int, size: int) -> tuple[float, int]:
    """Return (chunks per second, chunks received) of the UDP receiver and jitter buffer.

    The datagrams wait in the receiver's socket buffer before it starts, so the time is the
    receiver's own work.
    """
    framer = LinkFramer(1, METADATA, lambda: (count, count), header_every=16, max_fragment_bytes=MAX_FRAGMENT_BYTES)
    messages = [m for i in range(count) for m in framer.frame(framed(i, size))] + framer.finish()
    receiver = UdpReceiver(parse_url("udp://127.0.0.1:0"), LinkDecoder(), idle_timeout_s=0.5, linger_s=0.0)
    port = await receiver.bind()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for message in messages:
            raw.sendto(message, ("127.0.0.1", port))

    stats = LinkStats(sample_rate=1)
    buffer = JitterBuffer(lambda s, t: 1, window_ms=200, stats=stats)
    start = time.perf_counter()
    await run_stages(receiver, buffer, discard)
    return stats.received / (time.perf_counter() - start), stats.received


def run_link_part() -> None:
    print("link only, UDP on 127.0.0.1:")
    print(f"{'chunk bytes':>12} {'sender chunks/s':>16} {'receiver chunks/s':>18} {'received':>9}")
    for size in (800, 3000):
        # The receiver's batch must fit its 4 MiB socket buffer (the kernel counts about
        # twice the payload per datagram).
        count = 1500 if size < 1000 else 400
        sent = anyio.run(sender_throughput, 10 * count, size)
        received, got = anyio.run(receiver_throughput, count, size)
        print(f"{size:12d} {sent:16.0f} {received:18.0f} {got:5d}/{count}")
    print("a live stream of 1 s chunks needs 1 chunk/s; of 0.25 s chunks, 4 chunks/s")


def encode_recording(weights: str) -> tuple[Any, Any, list[Packet]]:
    """Encode the 48 kHz recording at 6 kbps in 1 s chunks; return (model, encoding, framed chunks)."""
    from ecdc_stream.commands.send import file_source_stage, load_sender_model, prepare_encoding

    model = load_sender_model("48khz", weights)
    source, total = file_source_stage(str(RECORDING_48K), model)
    encoding = prepare_encoding(model, 6.0, 1.0, weights=weights, total_samples=total)
    packets: list[Packet] = []

    async def collect(receive, send):
        async with receive, send:
            async for packet in receive:
                packets.append(packet)

    pipeline = encoding.stages(source)
    pipeline.append("collect", collect)
    anyio.run(pipeline.run)
    return model, encoding, packets


async def send_to_receiver(encoding: Any, packets: list[Packet], source: Any, weights: str, output: Path | None = None) -> tuple[float, Any]:
    """Send the chunks that `source` emits over UDP loopback to the receiver of `ecdc-stream receive`.

    Returns the anyio time when the receiver finished, and its result.
    """
    from ecdc_stream.commands.receive import receive_stream
    from ecdc_stream.commands.send import ChunkCounter

    link = LinkDecoder()
    receiver = UdpReceiver(parse_url("udp://127.0.0.1:0"), link, idle_timeout_s=5.0, linger_s=0.0)
    port = await receiver.bind()
    framer = LinkFramer(7, encoding.params.to_metadata(), ChunkCounter().totals, 4, MAX_FRAGMENT_BYTES)
    framer.end_totals = lambda: (len(packets), encoding.counter.samples)
    sender = UdpSender(parse_url(f"udp://127.0.0.1:{port}"))
    result = None

    async def run_receiver():
        nonlocal result
        result = await receive_stream(receiver, link, output=output, weights=weights, window_ms=200)

    async with anyio.create_task_group() as group:
        group.start_soon(run_receiver)
        await run_stages(source, framer, sender)
    return anyio.current_time(), result


def run_full_part(weights: str, model: Any, encoding: Any, packets: list[Packet]) -> None:
    # Only the receiver is timed. The jitter buffer starts once the model is loaded; until then
    # the chunks wait in the socket.
    seconds = encoding.counter.samples / model.sample_rate
    finished_at, result = anyio.run(send_to_receiver, encoding, packets, list_source(packets), weights)
    elapsed = finished_at - result.stats.started_at
    speed = seconds / elapsed
    print(f"\nfull receiver, 48 kHz model at 6 kbps, {seconds:.1f} s of audio in {len(packets)} chunks:")
    print(f"  {elapsed:.2f} s from the model being loaded to the last sample, {speed:.2f} s of audio per s")
    print(f"  received {result.stats.received}, lost {result.stats.lost}, corrupt {result.stats.corrupt}")
    print(f"  keeps up with a live stream: {'yes' if speed > 1 else 'NO'} (margin {speed - 1:+.2f})")

    # Where the time goes: the receiver's two compute stages, each alone.
    from ecdc_stream.pipeline.stages import ChunkDecoder

    coder = encoding.coder
    start = time.perf_counter()
    chunks = coder.decode_batch([p.data for p in packets])
    batch_seconds = time.perf_counter() - start
    start = time.perf_counter()
    coder.decode(packets[0].data)
    single_seconds = time.perf_counter() - start
    decoder = ChunkDecoder(model, encoding.params.chunk_frames)
    start = time.perf_counter()
    for chunk in chunks:
        decoder.push(chunk)
    decoder.finish()
    network_seconds = time.perf_counter() - start
    chunk_seconds = encoding.params.chunk_samples / model.sample_rate
    print("  where the time goes, per second of audio:")
    print(f"    acv=4 decoding, all chunks in one batch   {batch_seconds / seconds:6.2f} s")
    print(f"    acv=4 decoding, one chunk alone (live)    {single_seconds / chunk_seconds:6.2f} s")
    print(f"    EnCodec decoder network                   {network_seconds / seconds:6.2f} s")


def paced_source(packets: list[Packet], chunk_seconds: float, sent_at: list[tuple[float, float]]):
    """Return a stage that sends packet i at (i + 1) chunk durations after it starts.

    A live sender emits a chunk once its audio has been recorded. Each send appends
    (anyio time, process CPU time) to `sent_at`.
    """

    async def source(receive, send):
        async with receive, send:
            start = anyio.current_time()
            for index, packet in enumerate(packets):
                await anyio.sleep_until(start + (index + 1) * chunk_seconds)
                await send.send(packet)
                sent_at.append((anyio.current_time(), time.process_time()))

    return source


def run_live_part(weights: str, model: Any, encoding: Any, packets: list[Packet]) -> None:
    seconds = encoding.counter.samples / model.sample_rate
    chunk_seconds = encoding.params.chunk_samples / model.sample_rate
    sent_at: list[tuple[float, float]] = []
    source = paced_source(packets, chunk_seconds, sent_at)

    with tempfile.TemporaryDirectory() as folder:
        finished_at, result = anyio.run(send_to_receiver, encoding, packets, source, weights, Path(folder) / "received.wav")
    lag = finished_at - sent_at[-1][0]

    # The load is measured from the send of the chunk a third of the way in to the last one:
    # by then the model has loaded and the chunks that waited for it are decoded. The
    # sender's share of the CPU time (link framing and sendto) is well under 1 % of it.
    first = len(sent_at) // 3
    load = (sent_at[-1][1] - sent_at[first][1]) / (sent_at[-1][0] - sent_at[first][0])
    print(f"\nlive pace, 48 kHz model at 6 kbps, {seconds:.1f} s of audio in {len(packets)} chunks of {chunk_seconds:.2f} s:")
    print(f"  received {result.stats.received}, lost {result.stats.lost}, corrupt {result.stats.corrupt}")
    print(f"  last chunk written {lag:.2f} s after it was sent")
    verdict = f"keeps up with margin {1 / load:.1f}x" if load < 1 else "does NOT keep up"
    print(f"  receiver CPU time {load:.2f} s per s of audio, from chunk {first} on: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--link-only", action="store_true", help="skip the full receiver (no model needed)")
    parser.add_argument("--weights", default=os.environ.get("ECDC_STREAM_WEIGHTS"), help="folder of the checkpoint files")
    args = parser.parse_args()

    run_link_part()
    if args.link_only:
        return
    weights = args.weights
    if weights is None:
        from ecdc_stream.model.random_weights import write_random_checkpoints

        weights = tempfile.mkdtemp(prefix="ecdc_bench_weights_")
        print(f"\nwriting random checkpoints to {weights}")
        write_random_checkpoints(Path(weights), seed=0, audio_dir=RECORDING_48K.parent)
    encoded = encode_recording(weights)
    run_full_part(weights, *encoded)
    run_live_part(weights, *encoded)


if __name__ == "__main__":
    main()
