"""The acv=4 container: header fields, chunk framing, files, and segments to chunks and back."""

from __future__ import annotations

import dataclasses
import io
import json
import struct

import numpy as np
import pytest
import torch
from exact_support import hashed_codes

from ecdc_stream.container import acv4
from ecdc_stream.container.acv4 import (
    Acv4Writer,
    ChunkCoder,
    CorruptChunkError,
    StreamParams,
    chunk_duration,
    chunk_segments,
    read_acv4,
    segments_to_chunks,
    write_acv4,
)
from ecdc_stream.container.header import read_header
from ecdc_stream.errors import InvalidArgumentError, InvalidStreamError, UnsupportedStreamError
from ecdc_stream.model import load_model
from ecdc_stream.pipeline.records import CodeChunk, Gap


@pytest.fixture(scope="module")
def tiny_lm(golden_dir):
    return {case: torch.load(golden_dir / case / "lm.pt", weights_only=True) for case in ("tiny_24khz", "tiny_48khz")}


@pytest.fixture(scope="module")
def golden_frames(golden_dir):
    return {case: torch.load(golden_dir / case / "frames.pt", weights_only=True) for case in ("tiny_24khz", "tiny_48khz")}


def params_24k(**changes) -> StreamParams:
    values = dict(
        model="tiny_24khz",
        sample_rate=24000,
        channels=1,
        num_codebooks=4,
        bandwidth=1.2,
        chunk_frames=75,
        chunk_samples=24000,
        frame_rate=75,
        total_samples=48000,
    )
    values.update(changes)
    return StreamParams(**values)


def params_48k(**changes) -> StreamParams:
    values = dict(
        model="tiny_48khz",
        sample_rate=48000,
        channels=2,
        num_codebooks=4,
        bandwidth=2.4,
        chunk_frames=150,
        chunk_samples=47520,
        frame_rate=150,
        segment_length=48000,
        segment_stride=47520,
        total_samples=120000,
    )
    values.update(changes)
    return StreamParams(**values)


def test_params_round_trip_through_metadata():
    params = params_48k(tags={"title": "test"}, temperature=1.5, lm_fingerprint="ab" * 32)
    metadata = json.loads(json.dumps(params.to_metadata()))
    assert metadata["acv"] == 4
    assert metadata["numerics"] == 1
    assert list(metadata)[-1] == "total_samples"
    assert StreamParams.from_metadata(metadata) == params


def test_params_default_past_context():
    assert params_24k().past_context == 262
    assert params_48k().past_context == 525


def test_params_for_published_models(tiny_models):
    model_24k = load_model("tiny_24khz")
    params = StreamParams.for_model(model_24k, 1.2, chunk_seconds=0.5, total_samples=1000)
    assert (params.chunk_frames, params.chunk_samples, params.num_codebooks) == (38, 38 * 320, 4)
    assert params.segment_length is None

    model_48k = load_model("tiny_48khz")
    params = StreamParams.for_model(model_48k, 2.4, chunk_seconds=2.0)
    assert (params.chunk_frames, params.chunk_samples) == (300, 2 * 47520)
    assert params.segments_per_chunk == 2
    assert StreamParams.for_model(model_48k, 2.4, chunk_seconds=0.25).segments_per_chunk == 1


def test_missing_numerics_is_invalid():
    metadata = params_24k().to_metadata()
    del metadata["numerics"]
    with pytest.raises(InvalidStreamError, match="numerics"):
        StreamParams.from_metadata(metadata)


@pytest.mark.parametrize("numerics", [2, 0, "1", None, True])
def test_unknown_numerics_is_unsupported(numerics):
    metadata = params_24k().to_metadata()
    metadata["numerics"] = numerics
    with pytest.raises(UnsupportedStreamError, match="numerics"):
        StreamParams.from_metadata(metadata)


