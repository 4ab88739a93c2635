"""Streaming EnCodec: block-by-block encode and decode against the whole-input computation."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from ecdc_stream.model import load_model
from ecdc_stream.model.streaming import SegmentDecoder, SegmentEncoder, StreamingDecoder, StreamingEncoder

BLOCK_SIZES = (7, 319, 320, 321, 1000, 4801, 10**9)


@pytest.fixture(scope="module")
def model24(tiny_models):
    return load_model("tiny_24khz")


@pytest.fixture(scope="module")
def model48(tiny_models):
    return load_model("tiny_48khz")


@pytest.fixture(scope="module")
def audio24(golden_dir) -> torch.Tensor:
    data, rate = sf.read(golden_dir / "tiny_24khz" / "input.wav", dtype="float32", always_2d=True)
    assert rate == 24000
    return torch.from_numpy(data.T.copy())


@pytest.fixture(scope="module")
def audio48(golden_dir) -> torch.Tensor:
    data, rate = sf.read(golden_dir / "tiny_48khz" / "input.wav", dtype="float32", always_2d=True)
    assert rate == 48000
    return torch.from_numpy(data.T.copy())


def encode_in_blocks(model, audio: torch.Tensor, block: int, num_codebooks: int = 4) -> torch.Tensor:
    encoder = StreamingEncoder(model, num_codebooks)
    parts = [encoder.push(piece) for piece in torch.split(audio, block, dim=-1)]
    parts.append(encoder.finish())
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize("block", BLOCK_SIZES)
def test_streaming_codes_equal_whole_input(model24, audio24, block):
    whole = StreamingEncoder(model24, 4).encode_all(audio24)
    streamed = encode_in_blocks(model24, audio24, block)
    assert streamed.shape == (4, 150)
    assert torch.equal(streamed, whole)


def test_streaming_codes_independent_of_thread_count(model24, audio24):
    whole = StreamingEncoder(model24, 4).encode_all(audio24)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = encode_in_blocks(model24, audio24, 1000)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, whole)


@pytest.mark.parametrize("length", [1, 5, 7, 319, 320, 321, 641, 6720])
def test_streaming_codes_of_short_and_edge_lengths(model24, audio24, length):
    audio = audio24[:, :length]
    whole = StreamingEncoder(model24, 4).encode_all(audio)
    assert whole.shape[-1] == -(-length // model24.hop_length)
    for block in (1, 320, 1000):
        assert torch.equal(encode_in_blocks(model24, audio, block), whole), f"block {block}"


def test_streaming_embeddings_match_offline_encoder(model24, audio24):
    """The fixed grid changes the float rounding, not the values: the networks agree to ~1e-6."""
    encoder = StreamingEncoder(model24, 4)
    from ecdc_stream.model.streaming import run_streaming

    streamed = run_streaming(encoder.encoder, torch.split(audio24[None], 777, dim=-1))
    with torch.no_grad():
        offline = model24.encoder(audio24[None])
    assert streamed.shape == offline.shape
    assert torch.allclose(streamed, offline, atol=1e-5, rtol=0)


def test_streaming_codes_match_offline_with_separated_codebooks(tiny_models, audio24):
    """With codewords far apart (no near ties), the grid's rounding flips no code of `encode`."""
    model = load_model("tiny_24khz")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        embeddings = model.encoder(audio24[None])
        spread = embeddings.std().item()
        for layer in model.quantizer.vq.layers:
            layer._codebook.embed.copy_(torch.randn(layer._codebook.embed.shape, generator=generator) * spread)
    offline = model.encode(audio24[None], 1.2)[0][0][0]
    streamed = encode_in_blocks(model, audio24, 1234)
    assert torch.equal(streamed, offline)


@pytest.mark.parametrize("block", [1, 2, 7, 75, 10**9])
def test_streaming_decode_matches_offline(model24, audio24, block):
    codes = StreamingEncoder(model24, 4).encode_all(audio24)
    decoder = StreamingDecoder(model24)
    parts = [decoder.push(piece) for piece in torch.split(codes, block, dim=-1)]
    parts.append(decoder.finish())
    streamed = torch.cat(parts, dim=-1)

    offline = model24.decode([(codes[None], None)])[0]
    assert streamed.shape == offline.shape
    assert torch.allclose(streamed, offline, atol=1e-5, rtol=0)

    reference = StreamingDecoder(model24)
    whole = torch.cat([reference.push(codes), reference.finish()], dim=-1)
    assert torch.equal(streamed, whole)


@pytest.mark.parametrize("length", [1, 47521, 48000, 48001, 95041, 120000])
def test_segment_encoder_equals_offline(model48, audio48, length):
    audio = audio48[:, :length]
    offline = model48.encode(audio[None], 2.4)
    encoder = SegmentEncoder(model48, 4)
    segments = []
    for piece in torch.split(audio, 7000, dim=-1):
        segments += encoder.push(piece)
    segments += encoder.finish()

    assert len(segments) == len(offline)
    for (codes, scale, _), (offline_codes, offline_scale) in zip(segments, offline):
        assert torch.equal(codes, offline_codes[0])
        assert scale == float(offline_scale.view(-1)[0])
    assert sum(covered for _, _, covered in segments) == length


@pytest.mark.parametrize("length", [1, 47521, 48001, 95041, 120000])
def test_segment_decoder_overlap_add_matches_offline(model48, audio48, length):
    audio = audio48[:, :length]
    offline_segments = model48.encode(audio[None], 2.4)
    offline = model48.decode(offline_segments)[0]

    decoder = SegmentDecoder(model48)
    parts = [decoder.push(codes[0], float(scale.view(-1)[0])) for codes, scale in offline_segments]
    parts.append(decoder.finish())
    streamed = torch.cat(parts, dim=-1)

    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed.numpy(), offline.numpy(), atol=1e-6, rtol=0)
