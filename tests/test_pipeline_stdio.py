"""Audio on pipes: WAV and raw PCM read block by block, written with clamping."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from ecdc_stream.errors import InvalidArgumentError, InvalidAudioError
from ecdc_stream.io.stdio import StreamWriter, read_stream_blocks


def signal(num_samples: int, channels: int) -> np.ndarray:
    t = np.arange(num_samples) / 24000
    return np.stack([0.5 * np.sin(2 * np.pi * (300 + 100 * c) * t) for c in range(channels)], axis=1).astype(np.float32)


def read_all(data: bytes, audio_format: str, **options) -> np.ndarray:
    blocks = list(read_stream_blocks(io.BytesIO(data), audio_format, block_samples=1000, **options))
    starts = [block.start for block in blocks]
    assert starts == sorted(starts)
    return np.concatenate([block.samples for block in blocks], axis=1)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT", "PCM_U8"])
def test_wav_stream_matches_soundfile(subtype):
    audio = signal(5000, 2)
    buffer = io.BytesIO()
    sf.write(buffer, audio, 24000, format="WAV", subtype=subtype)
    expected, _ = sf.read(io.BytesIO(buffer.getvalue()), dtype="float32")

    out = read_all(buffer.getvalue(), "wav", sample_rate=24000, channels=2)
    assert out.shape == (2, 5000)
    np.testing.assert_allclose(out, expected.T, atol=1e-6)


def test_raw_f32le_mixed_down_to_mono():
    audio = signal(3001, 2)
    out = read_all(audio.astype("<f4").tobytes(), "f32le", sample_rate=24000, channels=1, rate=24000, input_channels=2)
    np.testing.assert_allclose(out[0], audio.mean(axis=1), atol=1e-7)


def test_raw_s16le_resampled():
    audio = (signal(16000, 1) * 32767).astype("<i2")
    out = read_all(audio.tobytes(), "s16le", sample_rate=24000, channels=1, rate=16000, input_channels=1)
    assert abs(out.shape[1] - 24000) <= 2


def test_raw_without_rate_is_rejected():
    with pytest.raises(InvalidArgumentError, match="--rate and --channels"):
        read_all(b"\0" * 100, "s16le", sample_rate=24000, channels=1)


def test_nan_samples_are_rejected():
    audio = signal(100, 1)
    audio[50] = np.nan
    with pytest.raises(InvalidAudioError, match="NaN"):
        read_all(audio.astype("<f4").tobytes(), "f32le", sample_rate=24000, channels=1, rate=24000, input_channels=1)


def test_empty_and_garbage_input_are_rejected():
    with pytest.raises(InvalidAudioError, match="no audio"):
        read_all(b"", "s16le", sample_rate=24000, channels=1, rate=24000, input_channels=1)
    with pytest.raises(InvalidAudioError, match="not a WAV"):
        read_all(b"hello world, not audio", "wav", sample_rate=24000, channels=1)


def test_stream_writer_wav_of_unknown_length_clamps():
    buffer = io.BytesIO()
    writer = StreamWriter(buffer, "wav", 24000, 1)
    writer.write(np.array([[0.5, 2.0, -3.0, 0.0]], dtype=np.float32))
    assert writer.clamped == 2

    data = buffer.getvalue()
    assert data[:4] == b"RIFF"
    samples = np.frombuffer(data[44:], dtype="<i2")
    assert samples.tolist() == [16384, 32767, -32767, 0]
    # The WAV stream reader accepts what the writer wrote.
    out = read_all(data, "wav", sample_rate=24000, channels=1)
    assert out.shape == (1, 4)
