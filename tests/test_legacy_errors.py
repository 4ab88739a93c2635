"""Original-format streams with bad headers or payloads, and bad segments given to the writer."""

from __future__ import annotations

import io
import json
import random
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from ecdc_stream.container.header import encode_header, read_header
from ecdc_stream.container.legacy import read_legacy, write_legacy
from ecdc_stream.errors import InvalidArgumentError, InvalidStreamError
from ecdc_stream.model import EncodecConfig, EncodecModel, build_lm
from ecdc_stream.model.lm import LMModel

TESTS = Path(__file__).resolve().parent


def golden_file(case: str, name: str) -> Path:
    """Return a golden file from tests/golden, or from ../shared/golden where it is not copied yet."""
    local = TESTS / "golden" / case / name
    if local.exists():
        return local
    return TESTS.parents[1] / "shared" / "golden" / case / name


@lru_cache(maxsize=None)
def golden_models(case: str) -> tuple[EncodecModel, LMModel]:
    config = EncodecConfig.from_dict(json.loads(golden_file(case, "config.json").read_text()), ignore_unknown=True)
    model = EncodecModel(config)
    model.load_state_dict(torch.load(golden_file(case, "model.pt"), weights_only=True))
    lm = build_lm(config)
    lm.load_state_dict(torch.load(golden_file(case, "lm.pt"), weights_only=True))
    return model.eval(), lm.eval()


