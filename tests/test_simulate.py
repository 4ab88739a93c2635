"""simulate, send and receive end to end with a tiny model on the 20 s recording."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import anyio
import numpy as np
import pytest
import soundfile as sf

from ecdc_stream.cli import main
from ecdc_stream.commands import receive as receive_command
from ecdc_stream.commands import send as send_command
from ecdc_stream.commands import simulate as simulate_command
from ecdc_stream.commands.receive import receive_stream
from ecdc_stream.commands.send import file_source_stage, prepare_encoding, send_stream
from ecdc_stream.commands.simulate import simulate
from ecdc_stream.container.acv4 import StreamParams
from ecdc_stream.faults import BurstLoss, FaultConfig
from ecdc_stream.io.tcp import TcpReceiver
from ecdc_stream.io.transport import LinkDecoder, TransportError, parse_url
from ecdc_stream.io.udp import UdpReceiver
from ecdc_stream.model import load_model

CHUNK_SECONDS = 0.25


@pytest.fixture(scope="module")
def recording(audio_dir) -> Path:
    return audio_dir / "test_24k.wav"


@pytest.fixture(scope="module")
def tiny_24(tiny_models):
    return load_model("tiny_24khz")


@pytest.fixture(scope="module")
def encoding_24(tiny_24, recording):
    _, total = file_source_stage(str(recording), tiny_24)
    return prepare_encoding(tiny_24, tiny_24.target_bandwidths[0], CHUNK_SECONDS, total_samples=total, keep_chunks=True)


def run_simulation(model, recording, faults, encoding=None, **kwargs):
    return anyio.run(
        lambda: simulate(
            recording, model, faults, bandwidth=model.target_bandwidths[0], chunk_seconds=CHUNK_SECONDS, encoding=encoding, **kwargs
        )
    )


def test_lossy_link_keeps_length_and_intact_chunks(tiny_24, recording, encoding_24, tmp_path):
    faults = FaultConfig(loss=0.1, ber=1e-4, duplicate=0.05, reorder=0.1, reorder_depth=2, seed=11)
    output = tmp_path / "received.wav"
    result = run_simulation(tiny_24, recording, faults, encoding_24, output=output)
    record = result.record
    report = result.report
    input_samples = sf.info(str(recording)).frames

    # Exact length, in memory and on disk.
    assert result.received.shape == (1, input_samples)
    assert sf.info(str(output)).frames == input_samples
    assert report.seconds_output == pytest.approx(input_samples / 24000)

    # The report's counts are what the injector did.
    num_chunks = len(result.sent_chunks)
    assert num_chunks == -(-input_samples // result.params.chunk_samples)
    assert report.chunks_sent == num_chunks
    assert report.chunks_lost == len(record.dropped) > 0
    assert report.chunks_corrupt == len(record.damaged) > 0
    assert report.chunks_duplicated == len(record.duplicated) > 0
    assert report.chunks_reordered == len(record.reordered) > 0
    assert report.chunks_late == 0
    assert report.chunks_received == num_chunks - len(record.dropped) - len(record.damaged)
    assert report.extra["injected"]["dropped"] == len(record.dropped)

    # Every chunk that arrived intact decodes to exactly the clean codes.
    intact = set(range(num_chunks)) - set(record.dropped) - record.damaged
    assert set(result.receiver.chunks) == intact
    for sequence in intact:
        np.testing.assert_array_equal(result.receiver.chunks[sequence].codes, result.sent_chunks[sequence].codes)

    # Concealed time is exactly the lost and corrupt chunks' durations.
    gaps = {gap.sequence for gap in result.receiver.gaps}
    assert gaps == set(range(num_chunks)) - intact
    chunk_samples = result.params.chunk_samples
    expected = sum(min(chunk_samples, input_samples - s * chunk_samples) for s in gaps)
    assert report.seconds_concealed == pytest.approx(expected / 24000)

    # Before the first gap (and its fade) the audio is the clean decode. The decoder network is
    # float arithmetic run in another thread, so the last bit may differ.
    first_gap = min(gaps) * chunk_samples - 24000 * 0.005
    assert first_gap > 0
    np.testing.assert_allclose(result.received[:, : int(first_gap)], result.clean[:, : int(first_gap)], rtol=0, atol=1e-6)
    # Concealed chunks are silent away from their fades.
    for sequence in gaps:
        start = sequence * chunk_samples
        assert not np.any(result.received[:, start + 200 : start + chunk_samples - 200])
    assert report.snr_db is not None and report.snr_db < 30


def test_clean_link_matches_clean_decode(tiny_24, recording, encoding_24):
    result = run_simulation(tiny_24, recording, FaultConfig(), encoding_24)
    # Identical up to the last bit of the float decoder network, which may run on other threads.
    np.testing.assert_allclose(result.received, result.clean, rtol=0, atol=1e-6)
    assert result.report.identical_to_reference or result.report.snr_db > 100
    assert result.report.chunks_received == len(result.sent_chunks)
    assert result.report.chunks_lost == result.report.chunks_corrupt == 0
    assert result.report.seconds_concealed == 0


def test_same_seed_same_output(tiny_24, recording, encoding_24):
    faults = FaultConfig(loss=0.2, ber=1e-4, jitter_ms=400, seed=5)
    first = run_simulation(tiny_24, recording, faults, encoding_24)
    second = run_simulation(tiny_24, recording, faults, encoding_24)
    np.testing.assert_array_equal(first.received, second.received)
    assert first.report.to_dict() == second.report.to_dict()
    assert first.record == second.record


def test_held_back_chunks_beyond_window_are_late(tiny_24, recording, encoding_24):
    # A chunk held back until 3 later chunks went out arrives about 0.5 s after the first of
    # them, the moment the receiver learnt it was missing: past a 100 ms window.
    faults = FaultConfig(loss=0.05, reorder=0.1, reorder_depth=3, seed=8)
    result = run_simulation(tiny_24, recording, faults, encoding_24, window_ms=100)
    record = result.record

    arrival = {}
    late = set()
    for sequence, time in record.delivered:
        arrival.setdefault(sequence, time)
    for sequence in record.reordered:
        evidence = min(t for s, t in arrival.items() if s > sequence and t <= arrival[sequence])
        if arrival[sequence] - evidence > 0.1:
            late.add(sequence)

    assert len(late) >= 5
    assert result.report.chunks_late == len(late)
    assert result.report.chunks_reordered == len(record.reordered) - len(late)
    assert result.report.chunks_lost == len(record.dropped)
    assert result.received.shape[1] == sf.info(str(recording)).frames


def test_burst_loss_and_jitter(tiny_24, recording, encoding_24):
    faults = FaultConfig(burst=BurstLoss(0.1, 0.3), jitter_ms=150, delay_ms=40, seed=2)
    result = run_simulation(tiny_24, recording, faults, encoding_24)
    record = result.record
    assert result.report.chunks_lost == len(record.dropped) > 0
    assert result.report.chunks_reordered == len(record.reordered)
    assert result.report.chunks_late == 0
    assert result.received.shape[1] == sf.info(str(recording)).frames


def test_wire_faults_keep_length(tiny_24, recording, encoding_24):
    faults = FaultConfig(loss=0.1, ber=1e-4, truncate=0.02, seed=3)
    result = run_simulation(tiny_24, recording, faults, encoding_24, fault_layer="wire")
    report = result.report
    assert result.received.shape[1] == sf.info(str(recording)).frames
    num_chunks = len(result.sent_chunks)
    assert report.chunks_received + report.chunks_lost + report.chunks_corrupt + report.chunks_late == num_chunks
    assert report.chunks_received < num_chunks
    for sequence, chunk in result.receiver.chunks.items():
        np.testing.assert_array_equal(chunk.codes, result.sent_chunks[sequence].codes)


def test_segmented_model_keeps_length(tiny_models, tmp_path):
    model = load_model("tiny_48khz")
    rng = np.random.default_rng(0)
    path = tmp_path / "input.wav"
    # 3.3 s of stereo noise at the model's rate: several segments and a short last chunk.
    length = int(3.3 * model.sample_rate)
    sf.write(path, rng.uniform(-0.5, 0.5, size=(length, 2)).astype(np.float32), model.sample_rate, subtype="FLOAT")
    faults = FaultConfig(loss=0.3, seed=4)
    result = anyio.run(lambda: simulate(path, model, faults, bandwidth=model.target_bandwidths[0], chunk_seconds=1.0))
    assert result.received.shape == (2, length)
    assert result.report.chunks_lost == len(result.record.dropped) > 0


def chunks_at_one_second(model, recording) -> int:
    chunk_samples = StreamParams.for_model(model, model.target_bandwidths[0], 1.0).chunk_samples
    return -(-sf.info(str(recording)).frames // chunk_samples)


def parse(register, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(argv)


def test_simulate_command_json(tiny_24, recording, tmp_path, capsys):
    output = tmp_path / "out.wav"
    args = parse(
        simulate_command.register,
        ["simulate", str(recording), str(output), "--model", "tiny_24khz", "--bandwidth", str(tiny_24.target_bandwidths[0]),
         "--loss", "0.1", "--burst", "0.05,0.5", "--ber", "1e-4", "--seed", "9", "--json"],
    )
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chunks_sent"] == chunks_at_one_second(tiny_24, recording)
    for key in ("chunks_received", "chunks_lost", "chunks_corrupt", "chunks_duplicated", "chunks_reordered",
                "chunks_late", "seconds_concealed", "snr_db"):
        assert key in report
    assert report["chunks_lost"] == report["injected"]["dropped"]
    assert sf.info(str(output)).frames == sf.info(str(recording)).frames


def test_simulate_output_over_input_rejected(tiny_24, recording, tmp_path, capsys):
    source = tmp_path / "input.wav"
    shutil.copyfile(recording, source)
    before = source.read_bytes()
    argv = ["simulate", str(source), str(source), "--model", "tiny_24khz", "--bandwidth", str(tiny_24.target_bandwidths[0])]
    assert main(argv) == 1
    assert "is the input file" in capsys.readouterr().err
    assert source.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["input.wav"]


def test_simulate_output_mode_follows_umask(tiny_24, recording, tmp_path):
    output = tmp_path / "out.wav"
    argv = ["simulate", str(recording), str(output), "--model", "tiny_24khz", "--bandwidth", str(tiny_24.target_bandwidths[0]),
            "-q"]
    previous = os.umask(0o027)
    try:
        assert main(argv) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(output.stat().st_mode) == 0o640


class FakeStdio:
    def __init__(self, data: bytes = b""):
        self.buffer = io.BytesIO(data)


def send_to_pipe(model, recording, monkeypatch, *options: str) -> bytes:
    """Run `send RECORDING -` with the tiny model at its first target bandwidth; return what it wrote to standard output."""
    stdout = FakeStdio()
    monkeypatch.setattr(sys, "stdout", stdout)
    args = parse(
        send_command.register,
        ["send", str(recording), "-", "--model", "tiny_24khz", "--bandwidth", str(model.target_bandwidths[0]),
         "--speed", "0", *options],
    )
    assert args.func(args) == 0
    monkeypatch.undo()
    return stdout.buffer.getvalue()


def test_send_and_receive_commands_over_pipe(tiny_24, recording, tmp_path, monkeypatch, capsys):
    stream = send_to_pipe(tiny_24, recording, monkeypatch, "--loss", "0.1", "--seed", "1", "--json")
    sent = json.loads(capsys.readouterr().err)
    assert sent["chunks_sent"] == chunks_at_one_second(tiny_24, recording)

    # Damage a byte in the middle of the stream as well.
    data = bytearray(stream)
    data[len(data) // 2] ^= 0x5A
    monkeypatch.setattr(sys, "stdin", FakeStdio(bytes(data)))
    output = tmp_path / "received.wav"
    args = parse(receive_command.register, ["receive", "-", str(output), "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chunks_sent"] == sent["chunks_sent"]
    assert report["chunks_lost"] + report["chunks_corrupt"] >= sent["injected"]["dropped"] + 1
    assert report["end_marker_received"]
    assert sf.info(str(output)).frames == sf.info(str(recording)).frames


@pytest.mark.parametrize("scheme", ["udp", "tcp"])
async def test_send_and_receive_over_sockets(tiny_24, recording, encoding_24, scheme):
    faults = FaultConfig(loss=0.1, ber=1e-4, duplicate=0.05, seed=12)
    link = LinkDecoder()
    url = parse_url(f"{scheme}://127.0.0.1:0")
    receiver = UdpReceiver(url, link, idle_timeout_s=5) if scheme == "udp" else TcpReceiver(url, link, idle_timeout_s=5)
    port = await receiver.bind()
    source, _ = file_source_stage(str(recording), tiny_24)
    encoding_24.counter.reset(keep=True)
    result = None

    async def run_receiver():
        nonlocal result
        result = await receive_stream(receiver, link, keep_audio=True, keep_chunks=True, window_ms=500)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            group.start_soon(run_receiver)
            sent = await send_stream(encoding_24, source, parse_url(f"{scheme}://127.0.0.1:{port}"), faults, speed=0)

    injected = sent["injected"]
    stats = result.stats
    assert result.audio.shape[1] == sf.info(str(recording)).frames
    assert stats.lost == injected["dropped"]
    assert stats.corrupt == injected["corrupted"]
    assert stats.duplicated == injected["duplicated"]
    assert stats.received == sent["chunks_sent"] - injected["dropped"] - injected["corrupted"]
    for sequence, chunk in result.chunks.items():
        np.testing.assert_array_equal(chunk.codes, encoding_24.counter.kept[sequence].codes)


@pytest.mark.parametrize(
    ("fault_layer", "loss", "header_received"),
    [
        # The framer sends a header with its end messages when no chunk reached it.
        ("chunk", "1.0", True),
        ("wire", "1.0", False),
        ("wire", "0.999", False),
    ],
)
def test_total_loss_writes_silence(capsys, tmp_path, tiny_models, golden_dir, fault_layer, loss, header_received):
    from ecdc_stream.cli import main

    recording = golden_dir / "tiny_24khz" / "input.wav"
    output = tmp_path / "out.wav"
    status = main([
        "simulate", str(recording), str(output), "--model", "tiny_24khz", "--bandwidth", "1.2",
        "--loss", loss, "--fault-layer", fault_layer, "--seed", "3", "--json", "-q",
    ])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    report = json.loads(captured.out)

    assert report["chunks_sent"] == chunks_at_one_second(load_model("tiny_24khz"), recording)
    assert report["chunks_lost"] == report["chunks_sent"]
    assert report["chunks_received"] == 0
    assert report["header_received"] is header_received
    assert report["injected"]["dropped"] == report["injected"]["sent"]

    audio, rate = sf.read(str(output), dtype="float32")
    assert rate == 24000
    assert len(audio) == sf.info(str(recording)).frames
    assert not np.any(audio)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.wav"]


def test_bursts_dropping_every_header_still_decode(tiny_24, recording, encoding_24):
    # A header before every chunk, and a burst state that flips before every message: the
    # bursts take every even message, which is every header.
    faults = FaultConfig(burst=BurstLoss(1.0, 1.0))
    result = run_simulation(tiny_24, recording, faults, encoding_24, fault_layer="wire", header_every=1)
    num_chunks = len(result.sent_chunks)
    dropped = result.record.dropped
    assert set(range(0, 2 * num_chunks, 2)) <= set(dropped)

    report = result.report
    assert report.extra["header_received"] is False
    assert report.chunks_sent == num_chunks
    assert report.chunks_received == num_chunks
    assert report.chunks_lost == 0
    # The link decoder rejects end messages that come before any header.
    assert report.messages_rejected.get("end_before_header", 0) > 0
    assert result.received.shape == (1, sf.info(str(recording)).frames)
    np.testing.assert_allclose(result.received, result.clean, rtol=0, atol=1e-6)
    for sequence, chunk in result.receiver.chunks.items():
        np.testing.assert_array_equal(chunk.codes, result.sent_chunks[sequence].codes)


def test_total_loss_of_resampled_input_keeps_length(tiny_24, audio_dir):
    # The 48 kHz recording is resampled, so no header states its length: the sender's count does.
    faults = FaultConfig(loss=1.0)
    result = run_simulation(tiny_24, audio_dir / "test_48k.wav", faults, fault_layer="wire")
    assert result.params.total_samples is None
    sent_samples = sum(chunk.num_samples for chunk in result.sent_chunks)
    assert sent_samples == sf.info(str(audio_dir / "test_48k.wav")).frames // 2
    assert result.received.shape == (1, sent_samples)
    assert not np.any(result.received)
    assert result.report.extra["header_received"] is False
    assert result.report.chunks_lost == len(result.sent_chunks)


def test_receive_command_rejects_stream_without_header(tiny_24, recording, tmp_path, monkeypatch, capsys):
    # A real receiver rejects the faults that simulate decodes through in
    # test_bursts_dropping_every_header_still_decode.
    stream = send_to_pipe(tiny_24, recording, monkeypatch, "--fault-layer", "wire", "--burst", "1,1", "--header-every", "1")
    capsys.readouterr()

    monkeypatch.setattr(sys, "stdin", FakeStdio(stream))
    output = tmp_path / "received.wav"
    args = parse(receive_command.register, ["receive", "-", str(output)])
    with pytest.raises(TransportError, match="before its header arrived"):
        args.func(args)
    assert list(tmp_path.iterdir()) == []
