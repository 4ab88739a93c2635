"""The main job on real recordings: encode and decode with both models, with and without the LM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from ecdc_stream.cli import main

MODEL_RATES = {"24khz": (24000, 1), "48khz": (48000, 2)}
RECORDINGS = ["test_24k.wav", "test_48k.wav"]


@pytest.mark.slow
@pytest.mark.parametrize("recording", RECORDINGS)
@pytest.mark.parametrize("model", sorted(MODEL_RATES))
@pytest.mark.parametrize("coding", ["--lm", "--no-lm"])
def test_encode_decode_recording(tmp_path: Path, audio_dir: Path, weights_dir: Path, recording, model, coding, capsys):
    source = audio_dir / recording
    encoded = tmp_path / "out.ecdc"
    decoded = tmp_path / "out.wav"
    sample_rate, channels = MODEL_RATES[model]
    info = sf.info(str(source))
    expected_length = info.frames * sample_rate // info.samplerate

    status = main(["encode", str(source), str(encoded), "--model", model, coding, "--weights", str(weights_dir), "-q"])
    assert status == 0
    assert encoded.stat().st_size > 100

    status = main(["decode", str(encoded), str(decoded), "--weights", str(weights_dir), "-q"])
    assert status == 0
    out = sf.info(str(decoded))
    assert out.samplerate == sample_rate
    assert out.channels == channels
    assert out.frames == expected_length

    capsys.readouterr()
    assert main(["inspect", str(encoded), "--json"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["samples"] == expected_length
    assert description["format"] == ("acv=4" if coding == "--lm" else "original EnCodec stream")
