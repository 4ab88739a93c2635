"""Audio files read and written block by block, so that hours of audio take little memory.

Reading converts to the model's sample rate (soxr, streaming) and channel count on the way. Writing
clamps samples beyond [-1, 1] when the file stores integers, so they saturate instead of wrapping,
and counts how many were clamped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.errors import InvalidArgumentError, InvalidAudioError
from ecdc_stream.pipeline.records import AudioBlock

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SECONDS = 0.5
INTEGER_SUBTYPES = ("PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32")
# Output extensions and the soundfile formats they select. `writable_formats` keeps those that
# the installed libsndfile can write.
OUTPUT_EXTENSIONS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".aiff": "AIFF", ".aif": "AIFF", ".mp3": "MP3"}


def convert_channels(samples: np.ndarray, channels: int) -> np.ndarray:
    """Convert `[C_in, n]` audio to `[channels, n]`.

    Mono output averages the input channels, mono input is repeated, and from more channels than
    requested the first `channels` are kept (what the original EnCodec package does).
    """
    have = samples.shape[0]
    if have == channels:
        return samples
    if channels == 1:
        return samples.mean(axis=0, keepdims=True, dtype=np.float32)
    if have == 1:
        return np.repeat(samples, channels, axis=0)
    if have > channels:
        return samples[:channels]
    raise InvalidAudioError(f"cannot make {channels} channels from {have}-channel audio")


def check_finite(samples: np.ndarray, source: str) -> None:
    """Raise InvalidAudioError if `samples` hold NaN or infinite values."""
    if not np.all(np.isfinite(samples)):
        raise InvalidAudioError(f"{source} contains NaN or infinite samples; fix or re-export the audio")


class BlockConverter:
    """Streaming sample-rate and channel conversion of `[C_in, n]` blocks to `[channels, m]` float32."""

    def __init__(self, in_rate: int, in_channels: int, out_rate: int, out_channels: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self.out_channels = out_channels
        # Resample after reducing to the output channels (less work when mixing down), or before
        # expanding mono.
        self._resample_channels = min(in_channels, out_channels) if out_channels == 1 or in_channels == 1 else out_channels
        self._stream = (
            soxr.ResampleStream(in_rate, out_rate, self._resample_channels, dtype="float32", quality="HQ")
            if in_rate != out_rate
            else None
        )

    def convert(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        """Convert the next `[C_in, n]` block; `last=True` flushes the resampler's delay line."""
        samples = np.asarray(samples, dtype=np.float32)
        if self._resample_channels != samples.shape[0]:
            samples = convert_channels(samples, self._resample_channels)
        if self._stream is not None:
            samples = self._stream.resample_chunk(np.ascontiguousarray(samples.T), last=last).T
        return np.ascontiguousarray(convert_channels(samples, self.out_channels), dtype=np.float32)


def audio_info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Return soundfile's description of `path`, raising InvalidAudioError if it is not readable audio."""
    if not Path(path).exists():
        raise InvalidAudioError(f"input file {str(path)!r} does not exist")
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise InvalidAudioError(f"cannot read {str(path)!r} as audio: {exc}") from None


def read_blocks(
    path: str | os.PathLike,
    sample_rate: int,
    channels: int,
    block_samples: int | None = None,
    start_seconds: float = 0.0,
    end_seconds: float | None = None,
) -> Iterator[AudioBlock]:
    """Yield the audio of `path` as `AudioBlock`s at `sample_rate` Hz and `channels` channels.

    block_samples: samples per block read from the file (at the file's rate); the last is shorter.
    start_seconds, end_seconds: read only this part of the file.
    Raises InvalidAudioError for a missing or unreadable file, no samples, or NaN/infinite samples.
    """
    info = audio_info(path)
    if block_samples is None:
        block_samples = max(1, int(DEFAULT_BLOCK_SECONDS * info.samplerate))
    first = int(round(start_seconds * info.samplerate))
    last = info.frames if end_seconds is None else min(info.frames, int(round(end_seconds * info.samplerate)))
    if info.frames > 0 and first >= info.frames:
        raise InvalidArgumentError(
            f"--start {start_seconds} s is at or beyond the end of {str(path)!r} ({info.frames / info.samplerate:.2f} s long)"
        )

    converter = BlockConverter(info.samplerate, info.channels, sample_rate, channels)
    position = 0
    total_read = 0
    with sf.SoundFile(str(path)) as sound:
        if first:
            sound.seek(first)
        remaining = last - first if info.frames > 0 else None
        while remaining is None or remaining > 0:
            count = block_samples if remaining is None else min(block_samples, remaining)
            data = sound.read(count, dtype="float32", always_2d=True).T
            at_end = data.shape[1] < count or (remaining is not None and remaining - data.shape[1] <= 0)
            check_finite(data, repr(str(path)))
            total_read += data.shape[1]
            if remaining is not None:
                remaining -= data.shape[1]

            out = converter.convert(data, last=at_end)
            if out.shape[1]:
                yield AudioBlock(out, sample_rate, position)
                position += out.shape[1]
            if at_end:
                break

    if total_read == 0:
        raise InvalidAudioError(f"{str(path)!r} contains no audio samples in the requested range")


async def file_source(
    receive: MemoryObjectReceiveStream,
    send: MemoryObjectSendStream,
    path: str | os.PathLike,
    sample_rate: int,
    channels: int,
    block_samples: int | None = None,
    start_seconds: float = 0.0,
    end_seconds: float | None = None,
) -> None:
    """Pipeline source: the audio of `path` as `AudioBlock`s (see `read_blocks`)."""
    import anyio

    blocks = read_blocks(path, sample_rate, channels, block_samples, start_seconds, end_seconds)
    done = object()
    async with receive, send:
        while True:
            block = await anyio.to_thread.run_sync(next, blocks, done)
            if block is done:
                break
            await send.send(block)


