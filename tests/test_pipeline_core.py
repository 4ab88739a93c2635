"""The stage framework: ordering, backpressure, errors, stopping, cancellation, custom stages."""

from __future__ import annotations

import anyio
import pytest

from ecdc_stream.pipeline.core import NamedStage, Pipeline, run_stages
from ecdc_stream.pipeline.standard import CollectSink, block_source


def counting_source(count: int, produced: list[int] | None = None):
    async def source(receive, send):
        async with receive, send:
            for index in range(count):
                await send.send(index)
                if produced is not None:
                    produced.append(index)

    return source


def endless_source(produced: list[int]):
    async def source(receive, send):
        async with receive, send:
            index = 0
            while True:
                await send.send(index)
                produced.append(index)
                index += 1
                await anyio.sleep(0.001)

    return source


async def double(receive, send):
    async with receive, send:
        async for item in receive:
            await send.send(item * 2)


async def test_pipeline_passes_items_in_order():
    sink = CollectSink()
    await run_stages(counting_source(100), double, sink)
    assert sink.items == [2 * index for index in range(100)]


async def test_bounded_buffers_give_backpressure():
    produced: list[int] = []
    consumed: list[int] = []
    release = anyio.Event()

    async def slow_sink(receive, send):
        async with receive, send:
            await release.wait()
            async for item in receive:
                consumed.append(item)

    pipeline = Pipeline([NamedStage("source", counting_source(1000, produced), 2), NamedStage("sink", slow_sink, 2)])
    async with anyio.create_task_group() as group:
        group.start_soon(pipeline.run)
        await anyio.sleep(0.2)
        # The source can run ahead of the stalled sink by the buffer only (2 items, plus the
        # one waiting in its `send`).
        assert len(produced) <= 3
        release.set()
    assert consumed == list(range(1000))


async def test_stage_error_ends_pipeline():
    produced: list[int] = []

    async def failing(receive, send):
        async with receive, send:
            async for item in receive:
                if item == 5:
                    raise ValueError("stage failed on item 5")
                await send.send(item)

    with anyio.fail_after(5):
        with pytest.raises(ValueError, match="item 5"):
            await run_stages(endless_source(produced), failing, CollectSink())


async def test_error_in_the_sink_stops_an_endless_source():
    produced: list[int] = []

    async def failing_sink(receive, send):
        async with receive, send:
            async for item in receive:
                if item >= 6:
                    raise OSError("disk full")

    with anyio.fail_after(5):
        with pytest.raises(OSError, match="disk full"):
            await run_stages(endless_source(produced), double, failing_sink)


async def test_stop_ends_source_and_drains_later_stages():
    produced: list[int] = []
    finished: list[str] = []

    async def flushing_stage(receive, send):
        async with receive, send:
            async for item in receive:
                await send.send(item)
            # What a stage does at the end of its input still happens after a stop.
            await send.send("flushed")
            finished.append("stage")

    sink = CollectSink()
    pipeline = Pipeline([NamedStage("source", endless_source(produced)), NamedStage("flush", flushing_stage), NamedStage("sink", sink)])
    async with anyio.create_task_group() as group:
        group.start_soon(pipeline.run)
        await anyio.sleep(0.1)
        pipeline.stop()
    assert finished == ["stage"]
    assert sink.items[-1] == "flushed"
    assert sink.items[:-1] == produced[: len(sink.items) - 1]


async def test_cancel_runs_every_stage_cleanup():
    closed: list[str] = []
    produced: list[int] = []

    def owning_stage(name: str):
        async def stage(receive, send):
            try:
                async with receive, send:
                    async for item in receive:
                        await send.send(item)
            finally:
                closed.append(name)

        return stage

    pipeline = Pipeline(
        [NamedStage("source", endless_source(produced)), NamedStage("a", owning_stage("a")), NamedStage("b", owning_stage("b"))]
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(pipeline.run)
            await anyio.sleep(0.1)
            pipeline.cancel()
    assert sorted(closed) == ["a", "b"]


async def test_sink_that_returns_early_ends_the_pipeline():
    produced: list[int] = []

    async def first_three(receive, send):
        async with receive, send:
            async for item in receive:
                if item >= 3:
                    return

    with anyio.fail_after(5):
        await run_stages(endless_source(produced), first_three)


async def test_insert_custom_stage_by_name():
    sink = CollectSink()

    async def drop_odd(receive, send):
        async with receive, send:
            async for item in receive:
                if item % 2 == 0:
                    await send.send(item)

    pipeline = Pipeline([NamedStage("source", counting_source(10)), NamedStage("double", double), NamedStage("sink", sink)])
    pipeline.insert_before("double", "filter", drop_odd)
    pipeline.insert_after("double", "tap", double)
    assert pipeline.names() == ["source", "filter", "double", "tap", "sink"]
    await pipeline.run()
    assert sink.items == [4 * index for index in range(0, 10, 2)]


async def test_stage_names_are_checked():
    pipeline = Pipeline([NamedStage("source", counting_source(1)), NamedStage("sink", CollectSink())])
    with pytest.raises(ValueError, match="already"):
        pipeline.insert_after("source", "sink", double)
    with pytest.raises(KeyError, match="no stage named 'missing'"):
        pipeline.insert_after("missing", "x", double)


async def test_block_source_sends_every_item():
    sink = CollectSink()
    await run_stages(lambda receive, send: block_source(receive, send, range(5)), sink)
    assert sink.items == list(range(5))
