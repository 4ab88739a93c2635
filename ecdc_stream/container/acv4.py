"""The acv=4 stream: an .ecdc header, then CRC-framed chunks coded with the exact LM.

Layout after the header (`ecdc_stream.container.header`, JSON with `"acv": 4`):

    chunk  = [u32 BE payload length][u32 BE CRC-32 of the payload][payload]
    payload = [u32 BE sequence][u16 BE frames][u32 BE audio samples]
              [u8 segment count][f32 BE scale] * segment count
              [range-coded codes]

Each chunk is independently decodable, because the exact LM and the range coder start afresh
in every chunk. The codes are coded frame by frame, codebook by codebook, each under the CDF
that the exact LM gives from the codes before it in the chunk. A chunk that fails its CRC or its
decoding costs exactly its own duration. A reader finds the next intact chunk by scanning for a
plausible length whose CRC matches.

For a model without segments (24 kHz) a chunk is `chunk_frames` frames. For a model with
segments (48 kHz: 1 s segments placed `segment_stride` samples apart) a chunk is a whole number
of segments, each with its scale; in a chunk of n segments, segment j < n - 1 has the frames of
min(segment_length, audio samples - j * segment_stride) samples, and the last has the rest.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import torch

from ecdc_stream.container.header import MAGIC, VERSION, encode_header, read_header
from ecdc_stream.entropy import cdf as cdf_builder
from ecdc_stream.entropy.exact_lm import NUMERICS_VERSION, SUPPORTED_NUMERICS, ExactLM
from ecdc_stream.entropy.range_coder import RangeCoderError, RangeDecoder, RangeEncoder
from ecdc_stream.errors import InvalidArgumentError, InvalidStreamError, UnsupportedStreamError
from ecdc_stream.pipeline.records import CodeChunk, Gap

logger = logging.getLogger(__name__)

ACV = 4
DEFAULT_COUNT_PRECISION = 24
DEFAULT_MIN_RANGE = 2
DEFAULT_CHUNK_SECONDS = 1.0

_FRAME_HEADER = struct.Struct(">II")  # payload length, CRC-32
_PAYLOAD_HEADER = struct.Struct(">IHIB")  # sequence, frames, audio samples, segment count
_SCALE = struct.Struct(">f")
MAX_CHUNK_FRAMES = (1 << 16) - 1
# Sequence numbers are u32.
MAX_CHUNKS = 1 << 32
MAX_SEGMENTS_PER_CHUNK = 255

# A header whose total_samples is null gets this many trailing spaces, so that a seekable writer
# can fill in up to 20 digits on close without moving the chunks.
TOTAL_SAMPLES_RESERVE = 20

# Chunks decoded together in one batch of the exact LM.
DECODE_BATCH = 32

# Frames whose CDFs an encoder builds at once: 256 frames of 8 codebooks of 1024 codes take 16 MiB.
ENCODE_BLOCK = 256

# Without a known length, a reader accepts a jump in sequence numbers of at most this many
# chunks beyond what the damaged bytes before it could have held.
MAX_UNEXPLAINED_LOSS = 1024


class CorruptChunkError(InvalidStreamError):
    """A chunk failed its CRC, or its payload cannot be decoded."""


@dataclass(frozen=True)
class StreamParams:
    """The header fields of an acv=4 stream: everything a decoder needs besides the LM weights.

    model: model name; sample_rate in Hz; channels; num_codebooks K; bandwidth in kbps.
    chunk_frames: frames in a full chunk; chunk_samples: audio samples a full chunk covers.
    frame_rate: frames per second; segment_length, segment_stride: samples, or None without segments.
    temperature: the LM logits are divided by it.
    count_precision: the CDF total is 2^count_precision; min_range: the least count of a symbol.
    numerics: the exact-LM arithmetic version.
    total_samples: audio samples of the whole stream, or None while unknown.
    tags: free-form strings (title, artist, ...).
    past_context, num_heads: the LM's attention window in frames and its head count.
    lm_fingerprint: SHA-256 of the exact LM's integer weights, or None before an encoder fills it in.
    """

    model: str
    sample_rate: int
    channels: int
    num_codebooks: int
    bandwidth: float
    chunk_frames: int
    chunk_samples: int
    frame_rate: int
    segment_length: int | None = None
    segment_stride: int | None = None
    temperature: float = 1.0
    count_precision: int = DEFAULT_COUNT_PRECISION
    min_range: int = DEFAULT_MIN_RANGE
    numerics: int = NUMERICS_VERSION
    total_samples: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    past_context: int | None = None
    num_heads: int = 8
    lm_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if self.past_context is None:
            object.__setattr__(self, "past_context", 7 * self.frame_rate // 2)
        self._validate()

    def _validate(self) -> None:
        positive = ("sample_rate", "channels", "num_codebooks", "chunk_frames", "chunk_samples", "frame_rate", "past_context", "num_heads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"stream parameter {name} must be a positive integer, got {value!r}")
        if self.numerics not in SUPPORTED_NUMERICS:
            raise UnsupportedStreamError(
                f"exact-LM numerics version {self.numerics!r} is not supported by this version "
                f"(it supports {', '.join(map(str, SUPPORTED_NUMERICS))}): upgrade ecdc_stream"
            )
        if self.sample_rate % self.frame_rate:
            raise InvalidArgumentError(f"frame rate {self.frame_rate} does not divide sample rate {self.sample_rate}")
        if self.chunk_frames > MAX_CHUNK_FRAMES:
            raise InvalidArgumentError(f"chunk of {self.chunk_frames} frames is longer than {MAX_CHUNK_FRAMES} frames")
        if self.chunk_samples >= 1 << 32:
            raise InvalidArgumentError(f"chunk of {self.chunk_samples} samples does not fit in 32 bits")
        if not math.isfinite(self.temperature) or not 0.25 <= self.temperature <= 4.0:
            raise InvalidArgumentError(f"temperature {self.temperature!r} is outside [0.25, 4]")
        try:
            cdf_builder.check_cdf_parameters(1, self.count_precision, self.min_range)
        except ValueError as exc:
            raise InvalidArgumentError(f"invalid CDF parameters: {exc}") from None
        if self.total_samples is not None and (not isinstance(self.total_samples, int) or self.total_samples < 0):
            raise InvalidArgumentError(f"total samples must be a non-negative integer or None, got {self.total_samples!r}")
        self._validate_chunking()

    def _validate_chunking(self) -> None:
        if (self.segment_length is None) != (self.segment_stride is None):
            raise InvalidArgumentError("segment length and segment stride must both be set or both be None")
        if self.segment_length is None:
            if self.chunk_samples != self.chunk_frames * self.hop_length:
                raise InvalidArgumentError(
                    f"a chunk of {self.chunk_frames} frames covers {self.chunk_frames * self.hop_length} samples, "
                    f"not {self.chunk_samples}"
                )
            return
        if not 1 <= self.segment_stride <= self.segment_length:
            raise InvalidArgumentError(
                f"segment stride {self.segment_stride} must be in [1, segment length {self.segment_length}]"
            )
        segments, leftover = divmod(self.chunk_samples, self.segment_stride)
        if leftover or self.chunk_frames != segments * self.segment_frames or segments > MAX_SEGMENTS_PER_CHUNK:
            raise InvalidArgumentError(
                f"a chunk must be a whole number of segments (at most {MAX_SEGMENTS_PER_CHUNK}): "
                f"{self.chunk_frames} frames and {self.chunk_samples} samples are not"
            )

    @property
    def hop_length(self) -> int:
        """Audio samples per frame."""
        return self.sample_rate // self.frame_rate

    @property
    def segment_frames(self) -> int:
        """Frames of a full segment, or 0 for a model without segments."""
        if self.segment_length is None:
            return 0
        return frames_for_samples(self, self.segment_length)

    @property
    def segments_per_chunk(self) -> int:
        """Segments in a full chunk, or 0 for a model without segments."""
        return self.chunk_samples // self.segment_stride if self.segment_stride else 0

    @property
    def num_chunks(self) -> int | None:
        """Chunks in the stream, or None while the length is unknown."""
        if self.total_samples is None:
            return None
        return -(-self.total_samples // self.chunk_samples)

    @property
    def max_payload_size(self) -> int:
        """The largest payload a valid chunk of this stream can have, in bytes.

        A symbol costs at most count_precision - log2(min_range) bits, plus the coder's final
        bytes; the reader rejects larger length fields without reading them.
        """
        symbols = self.chunk_frames * self.num_codebooks
        coded = -(-symbols * self.count_precision // 8) + 16
        return _PAYLOAD_HEADER.size + _SCALE.size * self.segments_per_chunk + coded

    @classmethod
    def for_model(
        cls,
        model: Any,
        bandwidth: float,
        chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
        *,
        temperature: float = 1.0,
        total_samples: int | None = None,
        tags: dict[str, str] | None = None,
        count_precision: int = DEFAULT_COUNT_PRECISION,
        min_range: int = DEFAULT_MIN_RANGE,
    ) -> StreamParams:
        """Build the parameters for an `EncodecModel` at `bandwidth` kbps.

        chunk_seconds is rounded to whole frames, or to whole segments (at least one) for a model
        with segments.
        """
        if not math.isfinite(chunk_seconds) or chunk_seconds <= 0:
            raise InvalidArgumentError(f"chunk length {chunk_seconds!r} s must be a positive number of seconds")
        frame_rate = int(model.frame_rate)
        hop = int(model.sample_rate) // frame_rate
        config = getattr(model, "config", None)
        past_context = getattr(config, "resolved_lm_past_context", None)
        num_heads = getattr(config, "lm_num_heads", 8)
        if model.segment_length is None:
            chunk_frames = max(1, round(chunk_seconds * frame_rate))
            chunk_samples = chunk_frames * hop
        else:
            segments = max(1, round(chunk_seconds * model.sample_rate / model.segment_stride))
            chunk_frames = segments * -(-int(model.segment_length) // hop)
            chunk_samples = segments * int(model.segment_stride)
        return cls(
            model=model.name,
            sample_rate=int(model.sample_rate),
            channels=int(model.channels),
            num_codebooks=int(model.num_codebooks(bandwidth)),
            bandwidth=float(bandwidth),
            chunk_frames=chunk_frames,
            chunk_samples=chunk_samples,
            frame_rate=frame_rate,
            segment_length=model.segment_length,
            segment_stride=model.segment_stride,
            temperature=temperature,
            count_precision=count_precision,
            min_range=min_range,
            total_samples=total_samples,
            tags=dict(tags or {}),
            past_context=past_context,
            num_heads=num_heads,
        )

    def to_metadata(self) -> dict[str, Any]:
        """Return the header JSON object; `total_samples` comes last."""
        values = dataclasses.asdict(self)
        total = values.pop("total_samples")
        return {"acv": ACV, **values, "total_samples": total}

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], source: str = "input") -> StreamParams:
        """Validate a header JSON object of an acv=4 stream and return its parameters.

        Raises InvalidStreamError for a missing or mistyped field, UnsupportedStreamError for
        another acv or an unknown numerics version.
        """
        acv = metadata.get("acv")
        if acv != ACV:
            raise UnsupportedStreamError(f"{source} has acv {acv!r}; this reader handles acv {ACV} only")
        if "numerics" not in metadata:
            raise InvalidStreamError(
                f"{source} is an acv=4 stream without a numerics version: it was written by another "
                "implementation whose LM arithmetic is unknown, so it cannot be decoded exactly"
            )
        numerics = metadata["numerics"]
        if not isinstance(numerics, int) or isinstance(numerics, bool) or numerics not in SUPPORTED_NUMERICS:
            raise UnsupportedStreamError(
                f"{source} uses exact-LM numerics version {numerics!r}, which this version does not know "
                f"(it supports {', '.join(map(str, SUPPORTED_NUMERICS))}): upgrade ecdc_stream"
            )

        kinds: dict[str, tuple[type, ...]] = {
            "model": (str,),
            "sample_rate": (int,),
            "channels": (int,),
            "num_codebooks": (int,),
            "bandwidth": (int, float),
            "chunk_frames": (int,),
            "chunk_samples": (int,),
            "frame_rate": (int,),
            "segment_length": (int, type(None)),
            "segment_stride": (int, type(None)),
            "temperature": (int, float),
            "count_precision": (int,),
            "min_range": (int,),
            "total_samples": (int, type(None)),
            "tags": (dict,),
            "past_context": (int,),
            "num_heads": (int,),
            "lm_fingerprint": (str, type(None)),
        }
        values: dict[str, Any] = {"numerics": numerics}
        for name, kind in kinds.items():
            if name not in metadata:
                raise InvalidStreamError(f"{source} header lacks the field {name!r}")
            value = metadata[name]
            if isinstance(value, bool) or not isinstance(value, kind):
                raise InvalidStreamError(f"{source} header field {name!r} is {value!r}, of the wrong type")
            values[name] = value
        values["bandwidth"] = float(values["bandwidth"])
        values["temperature"] = float(values["temperature"])
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in values["tags"].items()):
            raise InvalidStreamError(f"{source} header tags must map strings to strings")
        try:
            return cls(**values)
        except InvalidArgumentError as exc:
            raise InvalidStreamError(f"{source} header is invalid: {exc}") from None


def frames_for_samples(params: StreamParams, num_samples: int) -> int:
    """Return the frames that code `num_samples` samples: ceil(num_samples / hop_length)."""
    return -(-num_samples // params.hop_length)


def remaining_bytes(fo: BinaryIO) -> int | None:
    """Return how many bytes follow the current position of a file or buffer, or None for a pipe."""
    try:
        position = fo.tell()
        end = fo.seek(0, os.SEEK_END)
        fo.seek(position)
    except (OSError, ValueError, AttributeError):
        return None
    return max(0, end - position)


def check_length_fits(params: StreamParams, stream_bytes: int | None, source: str = "input") -> None:
    """Raise InvalidStreamError if the header's length needs more chunks than sequence numbers can count.

    Chunks missing from a stream are concealed as silence up to the header's `total_samples`, so a
    corrupt length field (say 10^15 samples) would make a reader write silence almost without end.
    Sequence numbers are u32, so no valid stream has more than 2^32 chunks.
    `stream_bytes` (the bytes after the header, None for a pipe) only sharpens the message.
    """
    # NOTE: a length below that limit but far beyond the chunks present is taken as truncation and
    # concealed to the end, which can be a very long silence if the length field itself is damaged.
    if params.num_chunks is None or params.num_chunks <= MAX_CHUNKS:
        return
    held = "" if stream_bytes is None else f" and {stream_bytes} bytes of chunks follow"
    raise InvalidStreamError(
        f"{source} header gives a length of {params.total_samples} samples ({params.num_chunks} chunks), "
        f"more than the {MAX_CHUNKS} chunks a stream can number{held}: the header is corrupt"
    )


def chunk_duration(params: StreamParams, sequence: int) -> int:
    """Return the audio samples of chunk `sequence`: a full chunk, or what is left at the end.

    Without a known total length every chunk counts as full. Raises InvalidArgumentError for a
    sequence number past the end of a stream of known length.
    """
    if sequence < 0:
        raise InvalidArgumentError(f"chunk sequence number {sequence} is negative")
    if params.total_samples is None:
        return params.chunk_samples
    remaining = params.total_samples - sequence * params.chunk_samples
    if remaining <= 0:
        raise InvalidArgumentError(f"chunk {sequence} is past the end of a stream of {params.total_samples} samples")
    return min(params.chunk_samples, remaining)


def segment_frame_counts(params: StreamParams, num_frames: int, num_samples: int, num_segments: int) -> list[int]:
    """Split a chunk's frames among its segments (see the module docstring).

    Raises ValueError when the counts do not describe a valid chunk.
    """
    counts = []
    for j in range(num_segments - 1):
        length = min(params.segment_length, num_samples - j * params.segment_stride)
        if length < 1:
            raise ValueError(f"segment {j} of a chunk of {num_samples} samples is empty")
        counts.append(frames_for_samples(params, length))
    last = num_frames - sum(counts)
    if not 1 <= last <= params.segment_frames:
        raise ValueError(f"{num_frames} frames do not fit {num_segments} segments of {num_samples} samples")
    return counts + [last]


def _check_chunk_shape(params: StreamParams, num_frames: int, num_samples: int, num_segments: int) -> None:
    """Raise ValueError unless frames, samples and segment count agree with the stream."""
    if not 1 <= num_frames <= params.chunk_frames:
        raise ValueError(f"a chunk has {num_frames} frames, expected 1 to {params.chunk_frames}")
    if not 1 <= num_samples <= params.chunk_samples:
        raise ValueError(f"a chunk covers {num_samples} samples, expected 1 to {params.chunk_samples}")
    if params.segment_length is None:
        if num_segments:
            raise ValueError(f"model {params.model} has no segments, the chunk has {num_segments} scales")
        if num_frames != frames_for_samples(params, num_samples):
            raise ValueError(f"{num_samples} samples take {frames_for_samples(params, num_samples)} frames, not {num_frames}")
        return
    expected = -(-num_samples // params.segment_stride)
    if num_segments != expected:
        raise ValueError(f"a chunk of {num_samples} samples has {expected} segments, not {num_segments}")
    segment_frame_counts(params, num_frames, num_samples, num_segments)


@dataclass(frozen=True)
class FramedChunk:
    """An intact framed chunk found in a byte stream: its sequence number and framed bytes."""

    sequence: int
    data: bytes


@dataclass(frozen=True)
class DamagedRegion:
    """Bytes of a stream that hold no intact chunk: `offset` from the first chunk, `length` bytes.

    truncated: True when the region runs to the end of the stream.
    """

    offset: int
    length: int
    truncated: bool = False


def frame_payload(payload: bytes) -> bytes:
    """Return `[u32 BE length][u32 BE CRC-32][payload]`."""
    return _FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def unframe(data: bytes, max_payload: int | None = None) -> bytes:
    """Return the payload of one framed chunk; CorruptChunkError if its length or CRC is wrong."""
    if len(data) < _FRAME_HEADER.size:
        raise CorruptChunkError(f"framed chunk of {len(data)} bytes is shorter than its 8-byte frame header")
    length, crc = _FRAME_HEADER.unpack_from(data)
    if length != len(data) - _FRAME_HEADER.size or (max_payload is not None and length > max_payload):
        raise CorruptChunkError(f"framed chunk declares {length} payload bytes but contains {len(data) - _FRAME_HEADER.size}")
    payload = data[_FRAME_HEADER.size :]
    if zlib.crc32(payload) != crc:
        raise CorruptChunkError("chunk failed its CRC-32 check")
    return payload


class ChunkCoder:
    """Code chunks of one stream with the exact LM and the range coder.

    params: the stream's parameters; lm_state_dict: the LM checkpoint of params.model.
    device: where the exact LM runs; the bytes and codes are the same on every device.
    `params` of the coder is the given one with `lm_fingerprint` filled in. Raises
    UnsupportedStreamError when the given params name another LM fingerprint.
    """

    def __init__(self, params: StreamParams, lm_state_dict: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> None:
        try:
            self.lm = ExactLM(
                lm_state_dict,
                num_codebooks=params.num_codebooks,
                past_context=params.past_context,
                num_heads=params.num_heads,
                temperature=params.temperature,
                device=device,
            )
        except ValueError as exc:
            raise InvalidArgumentError(f"the stream parameters do not fit the LM checkpoint of {params.model!r}: {exc}") from None
        try:
            cdf_builder.check_cdf_parameters(self.lm.card, params.count_precision, params.min_range)
        except ValueError as exc:
            raise InvalidArgumentError(f"invalid CDF parameters for {self.lm.card} codes: {exc}") from None
        fingerprint = self.lm.fingerprint()
        if params.lm_fingerprint is not None and params.lm_fingerprint != fingerprint:
            raise UnsupportedStreamError(
                f"the stream was coded with another LM checkpoint for model {params.model!r} "
                f"(fingerprint {params.lm_fingerprint[:16]}, this one is {fingerprint[:16]}): "
                "decode it with the weights it was encoded with"
            )
        self.params = dataclasses.replace(params, lm_fingerprint=fingerprint)

    @property
    def card(self) -> int:
        """Codes per codebook."""
        return self.lm.card

    def counts(self, logits: torch.Tensor) -> torch.Tensor:
        """Return the integer symbol counts `[..., card]` for exact-LM logits `[..., card]`."""
        return cdf_builder.counts_from_logits(logits, self.params.count_precision, self.params.min_range)

    # Encoding.

    def encode(self, chunk: CodeChunk) -> bytes:
        """Code one chunk and return it framed: `[u32 length][u32 CRC-32][payload]`.

        Raises InvalidArgumentError when the chunk does not fit the stream's parameters.
        """
        codes = self._check_chunk(chunk)
        frames = codes.shape[-1]
        hidden = self.lm.hidden_states(torch.from_numpy(codes).to(self.lm.device).unsqueeze(0))

        # Symbols in coding order: frame by frame, codebook by codebook. The output layer and
        # the CDFs run on blocks of frames, which bounds their memory for long chunks.
        symbol_lows: list[int] = []
        symbol_counts: list[int] = []
        for start in range(0, frames, ENCODE_BLOCK):
            counts = self.counts(self.lm.output_logits(hidden[:, start : start + ENCODE_BLOCK]))[0]  # [T', K, card]
            symbols = torch.from_numpy(codes[:, start : start + ENCODE_BLOCK].T.copy()).to(counts.device).unsqueeze(-1)
            lows = torch.cumsum(counts, dim=-1) - counts
            symbol_lows += lows.gather(-1, symbols).reshape(-1).tolist()
            symbol_counts += counts.gather(-1, symbols).reshape(-1).tolist()

        encoder = RangeEncoder(self.params.count_precision)
        encoder.encode_all(symbol_lows, symbol_counts)
        coded = encoder.finish()

        header = _PAYLOAD_HEADER.pack(chunk.sequence, frames, chunk.num_samples, len(chunk.scales))
        scales = b"".join(_SCALE.pack(scale) for scale in chunk.scales)
        return frame_payload(header + scales + coded)

    def _check_chunk(self, chunk: CodeChunk) -> np.ndarray:
        codes = np.asarray(chunk.codes)
        if codes.ndim != 2 or codes.shape[0] != self.params.num_codebooks:
            raise InvalidArgumentError(
                f"chunk {chunk.sequence} has codes of shape {codes.shape}, expected [{self.params.num_codebooks}, frames]"
            )
        if not np.issubdtype(codes.dtype, np.integer):
            raise InvalidArgumentError(f"chunk {chunk.sequence} has codes of type {codes.dtype}, expected integers")
        if codes.size and (codes.min() < 0 or codes.max() >= self.card):
            raise InvalidArgumentError(f"chunk {chunk.sequence} has codes outside [0, {self.card})")
        if not 0 <= chunk.sequence < 1 << 32:
            raise InvalidArgumentError(f"chunk sequence number {chunk.sequence} does not fit in 32 bits")
        if not all(math.isfinite(scale) for scale in chunk.scales):
            raise InvalidArgumentError(f"chunk {chunk.sequence} has a scale that is not finite: {chunk.scales}")
        try:
            _check_chunk_shape(self.params, codes.shape[1], chunk.num_samples, len(chunk.scales))
        except ValueError as exc:
            raise InvalidArgumentError(f"chunk {chunk.sequence} does not fit the stream: {exc}") from None
        return np.ascontiguousarray(codes, dtype=np.int64)

    # Decoding.

    def decode(self, framed: bytes) -> CodeChunk:
        """Decode one framed chunk; raises CorruptChunkError when its CRC or decoding fails."""
        result = self.decode_batch([framed])[0]
        if isinstance(result, CorruptChunkError):
            raise result
        return result

    def decode_batch(self, framed_chunks: Sequence[bytes]) -> list[CodeChunk | CorruptChunkError]:
        """Decode framed chunks together, in one batch of the exact LM per DECODE_BATCH chunks.

        Returns, in order, the chunk or the CorruptChunkError of each. The codes are identical
        to decoding each chunk alone.
        """
        parsed: list[_ParsedChunk | CorruptChunkError] = []
        for data in framed_chunks:
            try:
                parsed.append(self._parse(data))
            except CorruptChunkError as exc:
                parsed.append(exc)

        results: list[CodeChunk | CorruptChunkError] = list(parsed)  # type: ignore[arg-type]
        pending = [index for index, item in enumerate(parsed) if isinstance(item, _ParsedChunk)]
        for start in range(0, len(pending), DECODE_BATCH):
            indices = pending[start : start + DECODE_BATCH]
            decoded = self._decode_parsed([parsed[i] for i in indices])  # type: ignore[misc]
            for index, item in zip(indices, decoded):
                results[index] = item
        return results

    def _parse(self, data: bytes) -> _ParsedChunk:
        payload = unframe(bytes(data), self.params.max_payload_size)
        if len(payload) < _PAYLOAD_HEADER.size:
            raise CorruptChunkError(f"chunk payload of {len(payload)} bytes is shorter than its header")
        sequence, frames, samples, segments = _PAYLOAD_HEADER.unpack_from(payload)
        scales_end = _PAYLOAD_HEADER.size + segments * _SCALE.size
        if len(payload) < scales_end:
            raise CorruptChunkError(f"chunk {sequence} payload ends inside its {segments} scales")
        scales = tuple(_SCALE.unpack_from(payload, _PAYLOAD_HEADER.size + j * _SCALE.size)[0] for j in range(segments))
        if not all(math.isfinite(scale) for scale in scales):
            raise CorruptChunkError(f"chunk {sequence} has a scale that is not finite")
        try:
            _check_chunk_shape(self.params, frames, samples, segments)
        except ValueError as exc:
            raise CorruptChunkError(f"chunk {sequence} is invalid: {exc}") from None
        return _ParsedChunk(sequence, frames, samples, scales, payload[scales_end:])

    def _decode_parsed(self, chunks: list[_ParsedChunk]) -> list[CodeChunk | CorruptChunkError]:
        """Decode chunks in lockstep: one exact-LM step per frame for the whole batch."""
        batch = len(chunks)
        num_codebooks = self.params.num_codebooks
        max_frames = max(chunk.frames for chunk in chunks)
        decoders = [RangeDecoder(chunk.coded, self.params.count_precision) for chunk in chunks]
        codes = np.zeros((batch, num_codebooks, max_frames), dtype=np.int64)
        failures: dict[int, CorruptChunkError] = {}

        state = self.lm.start(batch, max_frames)
        previous: torch.Tensor | None = None
        for frame in range(max_frames):
            counts = self.counts(self.lm.step(state, previous, check=False))
            cdfs = cdf_builder.cdf_from_counts(counts).cpu().numpy()  # [B, K, card + 1]
            for b, decoder in enumerate(decoders):
                if frame >= chunks[b].frames or b in failures:
                    continue
                try:
                    codes[b, :, frame] = _decode_frame(decoder, cdfs[b])
                except RangeCoderError as exc:
                    failures[b] = CorruptChunkError(f"chunk {chunks[b].sequence} cannot be decoded: {exc}")
            previous = torch.from_numpy(codes[:, :, frame].copy()).to(self.lm.device)

        results: list[CodeChunk | CorruptChunkError] = []
        for b, chunk in enumerate(chunks):
            if b in failures:
                results.append(failures[b])
            else:
                results.append(CodeChunk(chunk.sequence, codes[b, :, : chunk.frames].copy(), chunk.samples, chunk.scales))
        return results


def _decode_frame(decoder: RangeDecoder, cdfs: np.ndarray) -> list[int]:
    """Decode one frame's codes, one per codebook, under `cdfs` `[K, card + 1]`."""
    symbols = []
    for row in cdfs:
        target = decoder.target()
        symbol = int(np.searchsorted(row, target, side="right")) - 1
        low = int(row[symbol])
        decoder.consume(low, int(row[symbol + 1]) - low)
        symbols.append(symbol)
    return symbols


