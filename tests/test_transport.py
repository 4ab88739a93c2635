"""The link format: URLs, messages, UDP fragments, and byte-stream resynchronisation."""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.io.transport import (
    MAX_DATAGRAM_BYTES,
    MAX_PENDING_REASSEMBLIES,
    PREFIX_BYTES,
    DamagedChunk,
    LinkDecoder,
    LinkFramer,
    StreamDecoder,
    StreamEnd,
    StreamHeader,
    TransportUrl,
    chunk_messages,
    end_message,
    header_message,
    iter_messages,
    parse_url,
)
from ecdc_stream.pipeline.records import Packet

METADATA = {"model": "tiny_24khz", "acv": 4, "sample_rate": 24000}


def framed(sequence: int, size: int = 300) -> Packet:
    payload = np.random.default_rng(sequence).bytes(size)
    return Packet(sequence, struct.pack("!II", len(payload), zlib.crc32(payload)) + payload)


def byte_stream(count: int = 30, header_every: int = 4) -> tuple[bytes, list[Packet]]:
    packets = [framed(i, 100 + 37 * i) for i in range(count)]
    framer = LinkFramer(77, METADATA, lambda: (count, count * 1000), header_every, max_fragment_bytes=None)
    data = b"".join(m for p in packets for m in framer.frame(p)) + b"".join(framer.finish())
    return data, packets


@pytest.mark.parametrize(
    "text, expected",
    [
        ("udp://127.0.0.1:5004", TransportUrl("udp", "127.0.0.1", 5004)),
        ("tcp://localhost:0", TransportUrl("tcp", "localhost", 0)),
        ("udp://[::1]:9000", TransportUrl("udp", "::1", 9000)),
        ("-", TransportUrl("pipe")),
    ],
)
def test_parse_url(text, expected):
    assert parse_url(text) == expected
    if expected.scheme != "pipe":
        assert str(parse_url(text)) == text


@pytest.mark.parametrize(
    "text", ["http://x:1", "udp://127.0.0.1", "udp://:5000", "udp://h:70000", "udp://h:port", "udp://[::1:5", "file.ecdc"]
)
def test_parse_url_rejects(text):
    with pytest.raises(InvalidArgumentError, match="transport"):
        parse_url(text)


def test_messages_round_trip():
    decoder = LinkDecoder()
    events = decoder.feed_datagram(header_message(5, METADATA))
    events += decoder.feed_datagram(chunk_messages(5, framed(0))[0])
    events += decoder.feed_datagram(end_message(5, 1, 24000))
    assert events == [StreamHeader(5, METADATA), framed(0), StreamEnd(1, 24000)]
    assert not decoder.rejected


def test_large_chunk_fragments_fit_datagrams():
    packet = framed(3, 5000)
    messages = chunk_messages(9, packet)
    assert len(messages) == 5
    assert all(len(m) <= MAX_DATAGRAM_BYTES for m in messages)

    decoder = LinkDecoder()
    shuffled = messages[:]
    random.Random(0).shuffle(shuffled)
    events = [e for m in shuffled for e in decoder.feed_datagram(m)]
    assert events == [packet]
    assert decoder.pending_reassemblies == 0


def test_missing_fragment_drops_chunk():
    decoder = LinkDecoder()
    messages = chunk_messages(9, framed(3, 5000))
    events = [e for m in messages[:2] + messages[3:] for e in decoder.feed_datagram(m)]
    assert events == []
    assert decoder.pending_reassemblies == 1


def test_damaged_fragment_marks_chunk():
    decoder = LinkDecoder()
    messages = [bytearray(m) for m in chunk_messages(9, framed(3, 5000))]
    messages[2][PREFIX_BYTES + 10] ^= 0x40
    events = [e for m in messages for e in decoder.feed_datagram(bytes(m))]
    assert events == [DamagedChunk(3)]


def test_reassembly_memory_is_bounded():
    decoder = LinkDecoder()
    for sequence in range(1000):
        decoder.feed_datagram(chunk_messages(9, framed(sequence, 2500))[0])
    assert decoder.pending_reassemblies == MAX_PENDING_REASSEMBLIES
    assert decoder.rejected["reassembly_evicted"] == 1000 - MAX_PENDING_REASSEMBLIES


def test_stream_decoder_any_split():
    data, packets = byte_stream()
    stream = StreamDecoder(LinkDecoder())
    events = []
    position = 0
    rng = random.Random(1)
    while position < len(data):
        step = rng.randint(1, 700)
        events += stream.feed(data[position : position + step])
        position += step
    assert [e for e in events if isinstance(e, Packet)] == packets
    assert events[-1] == StreamEnd(30, 30000)
    assert stream.buffered_bytes == 0


def decode_damaged(data: bytes) -> tuple[list, LinkDecoder]:
    decoder = LinkDecoder(stream_id=77)
    stream = StreamDecoder(decoder)
    events = stream.feed(data) + stream.finish()
    return events, decoder


