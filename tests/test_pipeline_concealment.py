"""Concealment: gaps become faded silence of exactly their duration."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from ecdc_stream.pipeline.concealment import Concealer, conceal_stage
from ecdc_stream.pipeline.core import run_stages
from ecdc_stream.pipeline.records import AudioBlock, Gap
from ecdc_stream.pipeline.standard import CollectSink, block_source

RATE = 24000


def tone(num_samples: int, start: int, channels: int = 1) -> np.ndarray:
    t = (np.arange(num_samples) + start) / RATE
    return np.tile(0.5 * np.sin(2 * np.pi * 440 * t), (channels, 1)).astype(np.float32)


def conceal_all(items, channels: int = 1, fade: int = 120) -> np.ndarray:
    concealer = Concealer(RATE, channels, fade)
    out = []
    for item in items:
        out += concealer.push(item)
    out += concealer.flush()
    positions = [block.start for block in out]
    assert positions == sorted(positions)
    return np.concatenate([block.samples for block in out], axis=1)


@pytest.mark.parametrize("block", [7, 100, 2400])
def test_output_length_equals_input_length(block):
    items = []
    position = 0
    for index in range(12):
        if index in (3, 4, 9):
            items.append(Gap(index, block, "lost"))
        else:
            items.append(AudioBlock(tone(block, position), RATE, position))
        position += block
    out = conceal_all(items)
    assert out.shape == (1, 12 * block)


def test_gap_is_silence_with_faded_edges():
    fade = 120
    items = [AudioBlock(tone(2400, 0), RATE, 0), Gap(1, 2400, "corrupt"), AudioBlock(tone(2400, 4800), RATE, 4800)]
    out = conceal_all(items, fade=fade)[0]
    clean = tone(7200, 0)[0]

    # Untouched audio away from the gap, exact silence inside it.
    np.testing.assert_array_equal(out[: 2400 - fade], clean[: 2400 - fade])
    np.testing.assert_array_equal(out[2400:4800], 0.0)
    np.testing.assert_array_equal(out[4800 + fade :], clean[4800 + fade :])

    # The fades ramp the audio to and from zero: no step larger than the tone's own slope.
    max_step = np.abs(np.diff(clean)).max()
    assert np.abs(np.diff(out)).max() <= max_step * 1.01
    assert abs(out[2399]) < 0.01
    assert abs(out[4800]) < 0.01


def test_fade_in_spans_several_short_blocks():
    fade = 120
    items = [Gap(0, 500, "lost")] + [AudioBlock(tone(10, 500 + 10 * i), RATE, 500 + 10 * i) for i in range(30)]
    out = conceal_all(items, fade=fade)[0]
    clean = tone(300, 500)[0]
    assert out.shape == (800,)
    np.testing.assert_array_equal(out[:500], 0.0)
    np.testing.assert_array_equal(out[500 + fade :], clean[fade:])
    assert np.all(np.abs(out[500 : 500 + fade]) <= np.abs(clean[:fade]) + 1e-7)


def test_stereo_gap_at_end_of_stream():
    items = [AudioBlock(tone(1000, 0, channels=2), RATE, 0), Gap(1, 777, "lost")]
    out = conceal_all(items, channels=2)
    assert out.shape == (2, 1777)
    np.testing.assert_array_equal(out[:, 1000:], 0.0)


def test_wrong_channel_count_is_rejected():
    concealer = Concealer(RATE, 2)
    with pytest.raises(ValueError, match=r"\[2, n\]"):
        concealer.push(AudioBlock(tone(10, 0), RATE, 0))


async def test_conceal_stage_in_a_pipeline():
    items = [AudioBlock(tone(480, 480 * i), RATE, 480 * i) if i != 2 else Gap(2, 480) for i in range(6)]
    sink = CollectSink()
    await run_stages(
        functools.partial(block_source, blocks=items),
        functools.partial(conceal_stage, sample_rate=RATE, channels=1),
        sink,
    )
    audio = sink.audio()
    assert audio.shape == (1, 2880)
    np.testing.assert_array_equal(audio[0, 960:1440], 0.0)
