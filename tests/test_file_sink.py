"""A sound file sink replaces an earlier file only when the whole pipeline succeeded."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from ecdc_stream.io.audio_files import AudioFileSink
from ecdc_stream.pipeline.core import run_in_thread, run_stages
from ecdc_stream.pipeline.records import AudioBlock

EARLIER = b"an earlier output"
RATE = 8000


class StageFailed(Exception):
    pass


def failing_stage(blocks_before_failure: int, in_thread: bool):
    """Return a source that sends some 0.1 s blocks, then fails, in the event loop or a worker thread."""

    async def source(receive, send):
        async with receive, send:
            for index in range(blocks_before_failure):
                await send.send(AudioBlock(np.zeros((1, RATE // 10), dtype=np.float32), RATE, index * RATE // 10))
            if in_thread:
                await run_in_thread(_fail)
            _fail()

    return source


def _fail() -> None:
    raise StageFailed("decoding failed")


async def forward(receive, send):
    async with receive, send:
        async for item in receive:
            await send.send(item)


async def discard(receive, send):
    async with receive, send:
        async for _ in receive:
            pass


def assert_stage_failed(raised: pytest.ExceptionInfo) -> None:
    """Check that the run ended with the stage's error, alone or in an exception group."""
    if isinstance(raised.value, BaseExceptionGroup):
        assert raised.group_contains(StageFailed)
    else:
        assert raised.type is StageFailed


@pytest.mark.parametrize("blocks_before_failure", [0, 1, 3])
@pytest.mark.parametrize("in_thread", [False, True], ids=["loop", "thread"])
def test_failure_keeps_earlier_file(tmp_path, blocks_before_failure, in_thread):
    path = tmp_path / "out.wav"
    path.write_bytes(EARLIER)
    sink = AudioFileSink(path, RATE, 1, keep_on_cancel=False)

    with pytest.raises(BaseException) as raised:
        anyio.run(run_stages, failing_stage(blocks_before_failure, in_thread), sink, discard)
    assert_stage_failed(raised)
    assert path.read_bytes() == EARLIER
    assert [item.name for item in tmp_path.iterdir()] == ["out.wav"]


def test_failure_two_stages_upstream_keeps_earlier_file(tmp_path):
    path = tmp_path / "out.wav"
    path.write_bytes(EARLIER)
    sink = AudioFileSink(path, RATE, 1, keep_on_cancel=False)

    with pytest.raises(BaseException) as raised:
        anyio.run(run_stages, failing_stage(0, False), forward, forward, sink, discard)
    assert_stage_failed(raised)
    assert path.read_bytes() == EARLIER


def test_success_replaces_earlier_file(tmp_path):
    path = tmp_path / "out.wav"
    path.write_bytes(EARLIER)
    sink = AudioFileSink(path, RATE, 1, keep_on_cancel=False)

    async def source(receive, send):
        async with receive, send:
            await send.send(AudioBlock(np.zeros((1, RATE), dtype=np.float32), RATE, 0))

    anyio.run(run_stages, source, sink, discard)
    assert path.read_bytes()[:4] == b"RIFF"