@dataclass(frozen=True)
class _ParsedChunk:
    sequence: int
    frames: int
    samples: int
    scales: tuple[float, ...]
    coded: bytes


# Reading framed chunks from a byte stream, with resynchronisation.


class _ByteWindow:
    """A read buffer over a file object that reads only as many bytes as it is asked for."""

    def __init__(self, fo: BinaryIO) -> None:
        self._fo = fo
        self._buffer = bytearray()
        self._start = 0  # stream offset of _buffer[0]
        self.eof = False

    def available(self, offset: int, size: int) -> bytes:
        """Return up to `size` bytes at stream `offset` (fewer only at the end of the stream)."""
        need = offset + size - (self._start + len(self._buffer))
        while need > 0 and not self.eof:
            data = self._fo.read(need)
            if not data:
                self.eof = True
                break
            self._buffer += data
            need -= len(data)
        begin = offset - self._start
        return bytes(self._buffer[begin : begin + size])

    def release(self, offset: int) -> None:
        """Forget the bytes before stream `offset`."""
        drop = offset - self._start
        if drop > 0:
            del self._buffer[:drop]
            self._start = offset


def iter_framed_chunks(fo: BinaryIO, params: StreamParams) -> Iterator[FramedChunk | DamagedRegion]:
    """Yield the intact chunks of a byte stream in order, and the damaged regions between them.

    `fo` is positioned at the first chunk (after the header). A chunk is intact when its length
    is plausible (a payload of at least the fixed header, at most `params.max_payload_size`) and
    its CRC matches. After damage the reader tries every following byte offset, so it finds the
    next intact chunk whatever byte was hit, a length field included. A region that reaches the
    end of the stream (a truncated tail) is reported with `truncated=True`. Memory stays within
    one maximum-size chunk plus what `fo.read` returns.
    """
    window = _ByteWindow(fo)
    max_payload = params.max_payload_size
    offset = 0
    damage_start: int | None = None

    while True:
        header = window.available(offset, _FRAME_HEADER.size)
        if len(header) < _FRAME_HEADER.size:
            end = offset + len(header)
            if damage_start is not None or header:
                start = offset if damage_start is None else damage_start
                yield DamagedRegion(start, end - start, truncated=True)
            return

        length, crc = _FRAME_HEADER.unpack(header)
        intact = False
        if _PAYLOAD_HEADER.size <= length <= max_payload:
            payload = window.available(offset + _FRAME_HEADER.size, length)
            intact = len(payload) == length and zlib.crc32(payload) == crc

        if intact:
            if damage_start is not None:
                yield DamagedRegion(damage_start, offset - damage_start)
                damage_start = None
            sequence = _PAYLOAD_HEADER.unpack_from(payload)[0]
            yield FramedChunk(sequence, header + payload)
            offset += _FRAME_HEADER.size + length
        else:
            if damage_start is None:
                damage_start = offset
            offset += 1
        window.release(offset)


