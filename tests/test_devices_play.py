"""`ecdc-stream play` as a process: from a file or standard input, stopped by Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ecdc_stream.model import load_model
from ecdc_stream.pipeline.files import encode_file

from test_devices import pulseaudio_running

REPO = Path(__file__).resolve().parents[1]

PLAYER = """
import json, sys
from pathlib import Path
from ecdc_stream.cli import main
from ecdc_stream.model import EncodecConfig, config_factories, register_model
golden = Path(sys.argv[1])
config = EncodecConfig.from_dict(json.loads((golden / "config.json").read_text()), ignore_unknown=True)
register_model("tiny_24khz", *config_factories(config, golden / "model.pt", golden / "lm.pt"))
raise SystemExit(main(sys.argv[2:]))
"""

pytestmark = pytest.mark.audio_device


@pytest.fixture()
def stream(tiny_models, golden_dir, tmp_path) -> Path:
    if not pulseaudio_running():
        pytest.skip("no PulseAudio server is reachable (run .ci/pulseaudio.sh)")
    audio, rate = sf.read(golden_dir / "tiny_24khz" / "input.wav", dtype="float32")
    long_input = tmp_path / "input.wav"
    sf.write(long_input, np.tile(audio, 5), rate, subtype="FLOAT")  # 10 s
    path = tmp_path / "in.ecdc"
    encode_file(long_input, path, model=load_model("tiny_24khz"), bandwidth=1.2, chunk_seconds=0.5)
    return path


def player(golden_dir: Path, *arguments: str, stdin=None) -> subprocess.Popen:
    command = [sys.executable, "-c", PLAYER, str(golden_dir / "tiny_24khz"), "play", *arguments]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(command, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_play_stops_cleanly_on_ctrl_c(stream, golden_dir):
    process = player(golden_dir, str(stream), "--start", "2")
    deadline = time.monotonic() + 60
    first_line = process.stderr.readline().decode()
    assert "playing" in first_line
    assert time.monotonic() < deadline
    time.sleep(2.0)
    assert process.poll() is None
    stopped = time.monotonic()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)

    # The first Ctrl-C silences the player at once and closes the device.
    assert process.returncode == 0, stderr.decode()
    assert time.monotonic() - stopped < 3
    assert "played" in stderr.decode()


def test_play_from_standard_input(stream, golden_dir):
    with open(stream, "rb") as source:
        process = player(golden_dir, "-", stdin=source)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert "played 10.00 s" in stderr.decode()


def test_live_recording_piped_into_player(tiny_models, golden_dir):
    if not pulseaudio_running():
        pytest.skip("no PulseAudio server is reachable (run .ci/pulseaudio.sh)")
    recorder_command = [
        sys.executable, "-c", PLAYER, str(golden_dir / "tiny_24khz"),
        "record", "-", "--input", str(golden_dir / "tiny_24khz" / "input.wav"), "--duration", "2",
        "--model", "tiny_24khz", "--bandwidth", "1.2", "--chunk-seconds", "0.25", "--quiet",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    recorder = subprocess.Popen(recorder_command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process = player(golden_dir, "-", "--live", stdin=recorder.stdout)
    recorder.stdout.close()
    _, stderr = process.communicate(timeout=90)
    recorder.wait(timeout=30)

    assert recorder.returncode == 0, recorder.stderr.read().decode()
    assert process.returncode == 0, stderr.decode()
    summary = re.search(r"played ([\d.]+) s; (\d+) underruns, ([\d.]+) s dropped", stderr.decode())
    assert summary is not None, stderr.decode()
    played, dropped = float(summary.group(1)), float(summary.group(3))
    # Live playback drops what piles up while the device stalls (PulseAudio can take a second
    # or two to start pulling samples), and nothing else.
    assert played + dropped == pytest.approx(2.0, abs=0.011)
    assert played >= 0.5
