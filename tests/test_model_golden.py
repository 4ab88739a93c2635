"""Parity with the reference implementation on the golden tiny configurations."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from ecdc_stream.model import EncodecModel, load_lm, load_model
from ecdc_stream.model.lm import LMModel

CASES = ["tiny_24khz", "tiny_48khz"]


def read_input(golden_dir, case: str) -> torch.Tensor:
    samples, _ = sf.read(str(golden_dir / case / "input.wav"), dtype="float32", always_2d=True)
    return torch.from_numpy(samples.T.copy()).unsqueeze(0)


def golden_bandwidth(golden_dir, case: str) -> float:
    return json.loads((golden_dir / case / "config.json").read_text())["bandwidth"]


@pytest.mark.parametrize("case", CASES)
def test_codes_and_scales_equal_reference(golden_dir, tiny_models, case):
    model = load_model(case)
    segments = model.encode(read_input(golden_dir, case), golden_bandwidth(golden_dir, case))
    expected = torch.load(golden_dir / case / "frames.pt", weights_only=True)

    assert len(segments) == len(expected)
    for (codes, scale), (expected_codes, expected_scale) in zip(segments, expected):
        assert codes.dtype == torch.int64
        assert torch.equal(codes, expected_codes)
        if expected_scale is None:
            assert scale is None
        else:
            assert torch.equal(scale, expected_scale)


@pytest.mark.parametrize("case", CASES)
def test_decode_matches_reference(golden_dir, tiny_models, case):
    model = load_model(case)
    frames = torch.load(golden_dir / case / "frames.pt", weights_only=True)
    expected = torch.load(golden_dir / case / "decoded.pt", weights_only=True)

    decoded = model.decode(frames)

    assert decoded.shape == expected.shape
    torch.testing.assert_close(decoded, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_registered_model_attributes(golden_dir, tiny_models, case):
    config = json.loads((golden_dir / case / "config.json").read_text())
    model = load_model(case)
    assert isinstance(model, EncodecModel)
    assert not model.training
    assert model.name == case
    assert model.sample_rate == config["sample_rate"]
    assert model.channels == config["channels"]
    assert model.frame_rate == config["frame_rate"]
    assert model.segment_length == config["segment_length"]
    assert model.segment_stride == config["segment_stride"]
    assert model.num_codebooks(config["bandwidth"]) == config["num_codebooks_used"]
    assert model.bits_per_codebook == 4


@pytest.mark.parametrize("case", CASES)
def test_registered_lm_loads(golden_dir, tiny_models, case):
    config = json.loads((golden_dir / case / "config.json").read_text())
    lm = load_lm(case)
    assert isinstance(lm, LMModel)
    assert lm.past_context == config["lm_past_context"]
    expected = torch.load(golden_dir / case / "lm.pt", weights_only=True)
    for key, value in lm.state_dict().items():
        assert torch.equal(value, expected[key]), key