# Files: header plus chunks.


def _padded_header(metadata: dict[str, Any], reserve: int) -> bytes:
    """Return the header bytes for `metadata` with `reserve` trailing spaces in its JSON."""
    header = encode_header(metadata)
    prefix_size = len(MAGIC) + 1 + 4
    payload = header[prefix_size:] + b" " * reserve
    return MAGIC + bytes([VERSION]) + struct.pack(">I", len(payload)) + payload


def _coding_parameters(params: StreamParams) -> StreamParams:
    """Return `params` without the fields that do not change how chunks are coded."""
    return dataclasses.replace(params, total_samples=None, tags={}, lm_fingerprint=None)


class Acv4Writer:
    """Write an acv=4 stream chunk by chunk, each flushed as soon as it is framed.

    The header contains `params` (default: the coder's) with the coder's LM fingerprint, and
    they may differ from the coder's in length and tags only. With `total_samples` None, the header
    reserves room for the length; `close` fills it in when `fo` is seekable, and otherwise
    leaves null, which readers accept. The stream is valid after every complete chunk.
    """

    def __init__(self, fo: BinaryIO, coder: ChunkCoder, *, params: StreamParams | None = None, fsync: bool = False) -> None:
        if params is not None and _coding_parameters(params) != _coding_parameters(coder.params):
            raise InvalidArgumentError("the stream parameters differ from the coder's in more than length and tags")
        self._fo = fo
        self.coder = coder
        self.params = coder.params if params is None else dataclasses.replace(params, lm_fingerprint=coder.params.lm_fingerprint)
        self._fsync = fsync
        self._header_offset = _tell(fo)
        reserve = TOTAL_SAMPLES_RESERVE if self.params.total_samples is None else 0
        self._header = _padded_header(self.params.to_metadata(), reserve)
        fo.write(self._header)
        self._flush()
        self.samples_written = 0
        self.chunks_written = 0

    def write_chunk(self, chunk: CodeChunk) -> bytes:
        """Encode, frame and write one chunk; returns the framed bytes."""
        framed = self.coder.encode(chunk)
        self.write_framed(framed, chunk.num_samples)
        return framed

    def write_framed(self, framed: bytes, num_samples: int) -> None:
        """Write an already framed chunk that covers `num_samples` samples."""
        self._fo.write(framed)
        self._flush()
        self.samples_written += num_samples
        self.chunks_written += 1

    def close(self, total_samples: int | None = None) -> None:
        """Fill in the total length in the header when it was unknown and `fo` is seekable.

        total_samples defaults to the samples of the chunks written. Does not close `fo`.
        """
        if self.params.total_samples is not None or self._header_offset is None:
            return
        total = self.samples_written if total_samples is None else total_samples
        metadata = dataclasses.replace(self.params, total_samples=total).to_metadata()
        filled = _padded_header(metadata, 0)
        if len(filled) > len(self._header):
            logger.warning("the header has no room for the length %d; it stays unknown", total)
            return
        filled = _padded_header(metadata, len(self._header) - len(filled))
        end = self._fo.tell()
        self._fo.seek(self._header_offset)
        self._fo.write(filled)
        self._fo.seek(end)
        self._flush()

    def _flush(self) -> None:
        self._fo.flush()
        if self._fsync:
            os.fsync(self._fo.fileno())


