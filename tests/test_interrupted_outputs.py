"""What real `decode` and `receive` processes leave at OUT when SIGINT or SIGTERM stops them.

Decoding a file must leave no OUT, and an earlier OUT as it was. A live input (a stream on
standard input, or a TCP link) keeps a valid, shorter OUT with what arrived. The commands run in
child processes with the tiny 24 kHz model registered.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ecdc_stream.model import load_model
from ecdc_stream.pipeline.files import encode_file
from test_simulate_interrupt import SIMULATOR as TINY_CLI
from test_simulate_interrupt import stop

REPO = Path(__file__).resolve().parents[1]
PREVIOUS_OUTPUT = b"output of an earlier run"
# One second of 24 kHz mono PCM_16 audio, in bytes: enough to show that decoding had begun.
ONE_SECOND_BYTES = 48_000


@pytest.fixture(scope="module")
def long_stream(tiny_models, audio_dir, tmp_path_factory) -> tuple[Path, int]:
    """Return a 600 s acv=4 stream of the tiny model, long enough to be still decoding at the signal, and its length."""
    audio, rate = sf.read(audio_dir / "test_24k.wav", dtype="float32")
    folder = tmp_path_factory.mktemp("long_stream")
    recording = folder / "input.wav"
    sf.write(recording, np.tile(audio, 30), rate)
    stream = folder / "input.ecdc"
    report = encode_file(recording, stream, model=load_model("tiny_24khz"), bandwidth=1.2)
    return stream, report.samples


def start_tiny_cli(golden_dir: Path, *argv: str, stdin: int | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", TINY_CLI, str(golden_dir / "tiny_24khz"), *argv]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(command, env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_size(process: subprocess.Popen, path: Path, size: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size >= size):
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, f"{path.name} did not reach {size} bytes in time"
        time.sleep(0.02)


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_decode_file_interrupted_keeps_earlier_output(golden_dir, long_stream, tmp_path, signum):
    stream, _ = long_stream
    output = tmp_path / "out.wav"
    output.write_bytes(PREVIOUS_OUTPUT)
    process = start_tiny_cli(golden_dir, "decode", str(stream), str(output), "-q")
    wait_for_size(process, tmp_path / "out.wav.partial", ONE_SECOND_BYTES)

    status, stderr = stop(process, signum)
    assert status == 130, stderr
    assert stderr.strip().endswith("ecdc-stream: interrupted")
    assert output.read_bytes() == PREVIOUS_OUTPUT
    assert [path.name for path in tmp_path.iterdir()] == ["out.wav"]


def test_decode_file_interrupted_leaves_no_output(golden_dir, long_stream, tmp_path):
    stream, _ = long_stream
    process = start_tiny_cli(golden_dir, "decode", str(stream), str(tmp_path / "out.wav"), "-q")
    wait_for_size(process, tmp_path / "out.wav.partial", ONE_SECOND_BYTES)

    status, stderr = stop(process, signal.SIGINT)
    assert status == 130, stderr
    assert list(tmp_path.iterdir()) == []


def test_decode_stdin_interrupted_keeps_what_arrived(golden_dir, long_stream, tmp_path):
    stream, total_samples = long_stream
    output = tmp_path / "out.wav"
    process = start_tiny_cli(golden_dir, "decode", "-", str(output), "-q", stdin=subprocess.PIPE)
    # Half the stream arrives and the writer stays connected, as a live recorder would.
    data = stream.read_bytes()
    process.stdin.write(data[: len(data) // 2])
    process.stdin.flush()
    wait_for_size(process, tmp_path / "out.wav.partial", ONE_SECOND_BYTES)

    # `stop` closes standard input after the signal, as a recorder stopped by the same Ctrl-C does.
    status, stderr = stop(process, signal.SIGINT)
    assert status == 130, stderr
    assert [path.name for path in tmp_path.iterdir()] == ["out.wav"]
    frames = sf.info(str(output)).frames
    assert 24_000 <= frames < total_samples


def test_receive_interrupted_keeps_what_arrived(golden_dir, audio_dir, tmp_path):
    url = f"tcp://127.0.0.1:{free_tcp_port()}"
    output = tmp_path / "received.wav"
    receiver = start_tiny_cli(golden_dir, "receive", url, str(output), "-q")
    # The sender sends at the pace of live audio, so the 20 s recording is still streaming at the signal.
    sender = start_tiny_cli(
        golden_dir, "send", str(audio_dir / "test_24k.wav"), url, "--model", "tiny_24khz", "--bandwidth", "1.2", "-q"
    )
    try:
        wait_for_size(receiver, tmp_path / "received.wav.partial", ONE_SECOND_BYTES)
        status, stderr = stop(receiver, signal.SIGINT)
    finally:
        sender.kill()
        sender.communicate()
        if receiver.poll() is None:
            receiver.kill()
            receiver.communicate()

    assert status == 130, stderr
    assert [path.name for path in tmp_path.iterdir()] == ["received.wav"]
    frames = sf.info(str(output)).frames
    assert 24_000 <= frames < sf.info(str(audio_dir / "test_24k.wav")).frames