class WavWriter:
    """Write `[C, n]` float32 blocks to a sound file, clamping to [-1, 1] for integer formats.

    The file is written under a temporary name and renamed on a successful `close`, so a failed
    or interrupted run leaves no file that looks complete; `abort` removes it.

    clamped: how many samples were beyond [-1, 1] and clamped (integer formats only).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int,
        channels: int,
        subtype: str | None = None,
        file_format: str | None = None,
    ) -> None:
        """Start writing `path`, in `file_format` or else the format its extension names.

        subtype: soundfile subtype such as "PCM_16" or "FLOAT". None means PCM_16 where the
        format stores it, else the format's default (VORBIS for OGG, MPEG_LAYER_III for MP3).
        Raises InvalidArgumentError for a missing folder, an extension that names no writable
        format, or a subtype the format cannot store.
        """
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise InvalidArgumentError(f"output folder {str(self.path.parent)!r} does not exist")
        if file_format is None:
            file_format = writable_format(self.path)
        if subtype is None:
            subtype = "PCM_16" if sf.check_format(file_format, "PCM_16") else sf.default_subtype(file_format)
        self.sample_rate = sample_rate
        self.channels = channels
        self.subtype = subtype
        self.clamped = 0
        self.samples_written = 0
        self._integer = subtype in INTEGER_SUBTYPES
        self._partial = self.path.with_name(self.path.name + ".partial")
        try:
            self._file = sf.SoundFile(
                str(self._partial), "w", samplerate=sample_rate, channels=channels, subtype=subtype, format=file_format
            )
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"cannot write {str(path)!r} as {file_format}/{subtype}: {exc}") from None

    def write(self, samples: np.ndarray) -> None:
        """Append a `[C, n]` float32 block."""
        samples = np.asarray(samples, dtype=np.float32)
        if self._integer:
            over = np.abs(samples) > 1.0
            count = int(np.count_nonzero(over))
            if count:
                self.clamped += count
                samples = np.clip(samples, -1.0, 1.0)
        self._file.write(samples.T)
        self.samples_written += samples.shape[1]

    def close(self) -> None:
        """Finish the file and move it to its final name."""
        if self._file.closed:
            return
        self._file.close()
        os.replace(self._partial, self.path)
        if self.clamped:
            log.warning("clamped %d samples that were beyond [-1, 1] when writing %s", self.clamped, self.path)

    def abort(self) -> None:
        """Close and delete the partial file."""
        if not self._file.closed:
            self._file.close()
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> WavWriter:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def writable_formats() -> dict[str, str]:
    """Return the output extensions (".wav") and soundfile formats that this libsndfile can write.

    MP3 needs libsndfile 1.1 or later, so builds differ in what they list.
    """
    available = sf.available_formats()
    return {extension: name for extension, name in OUTPUT_EXTENSIONS.items() if name in available}


def writable_format(path: str | os.PathLike) -> str:
    """Return the soundfile format that the extension of `path` names, such as "FLAC" for out.flac.

    Raises InvalidArgumentError, naming the extensions that can be written, when the extension is
    missing, unknown, or names a format this libsndfile cannot write.
    """
    suffix = Path(path).suffix.lower()
    writable = writable_formats()
    if suffix in writable:
        return writable[suffix]

    choices = ", ".join(writable)
    if not suffix:
        problem = "has no extension to choose the audio format by"
    elif suffix in OUTPUT_EXTENSIONS:
        problem = f"needs {OUTPUT_EXTENSIONS[suffix]}, which libsndfile {sf.__libsndfile_version__} cannot write"
    else:
        problem = f"has extension {suffix}, which names no audio format"
    raise InvalidArgumentError(f"output {str(path)!r} {problem}: name it with one of {choices}")


class AudioFileSink:
    """Pipeline sink writing `AudioBlock`s to a sound file through a `WavWriter`.

    Each block is also passed on, so a later stage (speakers, say) can play what is written.

    keep_on_cancel: what a cancelled run (Ctrl-C, SIGTERM) leaves. True suits live sources,
    where stopping is the normal end: the file is closed, valid, with what arrived. False suits
    file inputs: the partial file is removed and an earlier file at `path` stays as it was,
    after an error in any stage too.

    NOTE: an error in another stage reaches this sink as the same cancellation as Ctrl-C, so
    with keep_on_cancel=True it also leaves a valid file with what arrived, replacing an
    earlier one.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int,
        channels: int,
        subtype: str | None = None,
        *,
        keep_on_cancel: bool,
    ) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.channels = channels
        self.subtype = subtype
        self.keep_on_cancel = keep_on_cancel
        self.writer: WavWriter | None = None

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        import anyio

        writer = WavWriter(self.path, self.sample_rate, self.channels, self.subtype)
        self.writer = writer
        ok = False
        try:
            async with receive, send:
                async for block in receive:
                    writer.write(block.samples)
                    await send.send(block)

            # A stage before this one that fails also ends this stream, and its error cancels
            # this task only once the task group hears of it. Yielding first lets that
            # cancellation arrive before the file replaces an earlier one at `path`.
            await anyio.sleep(0)
            ok = True
        except BaseException as exc:
            ok = self.keep_on_cancel and _is_cancellation(exc)
            raise
        finally:
            if ok:
                writer.close()
            else:
                writer.abort()


def _is_cancellation(exc: BaseException) -> bool:
    import anyio

    return isinstance(exc, anyio.get_cancelled_exc_class()) or isinstance(exc, KeyboardInterrupt)