def _tell(fo: BinaryIO) -> int | None:
    """Return the position of a seekable file, or None for a pipe or socket."""
    try:
        if fo.seekable():
            return fo.tell()
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    return None


def _lm_state_dict(params: StreamParams, lm_state_dict: dict[str, torch.Tensor] | None, weights_dir: Any) -> dict[str, torch.Tensor]:
    if lm_state_dict is not None:
        return lm_state_dict
    from ecdc_stream.model import lm_state_dict as load_lm_state_dict

    return load_lm_state_dict(params.model, weights_dir)


def write_acv4(
    fo: BinaryIO,
    params: StreamParams,
    chunks: Iterable[CodeChunk],
    lm_state_dict: dict[str, torch.Tensor] | None = None,
    *,
    weights_dir: Any = None,
    device: str | torch.device = "cpu",
) -> StreamParams:
    """Write a whole acv=4 stream: the header, then every chunk. Returns the params written.

    Without `lm_state_dict`, the LM of `params.model` is loaded from `weights_dir`.
    """
    coder = ChunkCoder(params, _lm_state_dict(params, lm_state_dict, weights_dir), device)
    writer = Acv4Writer(fo, coder)
    for chunk in chunks:
        writer.write_chunk(chunk)
    writer.close()
    return coder.params


