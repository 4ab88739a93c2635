"""Microphone and speakers through PortAudio (sounddevice), as pipeline stages.

The PortAudio callbacks only copy samples: the microphone's into a bounded queue, the speakers'
out of a `JitterBuffer`. Everything else happens in the pipeline's tasks. Input overflows,
input dropped for lack of queue room, output underruns and audio dropped to catch up are counted
and logged as warnings, not raised.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.errors import EcdcError, InvalidArgumentError
from ecdc_stream.io.audio_files import BlockConverter
from ecdc_stream.pipeline.records import AudioBlock, Gap

log = logging.getLogger(__name__)


class AudioDeviceError(EcdcError):
    """PortAudio is missing, or an audio device cannot be opened."""


def sounddevice_module() -> Any:
    """Import sounddevice, raising AudioDeviceError with the fix when PortAudio is missing."""
    try:
        import sounddevice
    except OSError as exc:
        raise AudioDeviceError(
            f"audio devices need the PortAudio library ({exc}); install it, e.g. `apt-get install libportaudio2`"
        ) from None
    return sounddevice


@dataclass(frozen=True)
class DeviceInfo:
    """One PortAudio device: its index, name, host API, channel counts and default rate in Hz."""

    index: int
    name: str
    host_api: str
    max_input_channels: int
    max_output_channels: int
    default_sample_rate: float
    default_input: bool
    default_output: bool


def list_devices() -> list[DeviceInfo]:
    """Return the audio devices PortAudio can open."""
    sd = sounddevice_module()
    host_apis = sd.query_hostapis()
    default_input, default_output = sd.default.device
    devices = []
    for index, device in enumerate(sd.query_devices()):
        devices.append(
            DeviceInfo(
                index=index,
                name=device["name"],
                host_api=host_apis[device["hostapi"]]["name"],
                max_input_channels=device["max_input_channels"],
                max_output_channels=device["max_output_channels"],
                default_sample_rate=device["default_samplerate"],
                default_input=index == default_input,
                default_output=index == default_output,
            )
        )
    return devices


def parse_device(value: str | int | None) -> int | str | None:
    """Turn a `--device` value into what sounddevice takes: an index, a name substring, or None."""
    if value is None or isinstance(value, int):
        return value
    value = value.strip()
    if value == "" or value == "default":
        return None
    return int(value) if value.isdigit() else value


def _open_stream(factory: Any, sample_rate: int, channels: int, device: Any, **options: Any) -> tuple[Any, int]:
    """Open a PortAudio stream at `sample_rate`, or at the device's default rate if it refuses.

    Returns the stream and the rate it runs at.
    """
    sd = sounddevice_module()
    try:
        return factory(samplerate=sample_rate, channels=channels, device=device, dtype="float32", **options), sample_rate
    except (sd.PortAudioError, ValueError) as first_error:
        kind = "input" if factory is sd.InputStream else "output"
        try:
            rate = int(sd.query_devices(device, kind)["default_samplerate"])
            stream = factory(samplerate=rate, channels=channels, device=device, dtype="float32", **options)
        except (sd.PortAudioError, ValueError):
            raise AudioDeviceError(
                f"cannot open audio {kind} device {device if device is not None else 'default'}: {first_error}; "
                "list the devices with `ecdc-stream devices`"
            ) from None
        log.info("the %s device runs at %d Hz; converting from/to %d Hz", kind, rate, sample_rate)
        return stream, rate


class Microphone:
    """Pipeline source: `AudioBlock`s from an input device, at `sample_rate` Hz and `channels` channels.

    duration_seconds: stop after this much audio (None: until the pipeline is stopped).
    block_seconds: audio per block sent downstream.
    queue_seconds: audio the callback may queue while the pipeline is busy. Input beyond it is
    dropped and counted in `dropped_samples`, so the recording gets shorter instead of stalling.
    overflows: how often PortAudio reported lost input.
    on_block: optional callable given each block, for a level meter.
    """

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        device: int | str | None = None,
        duration_seconds: float | None = None,
        block_seconds: float = 0.05,
        queue_seconds: float = 10.0,
        on_block: Any = None,
    ) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.device = parse_device(device)
        self.duration_seconds = duration_seconds
        self.block_seconds = block_seconds
        self.queue_seconds = queue_seconds
        self.on_block = on_block
        self.overflows = 0
        self.dropped_samples = 0
        self.samples = 0

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        sd = sounddevice_module()
        captured: queue.Queue[np.ndarray] = queue.Queue(maxsize=max(1, int(self.queue_seconds / self.block_seconds)))

        def callback(indata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
            # Runs on PortAudio's thread: copy and count, nothing else.
            if status.input_overflow:
                self.overflows += 1
            try:
                captured.put_nowait(indata.copy())
            except queue.Full:
                self.dropped_samples += frames

        stream, rate = _open_stream(
            sd.InputStream, self.sample_rate, self.channels, self.device, callback=callback,
            blocksize=max(1, int(self.block_seconds * self.sample_rate)),
        )
        converter = BlockConverter(rate, self.channels, self.sample_rate, self.channels) if rate != self.sample_rate else None
        limit = None if self.duration_seconds is None else int(round(self.duration_seconds * self.sample_rate))

        async with receive, send:
            try:
                stream.start()
                while limit is None or self.samples < limit:
                    try:
                        data = await anyio.to_thread.run_sync(captured.get, True, 0.2, abandon_on_cancel=True)
                    except queue.Empty:
                        continue
                    await self._send(send, data, converter, limit)
            finally:
                stream.stop()
                stream.close()
                # Audio captured before the stop still goes out, so a stopped recording keeps it.
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    while limit is None or self.samples < limit:
                        try:
                            data = captured.get_nowait()
                        except queue.Empty:
                            break
                        await self._send(send, data, converter, limit)
        self._report()

    async def _send(self, send: MemoryObjectSendStream, data: np.ndarray, converter: Any, limit: int | None) -> None:
        samples = np.ascontiguousarray(data.T, dtype=np.float32)
        if converter is not None:
            samples = converter.convert(samples)
        if limit is not None:
            samples = samples[:, : limit - self.samples]
        if samples.shape[1] == 0:
            return
        block = AudioBlock(samples, self.sample_rate, self.samples)
        self.samples += samples.shape[1]
        if self.on_block is not None:
            self.on_block(block)
        await send.send(block)

    def _report(self) -> None:
        if self.overflows or self.dropped_samples:
            log.warning(
                "microphone: %d input overflows, %.2f s of input dropped because the pipeline fell behind",
                self.overflows,
                self.dropped_samples / self.sample_rate,
            )


class JitterBuffer:
    """A ring buffer of `[C, n]` audio between a producer task and an audio callback.

    capacity_samples: the maximum audio it holds, which bounds the playback latency.
    live: when a write would overflow, drop the oldest audio (counted in `dropped_samples`)
    so that playback catches up with a live stream; otherwise the writer waits for room.
    start_samples: audio to collect before the first read returns samples, and after an
    underrun before output resumes, so that playback does not stutter sample by sample.
    underruns: reads that found less audio than requested after playback started; the missing
    part is played as silence.
    """

    def __init__(self, channels: int, capacity_samples: int, start_samples: int = 0, live: bool = False) -> None:
        if capacity_samples < 1:
            raise InvalidArgumentError(f"the jitter buffer needs room for at least 1 sample, got {capacity_samples}")
        self.channels = channels
        self.capacity = capacity_samples
        self.start_samples = min(start_samples, capacity_samples)
        self.live = live
        self._data = np.zeros((capacity_samples, channels), dtype=np.float32)
        self._read = 0
        self._level = 0
        self._lock = threading.Lock()
        self._playing = False
        self.ended = False
        self.underruns = 0
        self.underrun_samples = 0
        self.dropped_samples = 0
        self.samples_played = 0
        self.first_play_time: float | None = None

    @property
    def level(self) -> int:
        """Samples waiting to be played."""
        return self._level

    def space(self) -> int:
        """Room for samples before the buffer is full."""
        return self.capacity - self._level

    def write(self, samples: np.ndarray) -> int:
        """Append `[C, n]` audio and return how many samples were written.

        Not live: writes only what fits (the caller waits and writes the rest).
        Live: writes everything, dropping the oldest samples if needed; returns n.
        """
        frames = np.ascontiguousarray(samples.T, dtype=np.float32)
        with self._lock:
            if self.live and frames.shape[0] > self.space():
                overflow = frames.shape[0] - self.space()
                if frames.shape[0] > self.capacity:
                    # More than the whole buffer arrived at once: only its newest part fits.
                    self.dropped_samples += frames.shape[0] - self.capacity
                    overflow -= frames.shape[0] - self.capacity
                    frames = frames[-self.capacity :]
                self._read = (self._read + overflow) % self.capacity
                self._level -= overflow
                self.dropped_samples += overflow
            count = min(frames.shape[0], self.space())
            start = (self._read + self._level) % self.capacity
            first = min(count, self.capacity - start)
            self._data[start : start + first] = frames[:first]
            self._data[: count - first] = frames[first:count]
            self._level += count
        return count if not self.live else samples.shape[-1]

    def read_into(self, out: np.ndarray) -> None:
        """Fill `out` `[frames, C]` (the PortAudio callback's buffer) with the next samples."""
        requested = out.shape[0]
        with self._lock:
            if not self._playing:
                if self._level >= max(1, self.start_samples) or (self.ended and self._level > 0):
                    self._playing = True
                    if self.first_play_time is None:
                        self.first_play_time = time.monotonic()
                else:
                    out.fill(0)
                    return
            count = min(requested, self._level)
            first = min(count, self.capacity - self._read)
            out[:first] = self._data[self._read : self._read + first]
            out[first:count] = self._data[: count - first]
            out[count:] = 0
            self._read = (self._read + count) % self.capacity
            self._level -= count
            self.samples_played += count
            if count < requested and not self.ended:
                self.underruns += 1
                self.underrun_samples += requested - count
                # Wait for `start_samples` again instead of playing every late sample at once.
                self._playing = False


class Speakers:
    """Pipeline sink: plays `AudioBlock`s (and silence for `Gap`s) on an output device.

    Playback starts once `start_seconds` of audio is buffered (so, for a decoder, after the first
    chunk) or the input ends. `max_latency_seconds` bounds the buffered audio: with `live=True`
    (network streams) older audio is dropped to catch up; otherwise (files) the pipeline waits.
    """

    def __init__(
        self,
        sample_rate: int,
        channels: int,
        device: int | str | None = None,
        start_seconds: float = 0.1,
        max_latency_seconds: float = 1.0,
        live: bool = False,
        block_seconds: float = 0.02,
    ) -> None:
        self.sample_rate = sample_rate
        self.channels = channels
        self.device = parse_device(device)
        self.live = live
        self.block_seconds = block_seconds
        capacity = max(1, int(max_latency_seconds * sample_rate))
        self.buffer = JitterBuffer(channels, capacity, int(start_seconds * sample_rate), live=live)

    @property
    def first_sound_time(self) -> float | None:
        """`time.monotonic()` when the first samples went to the device, or None before."""
        return self.buffer.first_play_time

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        sd = sounddevice_module()
        buffer = self.buffer

        def callback(outdata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
            # Runs on PortAudio's thread: copy out of the ring buffer, nothing else.
            buffer.read_into(outdata)

        stream, rate = _open_stream(
            sd.OutputStream, self.sample_rate, self.channels, self.device, callback=callback,
            blocksize=max(1, int(self.block_seconds * self.sample_rate)),
        )
        converter = BlockConverter(self.sample_rate, self.channels, rate, self.channels) if rate != self.sample_rate else None

        async with receive, send:
            try:
                stream.start()
                async for item in receive:
                    if isinstance(item, Gap):
                        samples = np.zeros((self.channels, item.num_samples), dtype=np.float32)
                    else:
                        samples = item.samples
                    if converter is not None:
                        samples = converter.convert(samples)
                    await self._write(samples)
                buffer.ended = True
                # Let the buffered audio play out, then one more device block. A device that
                # stopped pulling samples gets a few seconds' grace, not an endless wait.
                with anyio.move_on_after(buffer.level / self.sample_rate + 5.0):
                    while buffer.level > 0:
                        await anyio.sleep(0.02)
                if buffer.level > 0:
                    log.warning("speakers: the device stopped taking samples; %d were not played", buffer.level)
                await anyio.sleep(max(0.05, stream.latency + self.block_seconds))
            finally:
                buffer.ended = True
                stream.stop()
                stream.close()
                self._report()

    async def _write(self, samples: np.ndarray) -> None:
        written = 0
        while written < samples.shape[-1]:
            count = self.buffer.write(samples[:, written:])
            written += count
            if written < samples.shape[-1]:
                await anyio.sleep(0.01)

    def _report(self) -> None:
        if self.buffer.underruns or self.buffer.dropped_samples:
            log.warning(
                "speakers: %d underruns (%.2f s of silence inserted), %.2f s of late audio dropped to catch up",
                self.buffer.underruns,
                self.buffer.underrun_samples / self.sample_rate,
                self.buffer.dropped_samples / self.sample_rate,
            )
