"""`receive --play OUT.wav`: the received audio is both played and written in full."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from test_devices import pulseaudio_running


@pytest.mark.audio_device
def test_receive_plays_and_writes(tmp_path: Path, weights_dir: Path):
    if not pulseaudio_running():
        pytest.skip("no PulseAudio server is reachable (run .ci/pulseaudio.sh)")
    source = tmp_path / "tone.wav"
    t = np.arange(2 * 24000) / 24000
    sf.write(source, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 24000)
    received = tmp_path / "received.wav"
    command = [sys.executable, "-m", "ecdc_stream"]

    sender = subprocess.Popen(
        [*command, "send", str(source), "-", "--weights", str(weights_dir), "-q"], stdout=subprocess.PIPE
    )
    receiver = subprocess.run(
        [*command, "receive", "-", str(received), "--play", "--weights", str(weights_dir), "-q"],
        stdin=sender.stdout,
        capture_output=True,
        text=True,
        timeout=300,
    )
    sender.stdout.close()
    assert sender.wait(timeout=60) == 0
    assert receiver.returncode == 0, receiver.stderr
    assert sf.info(str(received)).frames == len(t)