def read_acv4(
    fo: BinaryIO,
    lm_state_dict: dict[str, torch.Tensor] | None = None,
    *,
    weights_dir: Any = None,
    device: str | torch.device = "cpu",
    source: str = "input",
    coder: ChunkCoder | None = None,
) -> tuple[StreamParams, list[CodeChunk | Gap]]:
    """Read a whole acv=4 stream into its chunks, with a Gap for each chunk that is lost.

    The list is in sequence order. A damaged, undecodable or missing chunk becomes a
    `Gap(sequence, chunk_duration, reason)`, reason "corrupt" where damaged bytes stood and
    "lost" otherwise, so with a known total length the durations add up to exactly it. Without
    one, the list ends at the last intact chunk. A `coder` made for the same parameters saves
    converting the LM again.
    """
    metadata = read_header(fo, source)
    params = StreamParams.from_metadata(metadata, source)
    check_length_fits(params, remaining_bytes(fo), source)
    if coder is None:
        coder = ChunkCoder(params, _lm_state_dict(params, lm_state_dict, weights_dir), device)
    elif _coding_parameters(coder.params) != _coding_parameters(params):
        raise InvalidArgumentError(f"the coder given was made for other stream parameters than those of {source}")
    elif params.lm_fingerprint not in (None, coder.params.lm_fingerprint):
        raise UnsupportedStreamError(f"{source} was coded with another LM checkpoint: decode it with the weights it was encoded with")

    found, damaged_before = _collect_chunks(fo, params, source)
    decoded = coder.decode_batch([item.data for item in found])

    if params.num_chunks is not None:
        last = params.num_chunks - 1
    elif found:
        last = found[-1].sequence
    else:
        last = -1
    by_sequence = {item.sequence: result for item, result in zip(found, decoded)}
    output: list[CodeChunk | Gap] = []
    for sequence in range(last + 1):
        result = by_sequence.get(sequence)
        if isinstance(result, CodeChunk):
            output.append(result)
            continue
        if isinstance(result, CorruptChunkError):
            logger.warning("%s: %s", source, result)
            reason = "corrupt"
        else:
            reason = "corrupt" if damaged_before.get(sequence, False) else "lost"
        output.append(Gap(sequence, chunk_duration(params, sequence), reason))
    return params, output


