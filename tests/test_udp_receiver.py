"""The whole receiver (jitter buffer, acv=4 decoding, decoder, concealment) under hostile datagrams."""

from __future__ import annotations

import socket
import struct
import zlib

import anyio
import numpy as np
import pytest
import soundfile as sf

from ecdc_stream.commands.receive import receive_stream
from ecdc_stream.commands.send import file_source_stage, prepare_encoding
from ecdc_stream.errors import EcdcError
from ecdc_stream.io.transport import (
    MAX_FRAGMENT_BYTES,
    LinkDecoder,
    LinkFramer,
    chunk_messages,
    end_message,
    header_message,
    parse_url,
)
from ecdc_stream.io.udp import UdpReceiver
from ecdc_stream.model import load_model
from ecdc_stream.pipeline.records import Packet

STREAM_ID = 31337


@pytest.fixture(scope="module")
def stream(tiny_models, audio_dir):
    """The packets and header of the 20 s recording encoded with the tiny 24 kHz model."""
    model = load_model("tiny_24khz")
    source, total = file_source_stage(str(audio_dir / "test_24k.wav"), model)
    encoding = prepare_encoding(model, model.target_bandwidths[0], 1.0, total_samples=total, keep_chunks=True)
    packets: list[Packet] = []

    async def collect(receive, send):
        async with receive, send:
            async for packet in receive:
                packets.append(packet)

    pipeline = encoding.stages(source)
    pipeline.append("collect", collect)
    anyio.run(pipeline.run)
    return encoding, packets, total


def forged_chunk(sequence: int, size: int = 200) -> bytes:
    """A link message with a correct CRC whose acv=4 chunk is valid framing around junk."""
    payload = struct.pack(">IHIB", sequence, 75, 24000, 0) + np.random.default_rng(sequence).bytes(size)
    framed = struct.pack(">II", len(payload), zlib.crc32(payload)) + payload
    return chunk_messages(STREAM_ID, Packet(sequence, framed))[0]


def hostile(rng: np.random.Generator, genuine: list[bytes], metadata: dict, delivered: int) -> list[bytes]:
    other_model = dict(metadata, model="encodec_48khz")
    huge = bytearray(genuine[-1])
    huge[18:22] = struct.pack("!I", 0xFFFFFFFF)
    wrong_magic = b"ECDC" + genuine[-1][4:]
    datagrams = [
        rng.bytes(int(rng.integers(1, 1500))),
        bytes(huge),
        wrong_magic,
        header_message(STREAM_ID, other_model),
        header_message(STREAM_ID + 1, other_model),
        forged_chunk(int(rng.integers(10**6, 2**32))),
        end_message(STREAM_ID, 3, 3 * 24000),
    ]
    if delivered > 0:
        replayed = int(rng.integers(0, delivered))
        datagrams.append(chunk_messages(STREAM_ID, Packet(replayed, b"x"))[0])
        datagrams.append(forged_chunk(replayed))
    return datagrams


async def test_receiver_survives_hostile_datagrams(stream):
    encoding, packets, total = stream
    metadata = encoding.params.to_metadata()
    framer = LinkFramer(STREAM_ID, metadata, lambda: (len(packets), total), 4, MAX_FRAGMENT_BYTES)
    link = LinkDecoder()
    receiver = UdpReceiver(parse_url("udp://127.0.0.1:0"), link, idle_timeout_s=3)
    port = await receiver.bind()
    rng = np.random.default_rng(0)
    result = None

    async def run_receiver():
        nonlocal result
        result = await receive_stream(receiver, link, keep_audio=True, keep_chunks=True, window_ms=300)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(run_receiver)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                for index, packet in enumerate(packets):
                    for message in framer.frame(packet):
                        raw.sendto(message, ("127.0.0.1", port))
                    # Hostile datagrams after the chunk went out, so they cannot take its place.
                    for datagram in hostile(rng, [m for m in framer.frame(packet)], metadata, index):
                        raw.sendto(datagram, ("127.0.0.1", port))
                    await anyio.sleep(0.01)
                for message in framer.finish():
                    raw.sendto(message, ("127.0.0.1", port))

    stats = result.stats
    assert result.audio.shape[1] == total
    assert stats.received == len(packets)
    assert stats.lost == stats.corrupt == 0
    for sequence, chunk in result.chunks.items():
        np.testing.assert_array_equal(chunk.codes, encoding.counter.kept[sequence].codes)

    rejected = stats.rejected
    for reason in ("bad_magic", "bad_prefix_crc", "header_mismatch", "foreign_stream", "end_mismatch"):
        assert rejected[reason] > 0, reason
    # The header states the length, so far-future chunks lie beyond the end.
    assert rejected["beyond_end"] >= len(packets)
    # Replays of delivered chunks, genuine-looking or forged, count as duplicates.
    assert stats.duplicated >= 2 * (len(packets) - 1)


async def test_stream_without_header_is_an_error(tiny_models):
    link = LinkDecoder()
    receiver = UdpReceiver(parse_url("udp://127.0.0.1:0"), link, idle_timeout_s=0.3)
    port = await receiver.bind()

    # The datagrams wait in the socket's buffer until the receiver reads them.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for sequence in range(5):
            raw.sendto(forged_chunk(sequence), ("127.0.0.1", port))
            raw.sendto(b"noise", ("127.0.0.1", port))

    with pytest.raises(EcdcError, match="before its header"):
        with anyio.fail_after(20):
            await receive_stream(receiver, link)


def test_output_file_length_exact_with_lost_end(stream, tmp_path):
    # Every end message lost: the header's total still gives the receiver the exact length.
    encoding, packets, total = stream
    metadata = encoding.params.to_metadata()
    framer = LinkFramer(STREAM_ID, metadata, lambda: (len(packets), total), 4, MAX_FRAGMENT_BYTES)
    messages = [m for p in packets[:-2] for m in framer.frame(p)]
    output = tmp_path / "out.wav"

    async def main():
        link = LinkDecoder()
        receiver = UdpReceiver(parse_url("udp://127.0.0.1:0"), link, idle_timeout_s=0.5)
        port = await receiver.bind()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            for message in messages:
                raw.sendto(message, ("127.0.0.1", port))
        with anyio.fail_after(60):
            await receive_stream(receiver, link, output=output)

    anyio.run(main)
    assert sf.info(str(output)).frames == total