class Unseekable(io.RawIOBase):
    """A pipe-like reader: no seeking, and each read returns at most 3 bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(min(3, len(buffer)))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def decode(data: bytes | io.RawIOBase, case: str, lm: bool = True) -> list:
    model, golden_lm = golden_models(case)
    fo = io.BytesIO(data) if isinstance(data, bytes) else data
    metadata = read_header(fo, source="test.ecdc")
    return read_legacy(fo, metadata, model, lm=golden_lm if lm else None)


def stream_error(data: bytes | io.RawIOBase, case: str = "tiny_24khz") -> str:
    """Decode `data`, expecting InvalidStreamError, and return its message."""
    with pytest.raises(InvalidStreamError) as caught:
        decode(data, case)
    message = str(caught.value)
    assert "\n" not in message
    return message


def with_metadata(case: str, stream: str, **changes: object) -> bytes:
    """Return the golden stream with header fields changed (None removes a field)."""
    data = golden_file(case, stream).read_bytes()
    fo = io.BytesIO(data)
    metadata = read_header(fo)
    payload = fo.read()
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    return encode_header(metadata) + payload


def header_length(data: bytes) -> int:
    return 9 + int.from_bytes(data[5:9], "big")


@pytest.mark.parametrize("case", ["tiny_24khz", "tiny_48khz"])
def test_raw_truncated_at_every_byte(case: str) -> None:
    data = golden_file(case, "raw.ecdc").read_bytes()

    for cut in range(header_length(data), len(data)):
        assert "truncated" in stream_error(data[:cut], case), f"cut at {cut}"


def test_raw_truncated_unseekable_input() -> None:
    data = golden_file("tiny_48khz", "raw.ecdc").read_bytes()

    for cut in [header_length(data), header_length(data) + 2, len(data) // 2, len(data) - 1]:
        assert "truncated" in stream_error(Unseekable(data[:cut]), "tiny_48khz"), f"cut at {cut}"


def test_raw_unseekable_input_decodes() -> None:
    data = golden_file("tiny_48khz", "raw.ecdc").read_bytes()
    expected = torch.load(golden_file("tiny_48khz", "frames.pt"), weights_only=True)

    segments = decode(Unseekable(data), "tiny_48khz")

    assert [torch.equal(codes, expected_codes) for (codes, _), (expected_codes, _) in zip(segments, expected)] == [True] * 3


def test_lm_truncated_raises() -> None:
    data = golden_file("tiny_24khz", "lm.ecdc").read_bytes()
    start = header_length(data)

    for cut in [start, start + 1, start + 3, (start + len(data)) // 2, len(data) - 1]:
        message = stream_error(data[:cut])
        assert "truncated" in message or "corrupt" in message, f"cut at {cut}: {message}"


def test_lm_corrupt_bytes_raise_or_decode() -> None:
    data = golden_file("tiny_24khz", "lm.ecdc").read_bytes()
    start = header_length(data)
    rng = random.Random(1234)

    for _ in range(3):
        damaged = bytearray(data)
        position = rng.randrange(start, len(data))
        damaged[position] ^= 1 << rng.randrange(8)
        try:
            segments = decode(bytes(damaged), "tiny_24khz")
        except InvalidStreamError as error:
            assert "\n" not in str(error)
        else:
            codes = segments[0][0]
            assert codes.shape == (1, 4, 150)
            assert int(codes.min()) >= 0
            assert int(codes.max()) < 16


@pytest.mark.parametrize("stream, length", [("raw.ecdc", 2**62), ("raw.ecdc", 10**9), ("lm.ecdc", 2**62)])
def test_audio_length_beyond_file_size(stream: str, length: int) -> None:
    message = stream_error(with_metadata("tiny_24khz", stream, al=length))

    assert "truncated" in message


@pytest.mark.parametrize("stream", ["raw.ecdc", "lm.ecdc"])
def test_segment_count_beyond_file_size(stream: str) -> None:
    # 10**18 samples would be 2 * 10**13 segments at 48 kHz: rejected before any list is built.
    message = stream_error(with_metadata("tiny_48khz", stream, al=10**18), "tiny_48khz")

    assert "segments" in message
    assert "truncated" in message


@pytest.mark.parametrize("stream", ["raw.ecdc", "lm.ecdc"])
def test_huge_length_unseekable_input(stream: str) -> None:
    data = with_metadata("tiny_48khz", stream, al=10**18)

    assert "truncated" in stream_error(Unseekable(data), "tiny_48khz")


@pytest.mark.parametrize("length", [0, -1])
def test_audio_length_not_positive(length: int) -> None:
    assert "'al'" in stream_error(with_metadata("tiny_24khz", "raw.ecdc", al=length))


@pytest.mark.parametrize("count", [0, -3, 5, 1000])
def test_codebook_count_outside_model(count: int) -> None:
    message = stream_error(with_metadata("tiny_24khz", "raw.ecdc", nc=count))

    assert "'nc'" in message
    assert "1 to 4" in message


@pytest.mark.parametrize(
    "field, value",
    [("al", "48000"), ("al", 48000.0), ("al", True), ("nc", "4"), ("nc", False), ("lm", 1), ("lm", "false"), ("m", 7)],
)
def test_header_field_wrong_type(field: str, value: object) -> None:
    message = stream_error(with_metadata("tiny_24khz", "raw.ecdc", **{field: value}))

    assert f"'{field}'" in message


@pytest.mark.parametrize("field", ["m", "al", "nc", "lm"])
def test_header_field_missing(field: str) -> None:
    assert f"lacks the field '{field}'" in stream_error(with_metadata("tiny_24khz", "raw.ecdc", **{field: None}))


def test_model_mismatch_raises() -> None:
    data = golden_file("tiny_24khz", "raw.ecdc").read_bytes()

    with pytest.raises(InvalidArgumentError, match="tiny_24khz"):
        decode(data, "tiny_48khz")


def test_lm_stream_without_lm_raises() -> None:
    data = golden_file("tiny_24khz", "lm.ecdc").read_bytes()

    with pytest.raises(InvalidArgumentError, match="load_lm"):
        decode(data, "tiny_24khz", lm=False)


@pytest.mark.parametrize("scale", [b"\x7f\xc0\x00\x00", b"\x7f\x80\x00\x00", b"\xbf\x80\x00\x00", b"\x00\x00\x00\x00"])
def test_invalid_scale_raises(scale: bytes) -> None:
    data = bytearray(golden_file("tiny_48khz", "raw.ecdc").read_bytes())
    start = header_length(bytes(data))
    data[start : start + 4] = scale

    assert "scale" in stream_error(bytes(data), "tiny_48khz")


def test_trailing_bytes_are_ignored() -> None:
    data = golden_file("tiny_24khz", "raw.ecdc").read_bytes()
    expected = torch.load(golden_file("tiny_24khz", "frames.pt"), weights_only=True)

    segments = decode(data + b"extra", "tiny_24khz")

    assert torch.equal(segments[0][0], expected[0][0])


def write_error(segments: list, length: int, case: str = "tiny_48khz") -> str:
    """Write `segments`, expecting InvalidArgumentError and no output; return the message."""
    model, _ = golden_models(case)
    buffer = io.BytesIO()
    with pytest.raises(InvalidArgumentError) as caught:
        write_legacy(buffer, model, segments, length)
    assert buffer.getvalue() == b""
    return str(caught.value)


def golden_segments(case: str = "tiny_48khz") -> list:
    return torch.load(golden_file(case, "frames.pt"), weights_only=True)


def test_write_wrong_segment_count() -> None:
    assert "3 segment(s)" in write_error(golden_segments()[:2], 120000)


def test_write_wrong_frame_count() -> None:
    segments = golden_segments()
    codes, scale = segments[-1]
    segments[-1] = (codes[:, :, :-1], scale)

    assert "expects" in write_error(segments, 120000)


def test_write_code_out_of_range() -> None:
    segments = golden_segments()
    codes, scale = segments[0]
    codes = codes.clone()
    codes[0, 0, 0] = 16
    segments[0] = (codes, scale)

    assert "[0, 16)" in write_error(segments, 120000)


def test_write_missing_scale() -> None:
    segments = golden_segments()
    segments[1] = (segments[1][0], None)

    assert "needs a scale" in write_error(segments, 120000)


def test_write_batch_of_two() -> None:
    segments = [(codes.repeat(2, 1, 1), scale) for codes, scale in golden_segments()]

    assert "[1, codebooks, frames]" in write_error(segments, 120000)


def test_write_inconsistent_codebooks() -> None:
    segments = golden_segments()
    segments[2] = (segments[2][0][:, :2], segments[2][1])

    assert "same count" in write_error(segments, 120000)


@pytest.mark.parametrize("length", [0, -5, 1.5, True])
def test_write_invalid_audio_length(length: object) -> None:
    assert "audio length" in write_error(golden_segments(), length)  # type: ignore[arg-type]
