"""The .ecdc header: `b"ECDC"`, a version byte, a u32 big-endian JSON length, JSON metadata.

The layout and the JSON spelling (`json.dumps` with its default separators) are those of the
original EnCodec package, so that a raw stream written here is byte-identical to its own.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

from ecdc_stream.errors import InvalidStreamError

MAGIC = b"ECDC"
VERSION = 0
_PREFIX = struct.Struct("!4sBI")

# A header is a few hundred bytes. The cap keeps a corrupt length field from making the
# reader allocate gigabytes before it notices that the file is shorter.
MAX_METADATA_BYTES = 1 << 20


def encode_header(metadata: dict[str, Any]) -> bytes:
    """Serialise `metadata` into the header bytes that start a stream."""
    payload = json.dumps(metadata).encode("utf-8")
    if len(payload) > MAX_METADATA_BYTES:
        raise ValueError(f"header metadata is {len(payload)} bytes, more than {MAX_METADATA_BYTES}")
    return _PREFIX.pack(MAGIC, VERSION, len(payload)) + payload


def write_header(fo: BinaryIO, metadata: dict[str, Any]) -> None:
    """Write the header for `metadata` to `fo`."""
    fo.write(encode_header(metadata))


def _read_up_to(fo: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, or fewer only at the end of the stream.

    One `read` of a raw file or pipe may return less than requested, so this reads until done.
    """
    data = fo.read(size)
    while len(data) < size:
        more = fo.read(size - len(data))
        if not more:
            break
        data += more
    return data


def read_header(fo: BinaryIO, source: str = "input") -> dict[str, Any]:
    """Read and validate a header from `fo`, leaving `fo` at the first byte after it.

    Raises InvalidStreamError, naming `source`, for a wrong magic or version, a truncated
    header, a length beyond the file or the cap, or JSON that is malformed or not an object.
    """
    prefix = _read_up_to(fo, _PREFIX.size)
    if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
        raise InvalidStreamError(f"{source} is not an .ecdc stream: it does not start with 'ECDC'")
    if len(prefix) < _PREFIX.size:
        raise InvalidStreamError(f"{source} is truncated inside the .ecdc header ({len(prefix)} bytes)")

    _, version, length = _PREFIX.unpack(prefix)
    if version != VERSION:
        raise InvalidStreamError(f"{source} has .ecdc header version {version}; only version {VERSION} exists")
    if length > MAX_METADATA_BYTES:
        raise InvalidStreamError(
            f"{source} declares a {length}-byte header, more than the {MAX_METADATA_BYTES}-byte limit: the file is corrupt"
        )

    payload = _read_up_to(fo, length)
    if len(payload) < length:
        raise InvalidStreamError(
            f"{source} declares a {length}-byte header but only {len(payload)} bytes follow: the file is truncated or corrupt"
        )

    try:
        metadata = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidStreamError(f"{source} has a malformed JSON header: {exc}") from None
    if not isinstance(metadata, dict):
        raise InvalidStreamError(f"{source} has a JSON header that is a {type(metadata).__name__}, not an object")
    return metadata


def require_field(metadata: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str = "input") -> Any:
    """Return `metadata[key]`, raising InvalidStreamError if it is missing or of the wrong type.

    Booleans are rejected where an integer is expected, because JSON `true` is not a count.
    """
    if key not in metadata:
        raise InvalidStreamError(f"{source} header lacks the field {key!r}")
    value = metadata[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    wrong_bool = isinstance(value, bool) and bool not in kinds
    if wrong_bool or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise InvalidStreamError(f"{source} header field {key!r} is {value!r}, expected {names}")
    return value
