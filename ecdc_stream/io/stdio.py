"""Audio on standard input and output: raw PCM (s16le, f32le) or a WAV stream, block by block.

A pipe cannot seek, so a WAV arriving on standard input is parsed here chunk by chunk instead of
by libsndfile, and a WAV written to a pipe declares an unknown length (0xFFFFFFFF sizes, as
ffmpeg writes them), which ffmpeg, ffplay and sox accept.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from typing import BinaryIO

import anyio
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.errors import InvalidArgumentError, InvalidAudioError
from ecdc_stream.io.audio_files import BlockConverter, check_finite
from ecdc_stream.pipeline.records import AudioBlock

RAW_FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
FORMATS = ("wav", *RAW_FORMATS)
DEFAULT_BLOCK_SAMPLES = 4800
_UNKNOWN_SIZE = 0xFFFFFFFF


def check_format(name: str) -> str:
    """Return `name` if it is a known stream format, else raise InvalidArgumentError."""
    if name not in FORMATS:
        raise InvalidArgumentError(f"unknown audio format {name!r}: use one of {', '.join(FORMATS)}")
    return name


def _read_exact(fo: BinaryIO, size: int) -> bytes:
    """Read `size` bytes, fewer only at the end of the stream."""
    parts = []
    while size > 0:
        data = fo.read(size)
        if not data:
            break
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


def _wav_stream_format(fo: BinaryIO, source: str) -> tuple[np.dtype, int, int, int | None]:
    """Parse a WAV header from a stream up to its data chunk.

    Returns (sample dtype, sample rate, channels, data bytes or None when unknown) and leaves
    `fo` at the first sample. Supports 8/16/24/32-bit integer and 32/64-bit float PCM.
    """
    riff = _read_exact(fo, 12)
    if len(riff) < 12 or riff[:4] not in (b"RIFF", b"RF64") or riff[8:12] != b"WAVE":
        raise InvalidAudioError(f"{source} is not a WAV stream; for raw PCM pass --format s16le or f32le")

    audio_format = channels = rate = bits = None
    while True:
        chunk = _read_exact(fo, 8)
        if len(chunk) < 8:
            raise InvalidAudioError(f"{source} ends before the WAV data chunk")
        name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if name == b"fmt ":
            body = _read_exact(fo, size + (size & 1))
            audio_format, channels, rate = struct.unpack_from("<HHI", body)
            bits = struct.unpack_from("<H", body, 14)[0]
            if audio_format == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: the subformat decides
                audio_format = struct.unpack_from("<H", body, 24)[0]
        elif name == b"data":
            break
        else:
            _read_exact(fo, size + (size & 1))

    if audio_format is None:
        raise InvalidAudioError(f"{source} has no WAV fmt chunk before its data")
    kinds = {(1, 8): np.dtype("u1"), (1, 16): np.dtype("<i2"), (1, 24): np.dtype("V3"), (1, 32): np.dtype("<i4"),
             (3, 32): np.dtype("<f4"), (3, 64): np.dtype("<f8")}
    dtype = kinds.get((audio_format, bits))
    if dtype is None or not channels or not rate:
        raise InvalidAudioError(f"{source} is a WAV of format {audio_format} with {bits} bits, which cannot be read from a pipe")
    data_size = None if size in (_UNKNOWN_SIZE, 0) else size
    return dtype, rate, channels, data_size


def _to_float(raw: bytes, dtype: np.dtype, channels: int) -> np.ndarray:
    """Convert interleaved PCM bytes to float32 `[C, n]` in [-1, 1]."""
    if dtype == np.dtype("V3"):
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = (triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)) << 8 >> 8
        samples = values.astype(np.float32) / float(1 << 23)
    elif dtype == np.dtype("u1"):
        samples = (np.frombuffer(raw, dtype=dtype).astype(np.float32) - 128.0) / 128.0
    elif dtype.kind == "i":
        samples = np.frombuffer(raw, dtype=dtype).astype(np.float32) / float(1 << (8 * dtype.itemsize - 1))
    else:
        samples = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    return np.ascontiguousarray(samples.reshape(-1, channels).T)


def read_stream_blocks(
    fo: BinaryIO,
    audio_format: str,
    sample_rate: int,
    channels: int,
    rate: int | None = None,
    input_channels: int | None = None,
    block_samples: int = DEFAULT_BLOCK_SAMPLES,
    source: str = "standard input",
) -> Iterator[AudioBlock]:
    """Yield audio from a byte stream as `AudioBlock`s at `sample_rate` Hz and `channels` channels.

    audio_format: "wav" (rate and channels from its header) or a raw format, which needs
    `rate` (Hz) and `input_channels`. Raises InvalidAudioError for no samples or NaN/inf samples.
    """
    check_format(audio_format)
    if audio_format == "wav":
        dtype, rate, input_channels, remaining = _wav_stream_format(fo, source)
    else:
        if rate is None or input_channels is None:
            raise InvalidArgumentError(f"raw {audio_format} input needs --rate and --channels")
        if rate < 1 or input_channels < 1:
            raise InvalidArgumentError(f"--rate {rate} and --channels {input_channels} must be positive")
        dtype, remaining = RAW_FORMATS[audio_format], None

    frame_bytes = dtype.itemsize * input_channels
    converter = BlockConverter(rate, input_channels, sample_rate, channels)
    position = 0
    leftover = b""
    while True:
        want = block_samples * frame_bytes - len(leftover)
        if remaining is not None:
            want = min(want, remaining)
        data = _read_exact(fo, want) if want > 0 else b""
        if remaining is not None:
            remaining -= len(data)
        data = leftover + data
        usable = len(data) - len(data) % frame_bytes
        leftover = data[usable:]
        at_end = len(data) < block_samples * frame_bytes or remaining == 0

        samples = _to_float(data[:usable], dtype, input_channels)
        check_finite(samples, source)
        out = converter.convert(samples, last=at_end)
        if out.shape[1]:
            yield AudioBlock(out, sample_rate, position)
            position += out.shape[1]
        if at_end:
            break

    if position == 0:
        raise InvalidAudioError(f"{source} contains no audio samples")


async def stream_source(
    receive: MemoryObjectReceiveStream,
    send: MemoryObjectSendStream,
    blocks: Iterator[AudioBlock],
) -> None:
    """Pipeline source over a blocking block iterator (such as `read_stream_blocks`), read in a thread.

    The read may wait for a pipe indefinitely, so cancellation abandons the thread.
    """
    done = object()
    async with receive, send:
        while True:
            block = await anyio.to_thread.run_sync(next, blocks, done, abandon_on_cancel=True)
            if block is done:
                break
            await send.send(block)


def wav_stream_header(sample_rate: int, channels: int, subtype: str = "PCM_16") -> bytes:
    """Return a WAV header for a stream of unknown length (sizes 0xFFFFFFFF)."""
    bits, audio_format = (16, 1) if subtype == "PCM_16" else (32, 3)
    block_align = channels * bits // 8
    return (
        b"RIFF" + struct.pack("<I", _UNKNOWN_SIZE) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, audio_format, channels, sample_rate, sample_rate * block_align, block_align, bits)
        + b"data" + struct.pack("<I", _UNKNOWN_SIZE)
    )


class StreamWriter:
    """Write `[C, n]` float32 blocks to a byte stream as raw PCM or a WAV of unknown length.

    Integer output clamps samples beyond [-1, 1] (counted in `clamped`) instead of wrapping.
    """

    def __init__(self, fo: BinaryIO, audio_format: str, sample_rate: int, channels: int) -> None:
        self.fo = fo
        self.format = check_format(audio_format)
        self.clamped = 0
        self.samples_written = 0
        self._integer = audio_format in ("s16le", "wav")
        if audio_format == "wav":
            fo.write(wav_stream_header(sample_rate, channels))

    def write(self, samples: np.ndarray) -> None:
        """Append a `[C, n]` block and flush it, so a reader downstream gets it at once."""
        samples = np.asarray(samples, dtype=np.float32)
        if self._integer:
            over = int(np.count_nonzero(np.abs(samples) > 1.0))
            if over:
                self.clamped += over
                samples = np.clip(samples, -1.0, 1.0)
            data = np.round(samples.T * 32767.0).astype("<i2").tobytes()
        else:
            data = samples.T.astype("<f4").tobytes()
        self.fo.write(data)
        self.fo.flush()
        self.samples_written += samples.shape[1]


class StreamSink:
    """Pipeline sink writing `AudioBlock`s through a `StreamWriter` (standard output by default)."""

    def __init__(self, audio_format: str, sample_rate: int, channels: int, fo: BinaryIO | None = None) -> None:
        self.fo = fo if fo is not None else sys.stdout.buffer
        self.writer = StreamWriter(self.fo, audio_format, sample_rate, channels)

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        async with receive, send:
            async for block in receive:
                self.writer.write(block.samples)