def message_spans(data: bytes) -> list[tuple[int, int, int]]:
    """Return `(start, end, sequence)` of every chunk message in an undamaged stream."""
    spans = []
    position = 0
    for message in iter_messages(data):
        kind = message[5]
        sequence = struct.unpack_from("!I", message, 14)[0]
        if kind == 2:
            spans.append((position, position + len(message), sequence))
        position += len(message)
    return spans


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_stream_resyncs_after_any_byte_flip(position_seed, xor):
    data, packets = byte_stream()
    position = position_seed % len(data)
    damaged = bytearray(data)
    damaged[position] ^= xor

    events, _ = decode_damaged(bytes(damaged))
    received = {e.sequence: e for e in events if isinstance(e, Packet)}
    for start, end, sequence in message_spans(data):
        if not start <= position < end:
            assert received.get(sequence) == packets[sequence], f"chunk {sequence} lost after a flip at byte {position}"
    assert StreamEnd(30, 30000) in events


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=1, max_value=200), st.binary(max_size=50))
def test_stream_resyncs_after_deleted_or_inserted_bytes(position_seed, deleted, inserted):
    data, packets = byte_stream()
    position = position_seed % len(data)
    damaged = data[:position] + inserted + data[position + deleted :]

    events, _ = decode_damaged(damaged)
    received = {e.sequence: e for e in events if isinstance(e, Packet)}
    for start, end, sequence in message_spans(data):
        if end <= position or start >= position + deleted:
            assert received.get(sequence) == packets[sequence]


def test_stream_length_field_corruption():
    data, packets = byte_stream()
    start, _, sequence = message_spans(data)[5]
    damaged = bytearray(data)
    # The body length field of the prefix (bytes 18-21) claims 16 MiB.
    damaged[start + 18 : start + 22] = struct.pack("!I", 1 << 24)
    events, decoder = decode_damaged(bytes(damaged))
    received = {e.sequence for e in events if isinstance(e, Packet)}
    assert received == set(range(30)) - {sequence}
    assert decoder.rejected["bad_prefix_crc"] == 1


def test_stream_truncated_tail():
    data, packets = byte_stream()
    events, decoder = decode_damaged(data[: len(data) - 40])
    received = [e for e in events if isinstance(e, Packet)]
    assert received == packets[: len(received)]
    assert len(received) >= 29
    assert decoder.rejected["truncated_tail"] == 1


def test_header_repeats_for_late_receiver():
    data, packets = byte_stream(header_every=4)
    # A receiver that starts in the middle of the stream still meets a header.
    spans = message_spans(data)
    events, decoder = decode_damaged(data[spans[10][0] :])
    assert decoder.header is not None
    assert [e.sequence for e in events if isinstance(e, Packet)] == list(range(10, 30))


@pytest.mark.parametrize(
    "name, datagram, reason",
    [
        ("random bytes", bytes(np.random.default_rng(0).bytes(300)), "bad_magic"),
        ("empty", b"", "too_short"),
        ("wrong magic", b"XXXX" + header_message(5, METADATA)[4:], "bad_magic"),
        ("length mismatch", chunk_messages(5, framed(0))[0] + b"extra", "bad_length"),
        ("cut short", chunk_messages(5, framed(0))[0][:-3], "bad_length"),
    ],
)
def test_decoder_rejects_malformed(name, datagram, reason):
    decoder = LinkDecoder()
    assert decoder.feed_datagram(datagram) == []
    assert decoder.rejected[reason] == 1


def test_decoder_rejects_foreign_and_mismatched_headers():
    decoder = LinkDecoder()
    decoder.feed_datagram(header_message(5, METADATA))
    other_model = dict(METADATA, model="encodec_48khz")
    assert decoder.feed_datagram(header_message(6, other_model)) == []
    assert decoder.feed_datagram(header_message(5, other_model)) == []
    assert decoder.feed_datagram(chunk_messages(6, framed(1))[0]) == []
    assert decoder.rejected == {"foreign_stream": 2, "header_mismatch": 1}
    assert decoder.header == StreamHeader(5, METADATA)


def test_decoder_rejects_unexpected_model():
    decoder = LinkDecoder(expected_model="encodec_24khz")
    assert decoder.feed_datagram(header_message(5, METADATA)) == []
    assert decoder.rejected["foreign_model"] == 1
    assert decoder.header is None


def test_end_message_checked_against_header():
    decoder = LinkDecoder()
    assert decoder.feed_datagram(end_message(5, 3, 3000)) == []
    assert decoder.rejected["end_before_header"] == 1

    header = dict(METADATA, total_samples=2500, chunk_samples=1000)
    decoder.feed_datagram(header_message(5, header))
    assert decoder.feed_datagram(end_message(5, 2, 2000)) == []
    assert decoder.rejected["end_mismatch"] == 1
    assert decoder.feed_datagram(end_message(5, 2, 2500)) == []
    assert decoder.rejected["bad_end"] == 1
    assert decoder.feed_datagram(end_message(5, 3, 2500)) == [StreamEnd(3, 2500)]
