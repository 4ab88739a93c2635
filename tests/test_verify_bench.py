"""The verify and bench commands on small acv=4 streams of the tiny golden models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ecdc_stream.cli import main
from ecdc_stream.commands.verify import available_settings
from ecdc_stream.entropy.exact_lm import ExactLM


@pytest.fixture
def tiny_stream(tmp_path: Path, golden_dir: Path, tiny_models) -> Path:
    audio, rate = sf.read(golden_dir / "tiny_24khz" / "input.wav", dtype="float32")
    source = tmp_path / "input.wav"
    sf.write(source, audio, rate, subtype="FLOAT")
    encoded = tmp_path / "tiny.ecdc"
    assert main(["encode", str(source), str(encoded), "--model", "tiny_24khz", "--bandwidth", "1.2", "-q"]) == 0
    return encoded


def test_verify_identical_settings(capsys, tiny_stream):
    assert main(["verify", str(tiny_stream)]) == 0
    out = capsys.readouterr().out
    assert "identical codes in every setting" in out
    assert "1 thread" in out
    assert "one chunk at a time" in out


def test_verify_reencodes_to_same_bytes(capsys, tiny_stream):
    assert main(["verify", str(tiny_stream)]) == 0
    out = capsys.readouterr().out
    assert out.count("encodes to the same bytes") == len(available_settings())


def test_verify_reports_encoder_disagreement(capsys, tiny_stream, monkeypatch):
    # Shift the logits of the encoder's path (all frames at once) only: decoding, which steps
    # frame by frame, still gives the file's codes, but they no longer encode to the file's bytes.
    original = ExactLM.output_logits
    monkeypatch.setattr(ExactLM, "output_logits", lambda self, hidden: original(self, hidden) * 2)
    assert main(["verify", str(tiny_stream)]) == 1
    out = capsys.readouterr().out
    assert "identical codes in every setting" not in out
    assert "chunks encode to other bytes" in out
    assert "encoder and decoder disagree" in out


def test_verify_rejects_raw_stream(capsys, tmp_path, golden_dir, tiny_models):
    status = main(["verify", str(golden_dir / "tiny_24khz" / "raw.ecdc")])
    assert status == 1
    assert "not an acv=4 stream" in capsys.readouterr().err


def test_verify_skips_damaged_chunk(capsys, tiny_stream):
    capsys.readouterr()
    data = bytearray(tiny_stream.read_bytes())
    data[-5] ^= 0x40
    tiny_stream.write_bytes(bytes(data))
    assert main(["verify", str(tiny_stream)]) == 0
    out = capsys.readouterr().out
    assert "1 intact chunks, 1 damaged regions skipped" in out
    assert "identical codes in every setting" in out


def test_bench_report(capsys, tmp_path, golden_dir, tiny_models):
    audio, rate = sf.read(golden_dir / "tiny_24khz" / "input.wav", dtype="float32")
    source = tmp_path / "input.wav"
    sf.write(source, audio, rate, subtype="FLOAT")
    capsys.readouterr()
    assert main(["bench", str(source), "--model", "tiny_24khz", "--bandwidth", "1.2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["seconds"] == pytest.approx(len(audio) / rate)
    for coding in ("without_lm", "with_lm_acv4"):
        row = report[coding]
        assert row["bytes"] > 0
        assert row["kbps"] == pytest.approx(row["bytes"] * 8 / report["seconds"] / 1000)
        assert np.isfinite(row["snr_db"])
        assert row["encode_realtime"] > 0
        assert row["decode_realtime"] > 0
    damage = report["one_corrupted_byte"]
    assert damage["chunks_lost"] >= 1
    assert damage["length_exact"] is True
    assert damage["other_chunks_exact"] is True
