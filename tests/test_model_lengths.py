"""Exact lengths and frame counts for every input length, including the reference's failures."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ecdc_stream.errors import InvalidArgumentError, InvalidAudioError
from ecdc_stream.model import EncodecConfig, EncodecModel, load_model, published_config

LENGTHS = {
    "tiny_24khz": [1, 2, 319, 320, 321, 640, 6720, 16320, 26880, 53760],
    "tiny_48khz": [1, 2, 319, 47520, 47521, 47999, 48000, 48001, 95040, 95041, 96000],
}


def round_trip(model: EncodecModel, length: int, bandwidth: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    wav = 0.1 * torch.randn(1, model.channels, length, generator=generator)
    segments = model.encode(wav, bandwidth)
    return segments, model.decode(segments, length)


def expected_segment_lengths(model: EncodecModel, length: int) -> list[int]:
    if model.segment_length is None:
        return [length]
    return [min(model.segment_length, length - start) for start in range(0, length, model.segment_stride)]


@pytest.mark.parametrize("case", sorted(LENGTHS))
def test_exact_length_round_trip(golden_dir, tiny_models, case):
    bandwidth = json.loads((golden_dir / case / "config.json").read_text())["bandwidth"]
    model = load_model(case)
    for length in LENGTHS[case]:
        segments, decoded = round_trip(model, length, bandwidth)

        assert decoded.shape == (1, model.channels, length), length
        assert torch.isfinite(decoded).all(), length
        segment_lengths = expected_segment_lengths(model, length)
        assert [codes.shape[-1] for codes, _ in segments] == [
            model.frames_for_samples(n) for n in segment_lengths
        ], length


def test_one_sample_last_segment_encodes(tiny_models):
    # The reference raises "Expected more than 1 value per channel" on these three lengths.
    model = load_model("tiny_48khz")
    for length in (1, 47521, 95041):
        segments, decoded = round_trip(model, length, 2.4)
        assert segments[-1][0].shape[-1] == 1
        assert decoded.shape[-1] == length


@settings(max_examples=15, deadline=None)
@given(length=st.integers(1, 3000))
def test_random_lengths_24khz(tiny_models, length):
    model = load_model("tiny_24khz")
    segments, decoded = round_trip(model, length, 0.6, seed=length)
    assert decoded.shape[-1] == length
    assert segments[0][0].shape == (1, 2, -(-length // 320))


def test_frames_for_samples_is_integer_exact():
    model = EncodecModel(published_config("encodec_24khz"))
    # encodec 0.1.1 computed 53760 / 24000 * 75 in floats, which is 168.00000000000003 and
    # rounds up to 169 frames.
    assert 53760 / 24000 * 75 > 168
    assert model.frames_for_samples(53760) == 168
    assert model.frames_for_samples(53761) == 169
    assert model.frames_for_samples(1) == 1
    assert model.frames_for_samples(0) == 0
    for n in range(1, 5000, 7):
        assert model.frames_for_samples(n) == -(-n // 320)


def test_decode_cut_beyond_output_rejected(tiny_models):
    model = load_model("tiny_24khz")
    segments = model.encode(torch.zeros(1, 1, 320), 1.2)
    with pytest.raises(InvalidArgumentError):
        model.decode(segments, 321)


@pytest.mark.parametrize(
    "wav",
    [
        torch.zeros(1, 1, 0),
        torch.zeros(1, 2, 100),
        torch.zeros(1, 100),
        torch.zeros(1, 1, 10, dtype=torch.int16),
        torch.tensor([[[0.0, float("nan")]]]),
        torch.tensor([[[float("inf"), 0.0]]]),
    ],
    ids=["empty", "stereo", "two_axes", "integer", "nan", "inf"],
)
def test_bad_audio_rejected(tiny_models, wav):
    model = load_model("tiny_24khz")
    with pytest.raises(InvalidAudioError):
        model.encode(wav, 1.2)


def test_bad_codes_rejected(tiny_models):
    model = load_model("tiny_48khz")
    codes = torch.zeros(1, 4, 3, dtype=torch.int64)
    with pytest.raises(InvalidArgumentError, match="scale"):
        model.decode([(codes, None)])
    with pytest.raises(InvalidArgumentError, match=r"\[0, 16\)"):
        model.decode([(codes + 16, torch.ones(1, 1))])
    with pytest.raises(InvalidArgumentError, match="codebooks"):
        model.decode([(torch.zeros(1, 5, 3, dtype=torch.int64), torch.ones(1, 1))])


@pytest.mark.parametrize(
    ("name", "table"),
    [
        ("encodec_24khz", {1.5: 2, 3.0: 4, 6.0: 8, 12.0: 16, 24.0: 32}),
        ("encodec_48khz", {3.0: 2, 6.0: 4, 12.0: 8, 24.0: 16}),
    ],
)
def test_published_codebook_counts(name, table):
    model = EncodecModel(published_config(name))
    for bandwidth, count in table.items():
        assert model.num_codebooks(bandwidth) == count
    assert model.num_codebooks(6) == table[6.0]


def test_bandwidth_not_offered_names_choices():
    model = EncodecModel(published_config("encodec_48khz"))
    with pytest.raises(InvalidArgumentError) as caught:
        model.num_codebooks(1.5)
    message = str(caught.value)
    assert "1.5" in message
    assert "3, 6, 12, 24" in message


def test_published_segment_arithmetic():
    model_24 = EncodecModel(published_config("encodec_24khz"))
    model_48 = EncodecModel(published_config("encodec_48khz"))
    assert (model_24.frame_rate, model_24.segment_length, model_24.segment_stride) == (75, None, None)
    assert (model_48.frame_rate, model_48.segment_length, model_48.segment_stride) == (150, 48000, 47520)
    assert published_config("encodec_24khz").resolved_lm_past_context == 262
    assert published_config("encodec_48khz").resolved_lm_past_context == 525
    assert model_48.segment_offsets(95041) == [0, 47520, 95040]


def test_config_rejects_bad_values():
    base = published_config("encodec_24khz").to_dict()
    with pytest.raises(InvalidArgumentError, match="power of 2"):
        EncodecConfig.from_dict({**base, "bins": 1000})
    with pytest.raises(InvalidArgumentError, match="overlap"):
        EncodecConfig.from_dict({**base, "overlap": 1.0})
    with pytest.raises(InvalidArgumentError, match="unknown"):
        EncodecConfig.from_dict({**base, "colour": "red"})
    assert EncodecConfig.from_dict(base) == published_config("encodec_24khz")


def test_other_hyperparameters_build_and_run():
    config = EncodecConfig(
        name="variant",
        sample_rate=16000,
        channels=1,
        target_bandwidths=(2.0,),
        n_q=4,
        bins=64,
        dimension=8,
        n_filters=4,
        n_residual_layers=2,
        ratios=(4, 2),
        activation_params={"alpha": 0.5},
        final_activation="Tanh",
        norm="none",
        kernel_size=5,
        last_kernel_size=3,
        residual_kernel_size=5,
        dilation_base=3,
        causal=True,
        pad_mode="constant",
        true_skip=True,
        compress=4,
        lstm=1,
        trim_right_ratio=0.5,
        segment=0.25,
        overlap=0.1,
        normalize=True,
    )
    model = EncodecModel(config).eval()
    assert model.frame_rate == 2000
    assert model.segment_length == 4000
    assert model.segment_stride == 3600
    assert model.num_codebooks(2.0) == 1
    wav = torch.randn(1, 1, 9001)
    decoded = model.decode(model.encode(wav, 2.0), 9001)
    assert decoded.shape == (1, 1, 9001)
    assert decoded.abs().max() <= 1.0 * decoded.new_tensor(10.0)
    # Dilations 1 and 3 in the two residual blocks of the first stage.
    assert model.encoder.model[2].block[1].conv.conv.dilation == (3,)
