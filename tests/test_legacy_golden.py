"""Original-format .ecdc streams against the reference's own files on the tiny golden configurations."""

from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path

import pytest
import soundfile
import torch

from ecdc_stream.container.header import read_header
from ecdc_stream.container.legacy import read_legacy, segment_frame_counts, write_legacy
from ecdc_stream.model import EncodecConfig, EncodecModel, build_lm
from ecdc_stream.model.lm import LMModel

TESTS = Path(__file__).resolve().parent
CASES = ["tiny_24khz", "tiny_48khz"]

# The reference vectors were computed with 2 torch threads. The float LM's attention kernel
# (torch 2.13 CPU) gives different last bits with 1 or 3 threads, which changes LM-coded bytes.
REFERENCE_THREADS = 2


@pytest.fixture(autouse=True)
def reference_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(REFERENCE_THREADS)
    yield
    torch.set_num_threads(previous)


def golden_file(case: str, name: str) -> Path:
    """Return a golden file from tests/golden, or from ../shared/golden where it is not copied yet."""
    local = TESTS / "golden" / case / name
    if local.exists():
        return local
    return TESTS.parents[1] / "shared" / "golden" / case / name


@lru_cache(maxsize=None)
def golden_config(case: str) -> dict:
    return json.loads(golden_file(case, "config.json").read_text())


@lru_cache(maxsize=None)
def golden_models(case: str) -> tuple[EncodecModel, LMModel]:
    config = EncodecConfig.from_dict(golden_config(case), ignore_unknown=True)
    model = EncodecModel(config)
    model.load_state_dict(torch.load(golden_file(case, "model.pt"), weights_only=True), strict=True)
    lm = build_lm(config)
    lm.load_state_dict(torch.load(golden_file(case, "lm.pt"), weights_only=True), strict=True)
    return model.eval(), lm.eval()


@lru_cache(maxsize=None)
def golden_input(case: str) -> torch.Tensor:
    samples, _ = soundfile.read(golden_file(case, "input.wav"), dtype="float32", always_2d=True)
    return torch.from_numpy(samples.T.copy())


def golden_frames(case: str) -> list:
    return torch.load(golden_file(case, "frames.pt"), weights_only=True)


def read_stream(data: bytes, model: EncodecModel, lm: LMModel | None) -> tuple[dict, list]:
    fo = io.BytesIO(data)
    metadata = read_header(fo)
    return metadata, read_legacy(fo, metadata, model, lm=lm if metadata["lm"] else None)


def assert_segments_equal(actual: list, expected: list) -> None:
    assert len(actual) == len(expected)
    for index, ((codes, scale), (expected_codes, expected_scale)) in enumerate(zip(actual, expected)):
        assert codes.dtype == torch.int64, f"segment {index}"
        assert torch.equal(codes, expected_codes), f"segment {index}: codes differ"
        if expected_scale is None:
            assert scale is None, f"segment {index}"
        else:
            assert scale.shape == (1, 1), f"segment {index}"
            assert torch.equal(scale.view(-1), expected_scale.view(-1)), f"segment {index}: scale differs"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stream", ["raw.ecdc", "lm.ecdc"])
def test_write_legacy_reproduces_reference_bytes(case: str, stream: str) -> None:
    model, lm = golden_models(case)
    expected = golden_file(case, stream).read_bytes()
    buffer = io.BytesIO()

    write_legacy(buffer, model, golden_frames(case), golden_config(case)["audio_length"], lm=lm if stream == "lm.ecdc" else None)

    assert len(buffer.getvalue()) == len(expected)
    assert buffer.getvalue() == expected


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("stream", ["raw.ecdc", "lm.ecdc"])
def test_read_legacy_gives_reference_codes(case: str, stream: str) -> None:
    model, lm = golden_models(case)

    metadata, segments = read_stream(golden_file(case, stream).read_bytes(), model, lm)

    assert metadata == {"m": case, "al": golden_config(case)["audio_length"], "nc": 4, "lm": stream == "lm.ecdc"}
    assert_segments_equal(segments, golden_frames(case))


@pytest.mark.parametrize("case", CASES)
def test_read_legacy_decodes_to_reference_audio(case: str) -> None:
    model, lm = golden_models(case)
    expected = torch.load(golden_file(case, "decompressed.pt"), weights_only=True)

    _, segments = read_stream(golden_file(case, "raw.ecdc").read_bytes(), model, lm)
    audio = model.decode(segments, length=golden_config(case)["audio_length"])[0]

    assert audio.shape == expected.shape
    torch.testing.assert_close(audio, expected, rtol=1e-4, atol=1e-5)


def edge_lengths(case: str) -> list[int]:
    """Lengths for which the reference wrote an edge_N.ecdc file (it failed on some others)."""
    return [int(n) for n, size in golden_config(case)["edge_ecdc_bytes"].items() if isinstance(size, int)]


EDGE_CASES = [(case, length) for case in CASES for length in edge_lengths(case)]


@pytest.mark.parametrize("case, length", EDGE_CASES, ids=[f"{c}-{n}" for c, n in EDGE_CASES])
def test_edge_stream_matches_encoding_of_prefix(case: str, length: int) -> None:
    model, _ = golden_models(case)
    reference = golden_file(case, f"edge_{length}.ecdc").read_bytes()
    segments = model.encode(golden_input(case)[None, :, :length], golden_config(case)["bandwidth"])

    metadata, decoded = read_stream(reference, model, None)
    audio = model.decode(decoded, length=metadata["al"])
    written = io.BytesIO()
    write_legacy(written, model, segments, length)

    assert metadata["al"] == length
    assert [codes.shape[-1] for codes, _ in decoded] == segment_frame_counts(model, length)
    assert_segments_equal(decoded, segments)
    assert audio.shape[-1] == length
    assert written.getvalue() == reference


# Lengths whose last 48 kHz segment is a single sample, where the reference encoder fails.
SINGLE_SAMPLE_SEGMENT_LENGTHS = [1, 47521, 95041]


@pytest.mark.parametrize(
    "length, use_lm",
    [(length, False) for length in SINGLE_SAMPLE_SEGMENT_LENGTHS] + [(47521, True)],
    ids=[f"raw-{length}" for length in SINGLE_SAMPLE_SEGMENT_LENGTHS] + ["lm-47521"],
)
def test_single_sample_segment_round_trip(length: int, use_lm: bool) -> None:
    model, lm = golden_models("tiny_48khz")
    segments = model.encode(golden_input("tiny_48khz")[None, :, :length], golden_config("tiny_48khz")["bandwidth"])
    buffer = io.BytesIO()

    write_legacy(buffer, model, segments, length, lm=lm if use_lm else None)
    _, decoded = read_stream(buffer.getvalue(), model, lm)
    audio = model.decode(decoded, length=length)

    assert decoded[-1][0].shape[-1] == 1
    assert_segments_equal(decoded, segments)
    assert audio.shape == (1, 2, length)


def test_lm_round_trip_of_edge_lengths() -> None:
    model, lm = golden_models("tiny_24khz")
    for length in edge_lengths("tiny_24khz"):
        segments = model.encode(golden_input("tiny_24khz")[None, :, :length], golden_config("tiny_24khz")["bandwidth"])
        buffer = io.BytesIO()

        write_legacy(buffer, model, segments, length, lm=lm)
        _, decoded = read_stream(buffer.getvalue(), model, lm)

        assert_segments_equal(decoded, segments)
