"""The encode, decode and inspect commands on the tiny golden models: tags, seeking, formats."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ecdc_stream.cli import main
from ecdc_stream.io.audio_files import writable_formats


@pytest.fixture
def tiny_input(tmp_path: Path, golden_dir: Path, tiny_models) -> Path:
    audio, rate = sf.read(golden_dir / "tiny_24khz" / "input.wav", dtype="float32")
    path = tmp_path / "input.wav"
    sf.write(path, audio, rate, subtype="FLOAT")
    return path


def encode(source: Path, target: Path, *options: str) -> None:
    argv = ["encode", str(source), str(target), "--model", "tiny_24khz", "--bandwidth", "1.2", "-q", *options]
    assert main(argv) == 0


def test_tags_shown_by_inspect(capsys, tmp_path, tiny_input):
    encoded = tmp_path / "tagged.ecdc"
    encode(tiny_input, encoded, "--title", "Morning", "--artist", "Ada", "--comment", "take 2")
    capsys.readouterr()

    assert main(["inspect", str(encoded), "--json"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["tags"] == {"title": "Morning", "artist": "Ada", "comment": "take 2"}

    assert main(["inspect", str(encoded)]) == 0
    text = capsys.readouterr().out
    assert "title:     Morning" in text
    assert "comment:   take 2" in text


def test_tags_rejected_without_acv4(capsys, tmp_path, tiny_input):
    status = main(["encode", str(tiny_input), str(tmp_path / "x.ecdc"), "--model", "tiny_24khz",
                   "--bandwidth", "1.2", "--no-lm", "--title", "x"])
    assert status == 1
    assert "acv=4 streams only" in capsys.readouterr().err
    assert not (tmp_path / "x.ecdc").exists()


def test_decode_range_matches_full_decode(tmp_path, tiny_input):
    encoded = tmp_path / "stream.ecdc"
    encode(tiny_input, encoded)
    full = tmp_path / "full.wav"
    part = tmp_path / "part.wav"
    assert main(["decode", str(encoded), str(full), "-q"]) == 0
    assert main(["decode", str(encoded), str(part), "--start", "0.5", "--end", "1.25", "-q"]) == 0

    whole, rate = sf.read(full, dtype="float32")
    piece, piece_rate = sf.read(part, dtype="float32")
    assert piece_rate == rate
    assert len(piece) == round(0.75 * rate)
    # Chunks are 1 s: the range lies in chunks 0 and 1, decoded from chunk 0 as in the full decode.
    np.testing.assert_allclose(piece, whole[round(0.5 * rate) : round(1.25 * rate)], atol=1e-4)


def test_decode_resampled(tmp_path, tiny_input):
    encoded = tmp_path / "stream.ecdc"
    encode(tiny_input, encoded)
    out = tmp_path / "out.wav"
    assert main(["decode", str(encoded), str(out), "--rate", "16000", "-q"]) == 0
    info = sf.info(str(out))
    assert info.samplerate == 16000
    assert info.frames == 48000 * 16000 // 24000


@pytest.mark.parametrize("coding", ["--no-lm", "--legacy-lm"])
def test_original_formats_round_trip(tmp_path, tiny_input, coding):
    encoded = tmp_path / "original.ecdc"
    encode(tiny_input, encoded, coding)
    out = tmp_path / "out.wav"
    assert main(["decode", str(encoded), str(out), "-q"]) == 0
    assert sf.info(str(out)).frames == 48000


def test_original_format_cannot_go_to_stdout(capsys, tmp_path, tiny_input):
    status = main(["encode", str(tiny_input), "-", "--model", "tiny_24khz", "--bandwidth", "1.2", "--no-lm"])
    assert status == 1
    assert "standard output" in capsys.readouterr().err


def set_total_samples(path: Path, total: int) -> None:
    data = path.read_bytes()
    length = int.from_bytes(data[5:9], "big")
    metadata = json.loads(data[9 : 9 + length])
    metadata["total_samples"] = total
    body = json.dumps(metadata).encode()
    path.write_bytes(data[:5] + len(body).to_bytes(4, "big") + body + data[9 + length :])


def test_corrupt_total_length_rejected(capsys, tmp_path, tiny_input):
    encoded = tmp_path / "stream.ecdc"
    encode(tiny_input, encoded)
    set_total_samples(encoded, 10**15)
    out = tmp_path / "out.wav"

    assert main(["decode", str(encoded), str(out), "-q"]) == 1
    assert "the header is corrupt" in capsys.readouterr().err
    assert not out.exists()
    assert not Path(str(out) + ".partial").exists()
    assert main(["inspect", str(encoded)]) == 1
    assert "the header is corrupt" in capsys.readouterr().err


def test_truncated_file_keeps_header_length(tmp_path, tiny_input):
    encoded = tmp_path / "stream.ecdc"
    encode(tiny_input, encoded)
    data = encoded.read_bytes()
    encoded.write_bytes(data[: len(data) - 40])
    out = tmp_path / "out.wav"
    assert main(["decode", str(encoded), str(out), "-q"]) == 0
    assert sf.info(str(out)).frames == 48000


@pytest.mark.parametrize("command", ["encode", "decode"])
def test_output_over_input_rejected(capsys, tmp_path, tiny_input, command):
    encoded = tmp_path / "stream.ecdc"
    encode(tiny_input, encoded)
    target = tiny_input if command == "encode" else encoded
    before = target.read_bytes()
    argv = [command, str(target), str(target), "-q"]
    if command == "encode":
        argv += ["--model", "tiny_24khz", "--bandwidth", "1.2"]

    assert main(argv) == 1
    assert "is the input file" in capsys.readouterr().err
    assert target.read_bytes() == before


def test_encode_start_beyond_end(capsys, tmp_path, tiny_input):
    out = tmp_path / "late.ecdc"
    status = main(["encode", str(tiny_input), str(out), "--model", "tiny_24khz", "--bandwidth", "1.2", "--start", "10"])
    assert status == 1
    assert "beyond the end" in capsys.readouterr().err
    assert not out.exists()


def test_decode_into_missing_folder(capsys, tmp_path, tiny_input):
    encoded = tmp_path / "stream.ecdc"
    encode(tiny_input, encoded)
    assert main(["decode", str(encoded), str(tmp_path / "absent" / "out.wav")]) == 1
    assert "output folder" in capsys.readouterr().err


@pytest.mark.parametrize("extension", sorted(writable_formats()))
def test_decode_to_each_writable_format(tmp_path, tiny_input, extension):
    encoded = tmp_path / "stream.ecdc"
    encode(tiny_input, encoded)
    out = tmp_path / f"out{extension}"
    assert main(["decode", str(encoded), str(out), "-q"]) == 0
    assert sf.info(str(out)).format == writable_formats()[extension]


@pytest.mark.parametrize(
    ("command", "name"),
    [("encode", "stream.ecdc"), ("encode --no-lm", "original.ecdc"), ("decode", "out.wav")],
)
def test_output_mode_follows_umask(tmp_path, tiny_input, command, name):
    encoded = tmp_path / "input.ecdc"
    encode(tiny_input, encoded)
    output = tmp_path / name
    previous = os.umask(0o027)
    try:
        if command == "decode":
            assert main(["decode", str(encoded), str(output), "-q"]) == 0
        else:
            encode(tiny_input, output, *command.split()[1:])
    finally:
        os.umask(previous)
    # A new file gets 0666 less the umask, whether or not it was written under a temporary name.
    assert stat.S_IMODE(output.stat().st_mode) == 0o640


def test_decode_to_stdout_needs_no_extension(capfdbinary, tmp_path, tiny_input):
    encoded = tmp_path / "stream.ecdc"
    encode(tiny_input, encoded)
    capfdbinary.readouterr()
    assert main(["decode", str(encoded), "-", "--format", "s16le", "-q"]) == 0
    # 2 s of 24 kHz mono audio as 16-bit samples.
    assert len(capfdbinary.readouterr().out) == 48000 * 2
