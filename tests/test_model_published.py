"""The published configurations: checkpoint layouts, strict loading, and a short real recording."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
import torch

from ecdc_stream.model import (
    LM_CHECKPOINTS,
    MODEL_CHECKPOINTS,
    EncodecModel,
    build_lm,
    lm_state_dict,
    load_lm,
    load_model,
    published_config,
)
from ecdc_stream.model.weights import read_state_dict

NAMES = ["encodec_24khz", "encodec_48khz"]


def layout(state: dict[str, torch.Tensor]) -> list[list]:
    return [[key, list(value.shape), str(value.dtype)] for key, value in state.items()]


@pytest.fixture(scope="module")
def checkpoint_layouts(golden_dir) -> dict[str, list]:
    return json.loads((golden_dir / "checkpoint_layouts.json").read_text())


@pytest.mark.parametrize("name", NAMES)
def test_model_layout_matches_published(checkpoint_layouts, name):
    model = EncodecModel(published_config(name))
    assert layout(model.state_dict()) == checkpoint_layouts[MODEL_CHECKPOINTS[name]]


@pytest.mark.parametrize("name", NAMES)
def test_lm_layout_matches_published(checkpoint_layouts, name):
    lm = build_lm(published_config(name))
    assert layout(lm.state_dict()) == checkpoint_layouts[LM_CHECKPOINTS[name]]


@pytest.mark.parametrize("file_name", [*MODEL_CHECKPOINTS.values(), *LM_CHECKPOINTS.values()])
def test_random_checkpoint_layout(checkpoint_layouts, weights_dir, file_name):
    state = read_state_dict(weights_dir / file_name)
    assert layout(state) == checkpoint_layouts[file_name]


@pytest.mark.parametrize("name", NAMES)
def test_published_model_loads_strictly(weights_dir, name):
    model = load_model(name, weights_dir)
    state = read_state_dict(weights_dir / MODEL_CHECKPOINTS[name])
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not model.training


@pytest.mark.parametrize("name", NAMES)
def test_published_lm_loads_strictly(weights_dir, name):
    lm = load_lm(name, weights_dir)
    assert lm.past_context == published_config(name).resolved_lm_past_context
    state = lm_state_dict(name, weights_dir)
    assert set(state) == set(read_state_dict(weights_dir / LM_CHECKPOINTS[name]))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "recording"), [("encodec_24khz", "test_24k.wav"), ("encodec_48khz", "test_48k.wav")])
def test_recording_round_trip(weights_dir, audio_dir, name, recording):
    model = load_model(name, weights_dir)
    samples, rate = sf.read(str(audio_dir / recording), dtype="float32", always_2d=True, frames=2 * 48000 + 1)
    assert rate == model.sample_rate
    wav = torch.from_numpy(samples.T.copy()).unsqueeze(0)[..., : 2 * rate + 1]

    segments = model.encode(wav, 6.0)
    decoded = model.decode(segments, wav.shape[-1])

    assert decoded.shape == wav.shape
    assert torch.isfinite(decoded).all()
    codes = torch.cat([codes for codes, _ in segments], dim=-1)
    assert codes.shape[1] == model.num_codebooks(6.0)
    # Audio-filled codebooks: every codebook level uses many different codes on real audio.
    for level in range(codes.shape[1]):
        assert len(torch.unique(codes[0, level])) > 20, level
