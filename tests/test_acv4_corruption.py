"""Damaged acv=4 files: a hit costs exactly the chunk it hits, and the rest decodes as before.

A 20 s stream of the golden tiny 24 kHz LM (1 s chunks, hashed codes). The clean decode is done
once. The damaged files are read through a coder that remembers what each distinct framed chunk
decoded to, so 200 trials take seconds. Framing, resynchronisation and gap filling run for
real in every trial, and a damaged chunk never reaches the cache because it fails its CRC.
"""

from __future__ import annotations

import dataclasses
import io
import random
import struct

import numpy as np
import pytest
import torch
from exact_support import hashed_codes

from ecdc_stream.container.acv4 import Acv4Writer, ChunkCoder, StreamParams, iter_framed_chunks, read_acv4, write_acv4
from ecdc_stream.container.header import read_header
from ecdc_stream.pipeline.records import CodeChunk, Gap

SECONDS = 20
TOTAL_SAMPLES = SECONDS * 24000 - 123


class CachingCoder(ChunkCoder):
    """A ChunkCoder that decodes each distinct framed chunk once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cache: dict[bytes, object] = {}
        self.decoded = 0

    def decode_batch(self, framed_chunks):
        missing = [data for data in dict.fromkeys(framed_chunks) if data not in self.cache]
        if missing:
            self.decoded += len(missing)
            for data, result in zip(missing, super().decode_batch(missing)):
                self.cache[data] = result
        return [self.cache[data] for data in framed_chunks]


@pytest.fixture(scope="module")
def clean(golden_dir):
    """The clean stream: (coder, file bytes, header size, chunk byte ranges, chunks)."""
    state = torch.load(golden_dir / "tiny_24khz" / "lm.pt", weights_only=True)
    params = StreamParams(
        model="tiny_24khz",
        sample_rate=24000,
        channels=1,
        num_codebooks=4,
        bandwidth=1.2,
        chunk_frames=75,
        chunk_samples=24000,
        frame_rate=75,
        total_samples=TOTAL_SAMPLES,
    )
    chunks = []
    for sequence in range(SECONDS):
        samples = min(24000, TOTAL_SAMPLES - sequence * 24000)
        chunks.append(CodeChunk(sequence, hashed_codes(4, -(-samples // 320), 16, salt=100 + sequence), samples))

    stream = io.BytesIO()
    write_acv4(stream, params, chunks, state)
    data = stream.getvalue()
    stream.seek(0)
    read_header(stream)
    header_size = stream.tell()

    ranges = []
    offset = header_size
    while offset < len(data):
        length = struct.unpack_from(">I", data, offset)[0]
        ranges.append((offset, offset + 8 + length))
        offset += 8 + length

    coder = CachingCoder(params, state)
    _, output = read_acv4(io.BytesIO(data), coder=coder)
    for chunk, decoded in zip(chunks, output):
        assert np.array_equal(decoded.codes, chunk.codes)
    return coder, data, header_size, ranges, chunks


def read(clean, data: bytes):
    coder = clean[0]
    return read_acv4(io.BytesIO(data), coder=coder)[1]


def check_output(output, chunks, lost: set[int], total: int = TOTAL_SAMPLES) -> None:
    assert sum(item.num_samples for item in output) == total
    assert [item.sequence for item in output] == list(range(len(output)))
    for item in output:
        if item.sequence in lost:
            assert isinstance(item, Gap), item.sequence
            assert item.num_samples == chunks[item.sequence].num_samples
        else:
            assert isinstance(item, CodeChunk), item.sequence
            assert np.array_equal(item.codes, chunks[item.sequence].codes), item.sequence


def chunk_at(ranges, offset: int) -> int:
    return next(index for index, (start, end) in enumerate(ranges) if start <= offset < end)


def test_single_byte_flips(clean):
    coder, data, header_size, ranges, chunks = clean
    generator = random.Random(1234)
    for _ in range(200):
        offset = generator.randrange(header_size, len(data))
        damaged = bytearray(data)
        damaged[offset] ^= generator.randrange(1, 256)
        check_output(read(clean, bytes(damaged)), chunks, {chunk_at(ranges, offset)})
    assert coder.decoded == len(chunks)


@pytest.mark.parametrize("length", [0, 1, 12, 200, 10_000, 0xFFFFFFFF], ids=lambda n: f"length-{n}")
@pytest.mark.parametrize("index", [0, 7, SECONDS - 1])
def test_corrupted_length_field(clean, index, length):
    _, data, _, ranges, chunks = clean
    start, _ = ranges[index]
    damaged = bytearray(data)
    damaged[start : start + 4] = struct.pack(">I", length)
    check_output(read(clean, bytes(damaged)), chunks, {index})


def test_length_field_off_by_one(clean):
    _, data, _, ranges, chunks = clean
    for index in (3, 11):
        start, end = ranges[index]
        for delta in (-1, 1):
            damaged = bytearray(data)
            damaged[start : start + 4] = struct.pack(">I", end - start - 8 + delta)
            check_output(read(clean, bytes(damaged)), chunks, {index})


def test_truncated_tail(clean):
    _, data, _, ranges, chunks = clean
    for cut in (ranges[-1][1] - 1, ranges[12][0] + 5, ranges[12][0] + 3, ranges[12][0], ranges[0][0] + 1):
        whole = [index for index, (_, end) in enumerate(ranges) if end <= cut]
        lost = set(range(len(chunks))) - set(whole)
        check_output(read(clean, data[:cut]), chunks, lost)


def test_truncated_tail_of_unknown_length(clean, golden_dir):
    # A recording cut off while its length was still unknown: the output ends at the last whole chunk.
    coder, _, _, _, chunks = clean
    state = torch.load(golden_dir / "tiny_24khz" / "lm.pt", weights_only=True)
    unknown = dataclasses.replace(coder.params, total_samples=None)
    stream = io.BytesIO()
    writer = Acv4Writer(stream, ChunkCoder(unknown, state))
    for chunk in chunks[:10]:
        writer.write_chunk(chunk)

    params, output = read_acv4(io.BytesIO(stream.getvalue()[:-7]), state)
    assert params.total_samples is None
    assert len(output) == 9
    for item in output:
        assert isinstance(item, CodeChunk)
        assert np.array_equal(item.codes, chunks[item.sequence].codes)


def test_repeated_chunk_is_dropped(clean):
    _, data, _, ranges, chunks = clean
    start, end = ranges[5]
    repeated = data[:end] + data[start:end] + data[end:]
    check_output(read(clean, repeated), chunks, set())


def test_removed_chunk_becomes_gap(clean):
    _, data, _, ranges, chunks = clean
    for index in (0, 9, SECONDS - 1):
        start, end = ranges[index]
        output = read(clean, data[:start] + data[end:])
        check_output(output, chunks, {index})
        assert output[index].reason == "lost"


def test_garbage_between_chunks(clean):
    _, data, _, ranges, chunks = clean
    start, _ = ranges[4]
    garbage = bytes(random.Random(5).randrange(256) for _ in range(300))
    check_output(read(clean, data[:start] + garbage + data[start:]), chunks, set())


def test_zeroed_region_spanning_chunks(clean):
    _, data, _, ranges, chunks = clean
    start, end = ranges[6][0] + 20, ranges[8][0] + 3
    damaged = data[:start] + bytes(end - start) + data[end:]
    output = read(clean, damaged)
    check_output(output, chunks, {6, 7, 8})
    assert {output[i].reason for i in (6, 7, 8)} == {"corrupt"}


def test_iter_framed_chunks_reports_damage(clean):
    coder, data, header_size, ranges, _ = clean
    damaged = bytearray(data[header_size:])
    damaged[ranges[2][0] - header_size + 9] ^= 0xFF
    items = list(iter_framed_chunks(io.BytesIO(bytes(damaged)), coder.params))
    regions = [item for item in items if not hasattr(item, "sequence")]
    assert len(regions) == 1
    assert regions[0].offset == ranges[2][0] - header_size
    assert regions[0].length == ranges[2][1] - ranges[2][0]
    assert [item.sequence for item in items if hasattr(item, "sequence")] == [s for s in range(SECONDS) if s != 2]
