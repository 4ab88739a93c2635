"""A real recorder process, killed or interrupted mid-stream, leaves a decodable recording.

The recorder is `ecdc-stream record --input FILE` (the file delivered in real time, as from a
microphone) in a child process with the tiny 24 kHz model registered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ecdc_stream.container import acv4
from ecdc_stream.container.header import read_header
from ecdc_stream.model import lm_state_dict, load_model
from ecdc_stream.model.streaming import StreamingEncoder
from ecdc_stream.pipeline.files import decode_file

REPO = Path(__file__).resolve().parents[1]

RECORDER = """
import json, sys
from pathlib import Path
from ecdc_stream.cli import main
from ecdc_stream.model import EncodecConfig, config_factories, register_model
golden = Path(sys.argv[1])
config = EncodecConfig.from_dict(json.loads((golden / "config.json").read_text()), ignore_unknown=True)
register_model("tiny_24khz", *config_factories(config, golden / "model.pt", golden / "lm.pt"))
raise SystemExit(main(sys.argv[2:]))
"""


def start_recorder(golden_dir: Path, audio: Path, output: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-c", RECORDER, str(golden_dir / "tiny_24khz"),
        "record", str(output), "--input", str(audio), "--model", "tiny_24khz", "--bandwidth", "1.2",
        "--chunk-seconds", "0.25", "--quiet", *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def chunks_on_disk(path: Path) -> int:
    if not path.exists() or path.stat().st_size < 16:
        return 0
    with open(path, "rb") as fo:
        params = acv4.StreamParams.from_metadata(read_header(fo))
        return sum(isinstance(item, acv4.FramedChunk) for item in acv4.iter_framed_chunks(fo, params))


def wait_for_chunks(process: subprocess.Popen, path: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while chunks_on_disk(path) < count:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the recorder wrote too few chunks in time"
        time.sleep(0.05)


def long_input(golden_dir: Path, tmp_path: Path) -> tuple[Path, np.ndarray]:
    audio, rate = sf.read(golden_dir / "tiny_24khz" / "input.wav", dtype="float32")
    audio = np.tile(audio, 10)  # 20 s: far more than the test waits for
    path = tmp_path / "input.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    return path, audio


def test_sigkill_mid_stream_decodes_to_last_complete_chunk(tiny_models, golden_dir, tmp_path):
    audio_path, audio = long_input(golden_dir, tmp_path)
    recording = tmp_path / "killed.ecdc"
    process = start_recorder(golden_dir, audio_path, recording, "--fsync")
    try:
        wait_for_chunks(process, recording, 4)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL

    # The header never got its length; every complete chunk on disk decodes.
    with open(recording, "rb") as fo:
        params = acv4.StreamParams.from_metadata(read_header(fo))
        assert params.total_samples is None
        fo.seek(0)
        _, chunks = acv4.read_acv4(fo, lm_state_dict("tiny_24khz"))
    complete = len(chunks)
    assert complete >= 4
    assert all(isinstance(chunk, acv4.CodeChunk) for chunk in chunks)

    out = tmp_path / "killed.wav"
    report = decode_file(recording, out, model=load_model("tiny_24khz"))
    assert report.samples == complete * params.chunk_samples
    assert report.gaps == 0

    # The chunks hold the codes of the input's beginning, as a whole-input encode gives them.
    model = load_model("tiny_24khz")
    expected = StreamingEncoder(model, 4).encode_all(torch.from_numpy(audio[None, : report.samples + 24000].copy()))
    recorded = np.concatenate([chunk.codes for chunk in chunks], axis=1)
    assert np.array_equal(recorded, expected[:, : recorded.shape[1]].numpy())


def test_interrupt_stops_cleanly_and_completes_header(tiny_models, golden_dir, tmp_path):
    audio_path, _ = long_input(golden_dir, tmp_path)
    recording = tmp_path / "interrupted.ecdc"
    process = start_recorder(golden_dir, audio_path, recording)
    try:
        wait_for_chunks(process, recording, 2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr.decode()

    with open(recording, "rb") as fo:
        params = acv4.StreamParams.from_metadata(read_header(fo))
    # The last, partial chunk was written and the length filled in.
    assert params.total_samples is not None
    report = decode_file(recording, tmp_path / "interrupted.wav", model=load_model("tiny_24khz"))
    assert report.samples == params.total_samples
    assert report.samples >= 2 * params.chunk_samples


def test_record_duration_gives_exact_length(tiny_models, golden_dir, tmp_path):
    recording = tmp_path / "short.ecdc"
    process = start_recorder(golden_dir, golden_dir / "tiny_24khz" / "input.wav", recording, "--duration", "1.3",
                             "--title", "take 1")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr.decode()

    with open(recording, "rb") as fo:
        metadata = read_header(fo)
    assert metadata["total_samples"] == int(1.3 * 24000)
    assert metadata["tags"] == {"title": "take 1"}


def test_failed_recording_leaves_no_file(tiny_models, golden_dir, tmp_path):
    recording = tmp_path / "failed.ecdc"
    process = start_recorder(golden_dir, tmp_path / "missing.wav", recording)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "does not exist" in stderr.decode()
    assert not recording.exists()