def _collect_chunks(fo: BinaryIO, params: StreamParams, source: str) -> tuple[list[FramedChunk], dict[int, bool]]:
    """Return the intact chunks in increasing sequence order, and which missing ones met damage.

    Drops repeated chunks, chunks whose sequence number goes backwards, and sequence numbers
    that cannot belong to the stream.
    """
    found: list[FramedChunk] = []
    damaged_bytes = 0
    damaged_before: dict[int, bool] = {}
    smallest_chunk = _FRAME_HEADER.size + _PAYLOAD_HEADER.size
    for item in iter_framed_chunks(fo, params):
        if isinstance(item, DamagedRegion):
            damaged_bytes += item.length
            logger.warning("%s: skipped %d damaged bytes at chunk offset %d", source, item.length, item.offset)
            continue

        previous = found[-1].sequence if found else -1
        if item.sequence <= previous:
            logger.warning("%s: dropped chunk %d, which repeats or goes back from chunk %d", source, item.sequence, previous)
            continue
        if params.num_chunks is not None and item.sequence >= params.num_chunks:
            logger.warning("%s: dropped chunk %d of a stream of %d chunks", source, item.sequence, params.num_chunks)
            continue
        if params.num_chunks is None and item.sequence - previous - 1 > damaged_bytes // smallest_chunk + MAX_UNEXPLAINED_LOSS:
            logger.warning("%s: dropped chunk %d, too far after chunk %d", source, item.sequence, previous)
            continue

        for missing in range(previous + 1, item.sequence):
            damaged_before[missing] = damaged_bytes > 0
        damaged_bytes = 0
        found.append(item)

    if params.num_chunks is not None:
        first_missing = found[-1].sequence + 1 if found else 0
        for missing in range(first_missing, params.num_chunks):
            damaged_before[missing] = damaged_bytes > 0
    return found, damaged_before


