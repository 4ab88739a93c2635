"""A real `ecdc-stream simulate` process stopped by SIGINT or SIGTERM exits as interrupted.

The simulator runs in a child process with the tiny 24 kHz model registered, on five minutes of
audio, so that it is still running when the signal comes. An interrupted run must leave the
output file as it was before the run, and no temporary files beside it.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]

SIMULATOR = """
import json, sys
from pathlib import Path
from ecdc_stream.cli import main
from ecdc_stream.model import EncodecConfig, config_factories, register_model
golden = Path(sys.argv[1])
config = EncodecConfig.from_dict(json.loads((golden / "config.json").read_text()), ignore_unknown=True)
register_model("tiny_24khz", *config_factories(config, golden / "model.pt", golden / "lm.pt"))
raise SystemExit(main(sys.argv[2:]))
"""

PREVIOUS_OUTPUT = b"output of an earlier run"


@pytest.fixture(scope="module")
def long_recording(audio_dir, tmp_path_factory) -> Path:
    audio, rate = sf.read(audio_dir / "test_24k.wav", dtype="float32")
    path = tmp_path_factory.mktemp("interrupt_input") / "input.wav"
    sf.write(path, np.tile(audio, 15), rate)  # 300 s
    return path


def start_simulator(golden_dir: Path, recording: Path, output: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-c", SIMULATOR, str(golden_dir / "tiny_24khz"),
        "simulate", str(recording), str(output), "--model", "tiny_24khz", "--bandwidth", "1.2", *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_file(process: subprocess.Popen, folder: Path, suffix: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(path.name.endswith(suffix) for path in folder.iterdir()):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, f"no file ending in {suffix} appeared in time"
        time.sleep(0.05)


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        while text.encode() not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not logged in time; standard error so far: {seen.decode()}"
            if selector.select(remaining):
                line = process.stderr.readline()
                assert line, f"the simulator exited before logging {text!r}: {seen.decode()}"
                seen += line


def stop(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return process.returncode, stderr.decode()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_stream_keeps_previous_output(tiny_models, golden_dir, long_recording, tmp_path, signum):
    output = tmp_path / "out.wav"
    output.write_bytes(PREVIOUS_OUTPUT)
    process = start_simulator(golden_dir, long_recording, output, "--loss", "0.1", "-q")
    # The receiver's sound file writer has started on the temporary output.
    wait_for_file(process, tmp_path, ".partial")

    status, stderr = stop(process, signum)
    assert status == 130, stderr
    assert stderr.strip().endswith("ecdc-stream: interrupted")
    assert "error" not in stderr
    assert output.read_bytes() == PREVIOUS_OUTPUT
    assert [path.name for path in tmp_path.iterdir()] == ["out.wav"]


def test_sigint_before_header_exits_interrupted(tiny_models, golden_dir, long_recording, tmp_path):
    # Every message is dropped, so the receiver is still waiting for a header when the signal comes.
    output = tmp_path / "out.wav"
    process = start_simulator(golden_dir, long_recording, output, "--loss", "1", "--fault-layer", "wire")
    wait_for_line(process, "through the simulated link")
    time.sleep(0.5)

    status, stderr = stop(process, signal.SIGINT)
    assert status == 130, stderr
    assert stderr.strip().endswith("ecdc-stream: interrupted")
    assert "header" not in stderr
    assert "error" not in stderr
    assert list(tmp_path.iterdir()) == []
