"""The .ecdc header: layout, round trip, and the errors for bad input."""

from __future__ import annotations

import io
import json
import struct

import pytest

from ecdc_stream.container.header import (
    MAX_METADATA_BYTES,
    encode_header,
    read_header,
    require_field,
    write_header,
)
from ecdc_stream.errors import EcdcError, InvalidStreamError


def header_bytes(payload: bytes, magic: bytes = b"ECDC", version: int = 0, length: int | None = None) -> bytes:
    return struct.pack("!4sBI", magic, version, len(payload) if length is None else length) + payload


def read_error(data: bytes) -> str:
    with pytest.raises(InvalidStreamError) as caught:
        read_header(io.BytesIO(data), source="test.ecdc")
    message = str(caught.value)
    assert "\n" not in message
    assert "test.ecdc" in message
    return message


def test_header_layout_matches_reference() -> None:
    metadata = {"m": "encodec_24khz", "al": 48000, "nc": 8, "lm": False}

    data = encode_header(metadata)

    payload = json.dumps(metadata).encode("utf-8")
    assert data == b"ECDC" + bytes([0]) + len(payload).to_bytes(4, "big") + payload
    assert payload == b'{"m": "encodec_24khz", "al": 48000, "nc": 8, "lm": false}'


def test_header_round_trip_leaves_position_after_header() -> None:
    metadata = {"m": "encodec_48khz", "al": 1, "nc": 16, "lm": True, "extra": [1, 2.5, None]}
    buffer = io.BytesIO()
    write_header(buffer, metadata)
    buffer.write(b"payload")
    buffer.seek(0)

    assert read_header(buffer) == metadata
    assert buffer.read() == b"payload"


@pytest.mark.parametrize("data", [b"", b"EC", b"RIFF\x24\x00\x00\x00WAVE", b"ecdc\x00\x00\x00\x00\x02{}"])
def test_header_not_ecdc(data: bytes) -> None:
    assert "not an .ecdc stream" in read_error(data)


@pytest.mark.parametrize("data", [b"ECDC", b"ECDC\x00", b"ECDC\x00\x00\x00\x00"])
def test_header_truncated_prefix(data: bytes) -> None:
    assert "truncated inside the .ecdc header" in read_error(data)


def test_header_unknown_version() -> None:
    assert "version 1" in read_error(header_bytes(b"{}", version=1))


def test_header_length_beyond_file() -> None:
    message = read_error(header_bytes(b'{"m": "x"}', length=500))

    assert "500-byte header" in message
    assert "10 bytes follow" in message


def test_header_length_beyond_limit() -> None:
    message = read_error(header_bytes(b"{}", length=0xFFFFFFFF))

    assert str(MAX_METADATA_BYTES) in message


@pytest.mark.parametrize("payload", [b"{", b'{"m": }', b"", b"\xff\xfe{}", b"{'m': 1}"])
def test_header_malformed_json(payload: bytes) -> None:
    assert "malformed JSON header" in read_error(header_bytes(payload))


@pytest.mark.parametrize("payload, kind", [(b"[1, 2]", "list"), (b"42", "int"), (b'"ECDC"', "str"), (b"null", "NoneType")])
def test_header_json_not_an_object(payload: bytes, kind: str) -> None:
    assert f"is a {kind}, not an object" in read_error(header_bytes(payload))


def test_encode_header_rejects_oversized_metadata() -> None:
    with pytest.raises(ValueError, match="more than"):
        encode_header({"x": "a" * MAX_METADATA_BYTES})


def test_require_field_returns_value() -> None:
    metadata = {"al": 48000, "m": "encodec_24khz", "lm": True}

    assert require_field(metadata, "al", int) == 48000
    assert require_field(metadata, "m", str) == "encodec_24khz"
    assert require_field(metadata, "lm", bool) is True
    assert require_field(metadata, "al", (int, float)) == 48000


def test_require_field_missing() -> None:
    with pytest.raises(InvalidStreamError, match="lacks the field 'nc'"):
        require_field({"al": 1}, "nc", int, source="test.ecdc")


@pytest.mark.parametrize(
    "value, kind",
    [("48000", int), (48000.0, int), (True, int), (None, int), (1, bool), ("true", bool), (7, str), ([], str)],
)
def test_require_field_wrong_type(value: object, kind: type) -> None:
    with pytest.raises(InvalidStreamError) as caught:
        require_field({"field": value}, "field", kind, source="test.ecdc")

    message = str(caught.value)
    assert "'field'" in message
    assert f"expected {kind.__name__}" in message
    assert "\n" not in message


def test_header_errors_are_ecdc_errors() -> None:
    with pytest.raises(EcdcError):
        read_header(io.BytesIO(b"nope"))
