"""Bad input to the command line: a one-line error, a non-zero exit, and no output file."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ecdc_stream.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    """Run the command in-process; return the exit status and the lines written to stderr."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, [line for line in captured.err.splitlines() if line.strip()]


def assert_one_line_error(status: int, lines: list[str], *fragments: str) -> None:
    assert status != 0
    errors = [line for line in lines if line.startswith("ecdc-stream: error:")]
    assert len(errors) == 1, lines
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def short_wav(tmp_path: Path) -> Path:
    path = tmp_path / "short.wav"
    t = np.arange(4800) / 24000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 24000, subtype="PCM_16")
    return path


def write_stream(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def header_bytes(metadata: object, declared_length: int | None = None) -> bytes:
    body = json.dumps(metadata).encode()
    length = len(body) if declared_length is None else declared_length
    return b"ECDC" + struct.pack("!BI", 0, length) + body


class TestEncodeErrors:
    def test_missing_input(self, capsys, tmp_path, weights_dir):
        out = tmp_path / "out.ecdc"
        status, lines = run_cli(capsys, "encode", str(tmp_path / "absent.wav"), str(out), "--weights", str(weights_dir))
        assert_one_line_error(status, lines, "absent.wav", "does not exist")
        assert not out.exists()

    def test_not_audio(self, capsys, tmp_path, weights_dir):
        text = tmp_path / "notes.wav"
        text.write_text("these are not samples\n" * 20)
        out = tmp_path / "out.ecdc"
        status, lines = run_cli(capsys, "encode", str(text), str(out), "--weights", str(weights_dir))
        assert_one_line_error(status, lines, "notes.wav")
        assert not out.exists()

    def test_empty_audio(self, capsys, tmp_path, weights_dir):
        empty = tmp_path / "empty.wav"
        sf.write(empty, np.zeros((0, 1), dtype=np.float32), 24000)
        out = tmp_path / "out.ecdc"
        status, lines = run_cli(capsys, "encode", str(empty), str(out), "--weights", str(weights_dir))
        assert_one_line_error(status, lines, "no audio")
        assert not out.exists()

    @pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
    def test_non_finite_samples(self, capsys, tmp_path, weights_dir, bad_value):
        samples = np.zeros(2400, dtype=np.float32)
        samples[1000] = bad_value
        path = tmp_path / "bad.wav"
        sf.write(path, samples, 24000, subtype="FLOAT")
        out = tmp_path / "out.ecdc"
        status, lines = run_cli(capsys, "encode", str(path), str(out), "--weights", str(weights_dir))
        assert_one_line_error(status, lines, "NaN or infinite")
        assert not out.exists()

    def test_unknown_model(self, capsys, tmp_path, short_wav, weights_dir):
        out = tmp_path / "out.ecdc"
        status, lines = run_cli(
            capsys, "encode", str(short_wav), str(out), "--model", "96khz", "--weights", str(weights_dir)
        )
        assert_one_line_error(status, lines, "96khz")
        assert not out.exists()

    def test_bandwidth_not_offered(self, capsys, tmp_path, short_wav, weights_dir):
        out = tmp_path / "out.ecdc"
        status, lines = run_cli(
            capsys, "encode", str(short_wav), str(out), "--bandwidth", "5", "--weights", str(weights_dir)
        )
        assert_one_line_error(status, lines, "5 kbps", "1.5")
        assert not out.exists()

    def test_bandwidth_of_other_model(self, capsys, tmp_path, short_wav, weights_dir):
        out = tmp_path / "out.ecdc"
        status, lines = run_cli(
            capsys,
            "encode",
            str(short_wav),
            str(out),
            "--model",
            "48khz",
            "--bandwidth",
            "1.5",
            "--weights",
            str(weights_dir),
        )
        assert_one_line_error(status, lines, "1.5 kbps")
        assert not out.exists()


class TestDecodeErrors:
    def decode(self, capsys, source: Path, tmp_path: Path, weights_dir: Path) -> tuple[int, list[str], Path]:
        out = tmp_path / "out.wav"
        status, lines = run_cli(capsys, "decode", str(source), str(out), "--weights", str(weights_dir))
        return status, lines, out

    def test_missing_input(self, capsys, tmp_path, weights_dir):
        status, lines, out = self.decode(capsys, tmp_path / "absent.ecdc", tmp_path, weights_dir)
        assert_one_line_error(status, lines, "absent.ecdc", "does not exist")
        assert not out.exists()

    def test_not_ecdc(self, capsys, tmp_path, short_wav, weights_dir):
        status, lines, out = self.decode(capsys, short_wav, tmp_path, weights_dir)
        assert_one_line_error(status, lines, "not an .ecdc stream")
        assert not out.exists()

    def test_truncated_header(self, capsys, tmp_path, weights_dir):
        source = write_stream(tmp_path / "cut.ecdc", b"ECDC\x00\x00")
        status, lines, out = self.decode(capsys, source, tmp_path, weights_dir)
        assert_one_line_error(status, lines, "truncated")
        assert not out.exists()

    def test_header_length_beyond_file(self, capsys, tmp_path, weights_dir):
        metadata = {"m": "encodec_24khz", "al": 24000, "nc": 8, "lm": False}
        source = write_stream(tmp_path / "long.ecdc", header_bytes(metadata, declared_length=5000))
        status, lines, out = self.decode(capsys, source, tmp_path, weights_dir)
        assert_one_line_error(status, lines, "5000-byte header")
        assert not out.exists()

    def test_huge_header_length(self, capsys, tmp_path, weights_dir):
        source = write_stream(tmp_path / "huge.ecdc", b"ECDC" + struct.pack("!BI", 0, 0xFFFFFFFF) + b"{}")
        status, lines, out = self.decode(capsys, source, tmp_path, weights_dir)
        assert_one_line_error(status, lines, "corrupt")
        assert not out.exists()

    def test_malformed_json(self, capsys, tmp_path, weights_dir):
        body = b'{"m": "encodec_24khz", "al": '
        source = write_stream(tmp_path / "json.ecdc", b"ECDC" + struct.pack("!BI", 0, len(body)) + body)
        status, lines, out = self.decode(capsys, source, tmp_path, weights_dir)
        assert_one_line_error(status, lines, "malformed JSON")
        assert not out.exists()

    def test_json_not_object(self, capsys, tmp_path, weights_dir):
        source = write_stream(tmp_path / "list.ecdc", header_bytes([1, 2, 3]))
        status, lines, out = self.decode(capsys, source, tmp_path, weights_dir)
        assert_one_line_error(status, lines, "not an object")
        assert not out.exists()

    @pytest.mark.parametrize(
        ("field", "value"),
        [("al", "24000"), ("al", True), ("nc", 2.5), ("lm", "yes"), ("m", 24)],
    )
    def test_wrong_typed_field(self, capsys, tmp_path, weights_dir, field, value):
        metadata = {"m": "encodec_24khz", "al": 24000, "nc": 8, "lm": False}
        metadata[field] = value
        source = write_stream(tmp_path / "typed.ecdc", header_bytes(metadata) + bytes(100))
        status, lines, out = self.decode(capsys, source, tmp_path, weights_dir)
        assert_one_line_error(status, lines, repr(field))
        assert not out.exists()

    def test_unknown_model_in_header(self, capsys, tmp_path, weights_dir):
        metadata = {"m": "encodec_96khz", "al": 24000, "nc": 8, "lm": False}
        source = write_stream(tmp_path / "model.ecdc", header_bytes(metadata) + bytes(100))
        status, lines, out = self.decode(capsys, source, tmp_path, weights_dir)
        assert_one_line_error(status, lines, "encodec_96khz")
        assert not out.exists()

    def test_unknown_acv(self, capsys, tmp_path, weights_dir):
        source = write_stream(tmp_path / "acv.ecdc", header_bytes({"acv": 9, "model": "encodec_24khz"}))
        status, lines, out = self.decode(capsys, source, tmp_path, weights_dir)
        assert_one_line_error(status, lines, "acv 9")
        assert not out.exists()

    def test_truncated_raw_payload(self, capsys, tmp_path, weights_dir):
        metadata = {"m": "encodec_24khz", "al": 240000, "nc": 8, "lm": False}
        source = write_stream(tmp_path / "short.ecdc", header_bytes(metadata) + bytes(10))
        status, lines, out = self.decode(capsys, source, tmp_path, weights_dir)
        assert_one_line_error(status, lines, "short.ecdc")
        assert not out.exists()


@pytest.mark.parametrize("name", ["out.xyz", "out", "out.wav.bak"])
@pytest.mark.parametrize("command", ["decode", "simulate", "receive"])
def test_unknown_output_extension(capsys, tmp_path, short_wav, command, name):
    out = tmp_path / name
    # The input is not an .ecdc stream, and no weights are given: the output is checked before either matters.
    argv = {
        "decode": ["decode", str(short_wav), str(out)],
        "simulate": ["simulate", str(short_wav), str(out)],
        "receive": ["receive", "-", str(out)],
    }[command]
    status, lines = run_cli(capsys, *argv)
    suffix = Path(name).suffix
    assert_one_line_error(status, lines, repr(str(out)), suffix or "no extension", ".wav, .flac")
    assert [path.name for path in tmp_path.iterdir()] == ["short.wav"]


def test_inspect_not_ecdc(capsys, short_wav):
    status, lines = run_cli(capsys, "inspect", str(short_wav))
    assert_one_line_error(status, lines, "not an .ecdc stream")


def test_console_entry_point_reports_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ecdc_stream", "decode", str(tmp_path / "absent.ecdc"), str(tmp_path / "out.wav")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ecdc-stream: error:")
    assert "Traceback" not in result.stderr
