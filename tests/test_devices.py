"""Audio devices: the jitter buffer alone, and real PortAudio streams on a PulseAudio null sink.

The real-device test plays a decoded file through the `play` path into the default sink while
the `record` path captures the sink's monitor, and checks that the capture correlates with what
was played. `.ci/pulseaudio.sh` sets up such a sink; the test skips only without a server.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import ExitStack

import anyio
import numpy as np
import pytest
import soundfile as sf

from ecdc_stream.io.devices import JitterBuffer, Speakers, list_devices
from ecdc_stream.model import load_model
from ecdc_stream.pipeline.files import decode_file, decode_pipeline_for, encode_file, open_ecdc_input
from ecdc_stream.pipeline.live import record_pipeline


def ramp(start: int, count: int, channels: int = 1) -> np.ndarray:
    return np.tile(np.arange(start, start + count, dtype=np.float32), (channels, 1))


def read(buffer: JitterBuffer, frames: int, channels: int = 1) -> np.ndarray:
    out = np.full((frames, channels), -1.0, dtype=np.float32)
    buffer.read_into(out)
    return out[:, 0]


def test_jitter_buffer_prebuffers_then_plays():
    buffer = JitterBuffer(1, capacity_samples=100, start_samples=30)
    buffer.write(ramp(0, 20))
    assert np.all(read(buffer, 10) == 0)  # not started: silence, no underrun
    assert buffer.underruns == 0
    buffer.write(ramp(20, 20))
    assert read(buffer, 25).tolist() == list(range(25))
    assert read(buffer, 10).tolist() == list(range(25, 35))


def test_jitter_buffer_counts_underrun_and_rebuffers():
    buffer = JitterBuffer(1, capacity_samples=100, start_samples=10)
    buffer.write(ramp(0, 15))
    out = read(buffer, 20)
    assert out[:15].tolist() == list(range(15))
    assert np.all(out[15:] == 0)
    assert buffer.underruns == 1
    assert buffer.underrun_samples == 5

    # After the underrun it waits for `start_samples` again instead of playing a trickle.
    buffer.write(ramp(15, 5))
    assert np.all(read(buffer, 5) == 0)
    buffer.write(ramp(20, 5))
    assert read(buffer, 10).tolist() == list(range(15, 25))


def test_jitter_buffer_live_drops_oldest_to_bound_latency():
    buffer = JitterBuffer(1, capacity_samples=50, start_samples=10, live=True)
    buffer.write(ramp(0, 40))
    buffer.write(ramp(40, 30))  # 70 samples for 50 places: the oldest 20 go
    assert buffer.level == 50
    assert buffer.dropped_samples == 20
    assert read(buffer, 5).tolist() == list(range(20, 25))

    # A burst larger than the whole buffer keeps only its newest part.
    buffer.write(ramp(100, 120))
    assert buffer.level == 50
    assert read(buffer, 3).tolist() == [170, 171, 172]


def test_jitter_buffer_not_live_writes_only_what_fits():
    buffer = JitterBuffer(2, capacity_samples=10)
    assert buffer.write(ramp(0, 25, channels=2)) == 10
    assert buffer.dropped_samples == 0
    out = np.zeros((4, 2), dtype=np.float32)
    buffer.read_into(out)
    assert out[:, 1].tolist() == [0, 1, 2, 3]
    assert buffer.write(ramp(10, 25, channels=2)) == 4


def test_jitter_buffer_wraps_around():
    buffer = JitterBuffer(1, capacity_samples=16, start_samples=1)
    played = []
    for index in range(20):
        buffer.write(ramp(index * 7, 7))
        played += read(buffer, 7).tolist()
    assert played == list(range(140))
    assert buffer.underruns == 0


def pulseaudio_running() -> bool:
    if shutil.which("pactl") is None:
        return False
    return subprocess.run(["pactl", "info"], capture_output=True, timeout=10).returncode == 0


def best_alignment(captured: np.ndarray, played: np.ndarray) -> tuple[int, float]:
    """Return the delay (samples) of `played` in `captured` and the normalised correlation there."""
    size = 1 << int(np.ceil(np.log2(len(captured) + len(played))))
    spectrum = np.fft.rfft(captured, size) * np.conj(np.fft.rfft(played, size))
    correlation = np.fft.irfft(spectrum, size)[: len(captured) - len(played) + 1]
    delay = int(np.argmax(correlation))
    window = captured[delay : delay + len(played)]
    score = float(np.dot(window, played) / (np.linalg.norm(window) * np.linalg.norm(played) + 1e-12))
    return delay, score


class Tap:
    """A stage that keeps a copy of every audio block passing through."""

    def __init__(self) -> None:
        self.blocks: list[np.ndarray] = []

    async def run(self, receive, send) -> None:
        async with receive, send:
            async for block in receive:
                self.blocks.append(block.samples.copy())
                await send.send(block)


@pytest.mark.audio_device
def test_play_into_null_sink_is_captured_by_record(tiny_models, golden_dir, tmp_path):
    if not pulseaudio_running():
        pytest.skip("no PulseAudio server is reachable (run .ci/pulseaudio.sh)")
    assert any(device.max_output_channels > 0 for device in list_devices())

    # 14 s of audio. After the decoder, the pipeline holds at most about 8.5 s: three streams of
    # 4 blocks of 0.5 s, one block in each stage's hands and the speakers' 1 s buffer. So
    # playback must start before the decoder is done, however fast the decoder is.
    model = load_model("tiny_24khz")
    source, rate = sf.read(golden_dir / "tiny_24khz" / "input.wav", dtype="float32")
    long_input = tmp_path / "input.wav"
    sf.write(long_input, np.tile(source, 7), rate, subtype="FLOAT")
    stream = tmp_path / "in.ecdc"
    encode_file(long_input, stream, model=model, bandwidth=1.2, chunk_seconds=0.5)
    decoded = tmp_path / "decoded.wav"
    decode_file(stream, decoded, model=model, subtype="FLOAT")
    played, _ = sf.read(decoded, dtype="float32")

    recording = tmp_path / "recording.ecdc"
    tap = Tap()
    decoded_at: list[float] = []

    async def audio_clock(receive, send) -> None:
        async with receive, send:
            async for block in receive:
                decoded_at.append(time.monotonic())
                await send.send(block)
    speakers: list[Speakers] = []

    async def main() -> None:
        with ExitStack() as stack:
            out = stack.enter_context(open(recording, "wb"))
            recorder = record_pipeline(out, model=model, bandwidth=1.2, chunk_seconds=0.5)
            recorder.pipeline.insert_after("source", "tap", tap)

            fo, params = open_ecdc_input(stream, stack)

            def make_speakers(rate: int, channels: int) -> Speakers:
                speakers.append(Speakers(rate, channels, start_seconds=0.3))
                return speakers[0]

            player = decode_pipeline_for(fo, params, make_speakers, model=model, batch=1)
            player.insert_after("decoder", "clock", audio_clock)
            with anyio.fail_after(60):
                async with anyio.create_task_group() as group:
                    group.start_soon(recorder.pipeline.run)
                    await anyio.sleep(0.5)
                    await player.run()
                    await anyio.sleep(0.5)
                    recorder.pipeline.stop()

    started = time.monotonic()
    anyio.run(main)
    assert time.monotonic() - started < 60

    # Everything decoded was played, and the sound started before the decoder was done.
    buffer = speakers[0].buffer
    assert buffer.samples_played == len(played)
    assert speakers[0].first_sound_time < decoded_at[-1]
    assert buffer.underruns == 0, f"{buffer.underruns} underruns: the decoder fell behind the speakers"

    captured = np.concatenate(tap.blocks, axis=1)[0]
    assert len(captured) > len(played)
    delay, score = best_alignment(captured, played)
    assert score > 0.9, f"capture correlates {score:.3f} with the played audio at delay {delay}"

    # The recording itself is a valid stream covering what was captured.
    recorded = tmp_path / "recorded.wav"
    report = decode_file(recording, recorded, model=model)
    assert report.samples == len(captured), f"{report.samples} samples decoded, {len(captured)} captured"


@pytest.mark.audio_device
def test_devices_command_lists_defaults(capsys):
    if not pulseaudio_running():
        pytest.skip("no PulseAudio server is reachable (run .ci/pulseaudio.sh)")
    from ecdc_stream.cli import main

    assert main(["devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("<") for line in lines), lines
    assert any(line[1:2] == ">" for line in lines), lines