def test_other_acv_is_unsupported():
    metadata = params_24k().to_metadata()
    metadata["acv"] = 5
    with pytest.raises(UnsupportedStreamError, match="acv 5"):
        StreamParams.from_metadata(metadata)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("chunk_frames", "75"),
        ("chunk_frames", True),
        ("chunk_frames", 0),
        ("chunk_samples", 24001),
        ("count_precision", 40),
        ("min_range", 0),
        ("temperature", 0.0),
        ("segment_length", 48000),
        ("tags", {"title": 3}),
        ("total_samples", -1),
    ],
)
def test_bad_header_field_is_invalid(field, value):
    metadata = params_24k().to_metadata()
    metadata[field] = value
    with pytest.raises(InvalidStreamError):
        StreamParams.from_metadata(metadata)


def test_missing_header_field_is_invalid():
    metadata = params_24k().to_metadata()
    del metadata["chunk_frames"]
    with pytest.raises(InvalidStreamError, match="chunk_frames"):
        StreamParams.from_metadata(metadata)


def test_chunk_duration():
    params = params_24k(total_samples=50000)
    assert [chunk_duration(params, s) for s in range(3)] == [24000, 24000, 2000]
    with pytest.raises(InvalidArgumentError):
        chunk_duration(params, 3)
    assert chunk_duration(params_24k(total_samples=None), 1000) == 24000


def test_file_round_trip_24k(tiny_lm, golden_frames):
    params = params_24k()
    chunks = segments_to_chunks(params, golden_frames["tiny_24khz"], 48000)
    assert [chunk.num_frames for chunk in chunks] == [75, 75]

    stream = io.BytesIO()
    written = write_acv4(stream, params, chunks, tiny_lm["tiny_24khz"])
    stream.seek(0)
    read_params, output = read_acv4(stream, tiny_lm["tiny_24khz"])

    assert read_params == written
    assert len(output) == 2
    for chunk, decoded in zip(chunks, output):
        assert isinstance(decoded, CodeChunk)
        assert np.array_equal(decoded.codes, chunk.codes)
        assert decoded.num_samples == chunk.num_samples


def test_file_round_trip_48k_segments(tiny_lm, golden_frames):
    params = params_48k()
    segments = golden_frames["tiny_48khz"]
    chunks = segments_to_chunks(params, segments, 120000)
    assert [len(chunk.scales) for chunk in chunks] == [1, 1, 1]

    stream = io.BytesIO()
    write_acv4(stream, params, chunks, tiny_lm["tiny_48khz"])
    stream.seek(0)
    _, output = read_acv4(stream, tiny_lm["tiny_48khz"])

    rebuilt = [segment for chunk in output for segment in chunk_segments(params, chunk)]
    assert len(rebuilt) == len(segments)
    for (codes, scale), (expected_codes, expected_scale) in zip(rebuilt, segments):
        assert torch.equal(codes, expected_codes)
        assert float(scale) == pytest.approx(float(expected_scale), rel=1e-6)