# Turning a model's segments into chunks and back.


def segments_to_chunks(
    params: StreamParams,
    segments: Sequence[tuple[Any, Any]],
    total_samples: int,
    first_sequence: int = 0,
) -> list[CodeChunk]:
    """Cut a model's encoded segments into chunks.

    segments: what `EncodecModel.encode` returns for one item: `(codes [1, K, T], scale [1, 1] or
    None)` per segment. total_samples: the audio length they code. Without segments the single
    segment is cut every `chunk_frames` frames; with segments, every `segments_per_chunk` segments.
    """
    if total_samples < 1:
        raise InvalidArgumentError(f"cannot chunk {total_samples} samples of audio")
    arrays = [(_codes_array(codes), None if scale is None else float(np.asarray(_to_numpy(scale)).reshape(-1)[0])) for codes, scale in segments]
    chunks = []
    if params.segment_length is None:
        if len(arrays) != 1:
            raise InvalidArgumentError(f"model {params.model} has no segments, got {len(arrays)}")
        codes = arrays[0][0]
        expected = frames_for_samples(params, total_samples)
        if codes.shape[1] != expected:
            raise InvalidArgumentError(f"{total_samples} samples take {expected} frames, the codes have {codes.shape[1]}")
        for index, start in enumerate(range(0, codes.shape[1], params.chunk_frames)):
            samples = min(params.chunk_samples, total_samples - index * params.chunk_samples)
            chunk_codes = codes[:, start : start + params.chunk_frames].copy()
            chunks.append(CodeChunk(first_sequence + index, chunk_codes, samples))
        return chunks

    per_chunk = params.segments_per_chunk
    expected_segments = -(-total_samples // params.segment_stride)
    if len(arrays) != expected_segments:
        raise InvalidArgumentError(f"{total_samples} samples take {expected_segments} segments, got {len(arrays)}")
    for index, start in enumerate(range(0, len(arrays), per_chunk)):
        group = arrays[start : start + per_chunk]
        samples = min(params.chunk_samples, total_samples - index * params.chunk_samples)
        chunk_codes = np.concatenate([codes for codes, _ in group], axis=1)
        scales = tuple(1.0 if scale is None else scale for _, scale in group)
        chunks.append(CodeChunk(first_sequence + index, chunk_codes, samples, scales))
    return chunks


def chunk_segments(params: StreamParams, chunk: CodeChunk) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Split a chunk into the `(codes [1, K, T], scale [1, 1] or None)` segments a model decodes.

    A model without segments gets one segment with no scale.
    """
    codes = torch.from_numpy(np.ascontiguousarray(chunk.codes, dtype=np.int64))
    if params.segment_length is None:
        return [(codes.unsqueeze(0), None)]
    counts = segment_frame_counts(params, codes.shape[-1], chunk.num_samples, len(chunk.scales))
    segments = []
    start = 0
    for count, scale in zip(counts, chunk.scales):
        segment_codes = codes[:, start : start + count].unsqueeze(0)
        segments.append((segment_codes, torch.tensor([[scale]], dtype=torch.float32)))
        start += count
    return segments


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _codes_array(codes: Any) -> np.ndarray:
    array = _to_numpy(codes)
    if array.ndim == 3:
        if array.shape[0] != 1:
            raise InvalidArgumentError(f"segments must hold one item, got codes of shape {array.shape}")
        array = array[0]
    if array.ndim != 2:
        raise InvalidArgumentError(f"codes must be [1, K, T] or [K, T], got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.int64)


__all__ = [
    "ACV",
    "Acv4Writer",
    "ChunkCoder",
    "CorruptChunkError",
    "DamagedRegion",
    "FramedChunk",
    "StreamParams",
    "chunk_duration",
    "chunk_segments",
    "frame_payload",
    "frames_for_samples",
    "iter_framed_chunks",
    "read_acv4",
    "segment_frame_counts",
    "segments_to_chunks",
    "unframe",
    "write_acv4",
]
