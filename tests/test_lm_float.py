"""The float LM against the reference implementation's outputs on the tiny golden configurations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ecdc_stream.model.lm import LMModel, sinusoidal_embedding

TESTS = Path(__file__).resolve().parent
CASES = ["tiny_24khz", "tiny_48khz"]

# The reference probabilities were computed with 2 torch threads. The attention kernel (torch 2.13
# CPU) gives different last bits with 1 or 3 threads, so the bit-equality checks pin the count.
REFERENCE_THREADS = 2


@pytest.fixture
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


def load_golden_lm(case: str) -> LMModel:
    config = json.loads(golden_file(case, "config.json").read_text())
    lm = LMModel(
        config["n_q"],
        config["bins"],
        dim=config["lm_dim"],
        num_layers=config["lm_layers"],
        num_heads=config["lm_num_heads"],
        hidden_scale=config["lm_hidden_scale"],
        past_context=config["lm_past_context"],
    )
    lm.load_state_dict(torch.load(golden_file(case, "lm.pt"), weights_only=True), strict=True)
    return lm.eval()


@torch.no_grad()
def run_step_by_step(lm: LMModel, codes: torch.Tensor) -> torch.Tensor:
    """Run `lm` one frame at a time over codes [1, K, T] as the reference decoder does; return [1, card, K, T]."""
    _, num_codebooks, num_frames = codes.shape
    states = None
    offset = 0
    lm_input = torch.zeros(1, num_codebooks, 1, dtype=torch.long)
    steps = []
    for t in range(num_frames):
        probs, states, offset = lm(lm_input, states, offset)
        steps.append(probs)
        lm_input = 1 + codes[:, :, t : t + 1]
    return torch.cat(steps, dim=-1)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.usefixtures("reference_threads")
def test_lm_stepwise_probabilities_bit_equal(case: str) -> None:
    lm = load_golden_lm(case)
    codes = torch.load(golden_file(case, "frames.pt"), weights_only=True)[0][0]
    expected = torch.load(golden_file(case, "lm_probs_segment0.pt"), weights_only=True)

    probs = run_step_by_step(lm, codes)

    assert probs.shape == expected.shape
    assert probs.dtype == torch.float32
    mismatches = int((probs != expected).sum())
    assert mismatches == 0, f"{mismatches} of {probs.numel()} probabilities differ from the reference"


@pytest.mark.parametrize("case", CASES)
def test_lm_probabilities_are_distributions(case: str) -> None:
    lm = load_golden_lm(case)
    codes = torch.load(golden_file(case, "frames.pt"), weights_only=True)[0][0][:, :, :20]

    probs = run_step_by_step(lm, codes)

    assert bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, codes.shape[1], codes.shape[2]))


@pytest.mark.parametrize("checkpoint, n_q", [("encodec_lm_24khz-1608e3c0.th", 32), ("encodec_lm_48khz-7add9fc3.th", 16)])
def test_lm_keys_match_published_layout(checkpoint: str, n_q: int) -> None:
    layouts = json.loads(golden_file("", "checkpoint_layouts.json").read_text())
    expected = [(key, list(shape), dtype) for key, shape, dtype in layouts[checkpoint]]

    lm = LMModel(n_q, 1024, dim=200, num_layers=5, past_context=262)
    actual = [(key, list(value.shape), str(value.dtype)) for key, value in lm.state_dict().items()]

    assert actual == expected


@torch.no_grad()
def test_lm_state_keeps_past_context_frames() -> None:
    torch.manual_seed(0)
    lm = LMModel(2, 8, dim=16, num_layers=2, num_heads=4, past_context=3).eval()
    states = None
    offset = 0
    for step in range(6):
        _, states, offset = lm(torch.zeros(1, 2, 1, dtype=torch.long), states, offset)

        assert len(states) == 2
        # One zero frame at the start, then one frame per step, cut to the past context.
        assert states[0].shape == (1, min(step + 2, 3), 16)
    assert offset == 6


@torch.no_grad()
def test_lm_attention_ignores_frames_beyond_past_context() -> None:
    torch.manual_seed(0)
    lm = LMModel(1, 8, dim=16, num_layers=1, num_heads=4, past_context=2).eval()
    prefix_a = torch.tensor([[[1, 2, 3, 4, 5]]])
    prefix_b = torch.tensor([[[7, 7, 3, 4, 5]]])

    # The last frame attends to frames 2..4 only, so the first two inputs cannot change it.
    probs_a, _, _ = lm(prefix_a)
    probs_b, _, _ = lm(prefix_b)

    torch.testing.assert_close(probs_a[..., -1], probs_b[..., -1])
    assert not torch.allclose(probs_a[..., 0], probs_b[..., 0])


@torch.no_grad()
def test_lm_fewer_codebooks_than_n_q() -> None:
    torch.manual_seed(0)
    lm = LMModel(4, 8, dim=16, num_layers=1, num_heads=4).eval()

    probs, _, _ = lm(torch.zeros(2, 3, 5, dtype=torch.long))

    assert probs.shape == (2, 8, 3, 5)


def test_lm_rejects_more_codebooks_than_n_q() -> None:
    lm = LMModel(2, 8, dim=16, num_layers=1, num_heads=4).eval()

    with pytest.raises(ValueError, match="2 codebooks"):
        lm(torch.zeros(1, 3, 1, dtype=torch.long))


def test_sinusoidal_embedding_values() -> None:
    positions = torch.arange(3).view(1, -1, 1)

    embedding = sinusoidal_embedding(positions, 4, max_period=100)

    assert embedding.shape == (1, 3, 4)
    # dim 4: two frequencies, periods 1 and 100 (in radians per frame: 1 and 1/100).
    expected_phase = torch.tensor([[0.0, 0.0], [1.0, 0.01], [2.0, 0.02]])
    torch.testing.assert_close(embedding[0], torch.cat([expected_phase.cos(), expected_phase.sin()], dim=-1))