def test_segments_with_two_short_ends(tiny_lm):
    # 3 * 47520 + 1 samples: the third segment is cut to 47521 samples (149 frames, one short
    # of a full segment) and the fourth has 1 sample (1 frame). Both land in the last chunk.
    params = params_48k(chunk_frames=300, chunk_samples=2 * 47520, total_samples=3 * 47520 + 1)
    lengths = [48000, 48000, 47521, 1]
    segments = [
        (torch.from_numpy(hashed_codes(4, -(-length // 320), 16, salt=i)).unsqueeze(0), torch.tensor([[0.5 + i]]))
        for i, length in enumerate(lengths)
    ]
    chunks = segments_to_chunks(params, segments, params.total_samples)
    assert [chunk.num_samples for chunk in chunks] == [95040, 47521]
    assert [chunk.num_frames for chunk in chunks] == [300, 150]

    coder = ChunkCoder(params, tiny_lm["tiny_48khz"])
    decoded = [coder.decode(coder.encode(chunk)) for chunk in chunks]
    rebuilt = [segment for chunk in decoded for segment in chunk_segments(params, chunk)]
    assert [codes.shape[-1] for codes, _ in rebuilt] == [codes.shape[-1] for codes, _ in segments]
    for (codes, scale), (expected_codes, expected_scale) in zip(rebuilt, segments):
        assert torch.equal(codes, expected_codes)
        assert float(scale) == float(expected_scale)


def test_decode_batch_equals_single(tiny_lm):
    params = params_24k(total_samples=10 * 24000 - 100)
    coder = ChunkCoder(params, tiny_lm["tiny_24khz"])
    chunks = [CodeChunk(s, hashed_codes(4, 75, 16, salt=s), 24000) for s in range(9)]
    chunks.append(CodeChunk(9, hashed_codes(4, 75, 16, salt=9)[:, :75], 23900))
    framed = [coder.encode(chunk) for chunk in chunks]
    framed.insert(3, framed[3][:-1] + bytes([framed[3][-1] ^ 1]))

    batch = coder.decode_batch(framed)
    assert isinstance(batch[3], CorruptChunkError)
    good = [item for index, item in enumerate(batch) if index != 3]
    for chunk, decoded, data in zip(chunks, good, [f for i, f in enumerate(framed) if i != 3]):
        assert np.array_equal(decoded.codes, chunk.codes)
        assert np.array_equal(coder.decode(data).codes, chunk.codes)


def test_long_chunk_round_trip(tiny_lm):
    # 300 frames: the encoder builds its CDFs in two blocks of frames.
    params = params_24k(chunk_frames=300, chunk_samples=300 * 320)
    coder = ChunkCoder(params, tiny_lm["tiny_24khz"])
    chunk = CodeChunk(0, hashed_codes(4, 300, 16, salt=8), 300 * 320)
    assert acv4.ENCODE_BLOCK < 300
    assert np.array_equal(coder.decode(coder.encode(chunk)).codes, chunk.codes)


def test_corrupt_chunk_raises(tiny_lm):
    coder = ChunkCoder(params_24k(), tiny_lm["tiny_24khz"])
    framed = coder.encode(CodeChunk(0, hashed_codes(4, 75, 16, salt=1), 24000))
    damaged = bytearray(framed)
    damaged[20] ^= 0x10
    with pytest.raises(CorruptChunkError, match="CRC"):
        coder.decode(bytes(damaged))
    with pytest.raises(CorruptChunkError):
        coder.decode(framed[:-3])


def test_crc_valid_garbage_raises(tiny_lm):
    # A payload with a correct CRC but random coded bytes must fail cleanly or decode to some
    # codes. A chunk header that does not fit the stream must fail.
    coder = ChunkCoder(params_24k(), tiny_lm["tiny_24khz"])
    bad_frames = struct.pack(">IHIB", 0, 80, 24000, 0) + b"\x01" * 10
    with pytest.raises(CorruptChunkError, match="frames"):
        coder.decode(acv4.frame_payload(bad_frames))
    garbage = struct.pack(">IHIB", 0, 75, 24000, 0) + bytes(range(256)) * 2
    try:
        chunk = coder.decode(acv4.frame_payload(garbage))
    except CorruptChunkError:
        pass
    else:
        assert chunk.codes.shape == (4, 75)


@pytest.mark.parametrize(
    "chunk",
    [
        CodeChunk(0, np.zeros((3, 75), dtype=np.int64), 24000),
        CodeChunk(0, np.full((4, 75), 16), 24000),
        CodeChunk(0, np.zeros((4, 74), dtype=np.int64), 24000),
        CodeChunk(0, np.zeros((4, 76), dtype=np.int64), 24320),
        CodeChunk(0, np.zeros((4, 75), dtype=np.int64), 24000, (1.0,)),
        CodeChunk(-1, np.zeros((4, 75), dtype=np.int64), 24000),
        CodeChunk(0, np.zeros((4, 75)), 24000),
    ],
    ids=["codebooks", "code-range", "frames", "too-long", "scales", "sequence", "float-codes"],
)
def test_bad_chunk_is_rejected(tiny_lm, chunk):
    coder = ChunkCoder(params_24k(), tiny_lm["tiny_24khz"])
    with pytest.raises(InvalidArgumentError):
        coder.encode(chunk)


def test_more_codebooks_than_lm_is_rejected(tiny_lm):
    with pytest.raises(InvalidArgumentError, match="5 codebooks"):
        ChunkCoder(params_24k(num_codebooks=5), tiny_lm["tiny_24khz"])


def test_other_lm_fingerprint_is_rejected(tiny_lm):
    params = params_24k(lm_fingerprint="0" * 64)
    with pytest.raises(UnsupportedStreamError, match="another LM checkpoint"):
        ChunkCoder(params, tiny_lm["tiny_24khz"])


def test_writer_fills_unknown_length(tiny_lm):
    params = params_24k(total_samples=None)
    coder = ChunkCoder(params, tiny_lm["tiny_24khz"])
    stream = io.BytesIO()
    writer = Acv4Writer(stream, coder)
    header_size = stream.tell()
    chunks = [CodeChunk(0, hashed_codes(4, 75, 16, salt=0), 24000), CodeChunk(1, hashed_codes(4, 4, 16, salt=1), 1000)]

    writer.write_chunk(chunks[0])
    stream.seek(0)
    assert read_header(stream)["total_samples"] is None
    stream.seek(0, io.SEEK_END)

    writer.write_chunk(chunks[1])
    writer.close()
    assert stream.tell() > header_size
    stream.seek(0)
    metadata = read_header(stream)
    assert metadata["total_samples"] == 25000
    assert stream.tell() == header_size

    stream.seek(0)
    params_read, output = read_acv4(stream, tiny_lm["tiny_24khz"])
    assert params_read.total_samples == 25000
    assert [item.num_samples for item in output] == [24000, 1000]


def test_writer_takes_length_and_tags(tiny_lm):
    coder = ChunkCoder(params_24k(total_samples=None), tiny_lm["tiny_24khz"])
    stream = io.BytesIO()
    writer = Acv4Writer(stream, coder, params=params_24k(total_samples=24000, tags={"title": "x"}))
    writer.write_chunk(CodeChunk(0, hashed_codes(4, 75, 16, salt=0), 24000))
    stream.seek(0)
    metadata = read_header(stream)
    assert metadata["total_samples"] == 24000
    assert metadata["tags"] == {"title": "x"}
    assert metadata["lm_fingerprint"] == coder.params.lm_fingerprint
    with pytest.raises(InvalidArgumentError):
        Acv4Writer(io.BytesIO(), coder, params=params_24k(num_codebooks=3))


class PipeLike(io.RawIOBase):
    """A write-only stream that cannot seek, like a pipe."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.data += data
        return len(data)


def test_unseekable_writer_leaves_length_null(tiny_lm):
    params = params_24k(total_samples=None)
    pipe = PipeLike()
    writer = Acv4Writer(pipe, ChunkCoder(params, tiny_lm["tiny_24khz"]))
    writer.write_chunk(CodeChunk(0, hashed_codes(4, 75, 16, salt=0), 24000))
    writer.close()

    _, output = read_acv4(io.BytesIO(bytes(pipe.data)), tiny_lm["tiny_24khz"])
    assert len(output) == 1
    assert isinstance(output[0], CodeChunk)


def test_read_with_wrong_coder_is_rejected(tiny_lm, golden_frames):
    stream = io.BytesIO()
    params = params_24k()
    write_acv4(stream, params, segments_to_chunks(params, golden_frames["tiny_24khz"], 48000), tiny_lm["tiny_24khz"])
    stream.seek(0)
    other = ChunkCoder(dataclasses.replace(params, chunk_frames=50, chunk_samples=16000), tiny_lm["tiny_24khz"])
    with pytest.raises(InvalidArgumentError):
        read_acv4(stream, coder=other)


def test_read_original_stream_is_unsupported(golden_dir):
    with open(golden_dir / "tiny_24khz" / "lm.ecdc", "rb") as stream:
        with pytest.raises(UnsupportedStreamError, match="acv"):
            read_acv4(stream, {})


def test_max_payload_bounds_real_chunks(tiny_lm):
    params = params_24k()
    coder = ChunkCoder(params, tiny_lm["tiny_24khz"])
    worst = np.zeros((4, 75), dtype=np.int64)
    framed = coder.encode(CodeChunk(0, worst, 24000))
    assert len(framed) - 8 <= params.max_payload_size
    assert params.max_payload_size < 4096
