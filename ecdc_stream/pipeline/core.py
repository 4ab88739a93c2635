"""Stages connected by bounded anyio memory object streams, run in one task group.

A stage is an async callable `stage(receive, send)` (or an object with `async def run(receive,
send)`) that reads items from `receive` until it ends, sends items on `send`, and closes both when
it returns (`async with receive, send:`). The first stage of a pipeline (the source) gets a receive
stream that is already at its end, and the last stage (the sink) gets a send stream whose items
are discarded, so every stage has the same signature.

`Pipeline` keeps named stages in order. Callers build one with the functions in
`ecdc_stream.pipeline.standard` and may insert their own stage anywhere before running it:

    pipeline = standard.encode_file_pipeline(model, "in.wav", "out.ecdc")
    pipeline.insert_after("framer", "faults", my_fault_stage)
    pipeline.run_sync()

Stopping: `Pipeline.stop()` (called on the first SIGINT or SIGTERM when signals are handled)
cancels only the source. Its send stream closes, so every later stage sees the end of its input,
finishes what it holds (the last partial chunk is encoded and written, the header completed) and
returns. A second signal cancels every stage; each still closes what it owns in `finally` blocks.
An exception in any stage cancels the others and is raised from `run` as itself, not as a group.
"""

from __future__ import annotations

import inspect
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, Union

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

if sys.version_info < (3, 11):  # pragma: no cover - Python 3.10 only
    from exceptiongroup import BaseExceptionGroup

log = logging.getLogger(__name__)

DEFAULT_BUFFER_SIZE = 4


class StageObject(Protocol):
    """A stage written as a class: one `run` coroutine over its receive and send streams."""

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None: ...


StageFunction = Callable[[MemoryObjectReceiveStream, MemoryObjectSendStream], Awaitable[None]]
Stage = Union[StageFunction, StageObject]


@dataclass
class NamedStage:
    """A stage with the name that `Pipeline.insert_before`/`insert_after` refer to it by.

    buffer_size: the number of items the stream into this stage buffers before its sender waits.
    """

    name: str
    stage: Stage
    buffer_size: int = DEFAULT_BUFFER_SIZE

    def call(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> Awaitable[None]:
        run = getattr(self.stage, "run", None)
        if run is not None and inspect.iscoroutinefunction(run):
            return run(receive, send)
        return self.stage(receive, send)  # type: ignore[operator]


class Pipeline:
    """Stages in order, from a source to a sink, started together by `run`."""

    def __init__(self, stages: list[NamedStage] | None = None) -> None:
        self.stages: list[NamedStage] = list(stages or [])
        self._source_scope: anyio.CancelScope | None = None
        self._group: TaskGroup | None = None
        self._stop_requested = False
        self._signals_seen = 0
        self._drain_on_signal = True

    # Building

    def names(self) -> list[str]:
        """Return the stage names in order."""
        return [stage.name for stage in self.stages]

    def append(self, name: str, stage: Stage, buffer_size: int = DEFAULT_BUFFER_SIZE) -> Pipeline:
        """Add `stage` at the end (after the current sink) and return the pipeline."""
        self._check_new_name(name)
        self.stages.append(NamedStage(name, stage, buffer_size))
        return self

    def insert_before(self, before: str, name: str, stage: Stage, buffer_size: int = DEFAULT_BUFFER_SIZE) -> Pipeline:
        """Insert `stage` just before the stage called `before` and return the pipeline."""
        self._check_new_name(name)
        self.stages.insert(self._index(before), NamedStage(name, stage, buffer_size))
        return self

    def insert_after(self, after: str, name: str, stage: Stage, buffer_size: int = DEFAULT_BUFFER_SIZE) -> Pipeline:
        """Insert `stage` just after the stage called `after` and return the pipeline."""
        self._check_new_name(name)
        self.stages.insert(self._index(after) + 1, NamedStage(name, stage, buffer_size))
        return self

    def replace(self, name: str, stage: Stage) -> Pipeline:
        """Put `stage` in place of the stage called `name` (the source, for example) and return the pipeline."""
        self.stages[self._index(name)].stage = stage
        return self

    def remove(self, name: str) -> Pipeline:
        """Remove the stage called `name` and return the pipeline."""
        del self.stages[self._index(name)]
        return self

    def get(self, name: str) -> Stage:
        """Return the stage called `name`, to read its statistics after a run."""
        return self.stages[self._index(name)].stage

    def _index(self, name: str) -> int:
        for index, stage in enumerate(self.stages):
            if stage.name == name:
                return index
        raise KeyError(f"the pipeline has no stage named {name!r}; its stages are {self.names()}")

    def _check_new_name(self, name: str) -> None:
        if name in self.names():
            raise ValueError(f"the pipeline already has a stage named {name!r}")

    # Running

    def stop(self) -> None:
        """End the input: cancel the source so that the later stages drain and finish.

        Safe to call from the event loop's thread at any time, before or during `run`.
        """
        self._stop_requested = True
        if self._source_scope is not None:
            self._source_scope.cancel()

    def cancel(self) -> None:
        """Cancel every stage at once; each closes what it owns but pending items are dropped."""
        if self._group is not None:
            self._group.cancel_scope.cancel()

    async def run(self, handle_signals: bool = False, drain_on_signal: bool = True) -> None:
        """Run every stage until the sink returns, and raise the first error any stage raised.

        handle_signals: on the main thread, the first SIGINT or SIGTERM calls `stop` (or, with
        `drain_on_signal=False`, `cancel`, for a player that should fall silent at once) and
        the run returns normally. A second signal cancels and raises KeyboardInterrupt.
        """
        self._drain_on_signal = drain_on_signal
        if len(self.stages) < 2:
            raise ValueError(f"a pipeline needs a source and a sink; it has {self.names()}")

        try:
            async with anyio.create_task_group() as group:
                self._group = group
                if handle_signals and threading.current_thread() is threading.main_thread():
                    group.start_soon(self._watch_signals)
                await self._start_stages(group)
                # The stages ended by themselves: stop watching for signals.
                if handle_signals:
                    group.cancel_scope.cancel()
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        finally:
            self._group = None
            self._source_scope = None

    async def _start_stages(self, group: TaskGroup) -> None:
        """Start every stage in `group` and wait until all have returned."""
        # Stream i links stage i to stage i + 1. The source reads from a closed stream and the
        # sink writes to a stream that a drain task empties.
        links = [anyio.create_memory_object_stream[Any](stage.buffer_size) for stage in self.stages[1:]]
        empty_send, empty_receive = anyio.create_memory_object_stream[Any](0)
        empty_send.close()
        tail_send, tail_receive = anyio.create_memory_object_stream[Any](1)

        receives = [empty_receive] + [receive for _, receive in links]
        sends = [send for send, _ in links] + [tail_send]

        async with anyio.create_task_group() as stages_group:
            stages_group.start_soon(_drain, tail_receive)
            self._source_scope = anyio.CancelScope()
            if self._stop_requested:
                self._source_scope.cancel()
            stages_group.start_soon(self._run_source, self.stages[0], receives[0], sends[0], self._source_scope)
            for stage, receive, send in zip(self.stages[1:], receives[1:], sends[1:]):
                stages_group.start_soon(self._run_stage, stage, receive, send, name=stage.name)

    @staticmethod
    async def _run_source(
        stage: NamedStage,
        receive: MemoryObjectReceiveStream,
        send: MemoryObjectSendStream,
        scope: anyio.CancelScope,
    ) -> None:
        # The source's send stream is closed here as well as by the stage, so that a source
        # cancelled before it entered `async with send` still ends the stream.
        async with send:
            with scope:
                await Pipeline._run_stage(stage, receive, send)

    @staticmethod
    async def _run_stage(stage: NamedStage, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        try:
            await stage.call(receive, send)
        except anyio.BrokenResourceError:
            # The next stage returned before reading everything (a sink that has all it asked
            # for); this stage has nowhere to send, so it ends too.
            log.debug("stage %s stopped: the next stage no longer reads", stage.name)
        finally:
            send.close()
            receive.close()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                self._signals_seen += 1
                if self._signals_seen == 1 and self._drain_on_signal:
                    log.info("stopping: finishing the chunks in flight (press Ctrl-C again to abort)")
                    self.stop()
                elif self._signals_seen == 1:
                    log.info("stopping")
                    self.cancel()
                else:
                    log.info("aborting")
                    self.cancel()
                    raise KeyboardInterrupt

    def run_sync(self, handle_signals: bool = True, drain_on_signal: bool = True, torch_threads: int | None = 1) -> None:
        """Run the pipeline from synchronous code (a command or a script); arguments as `run`.

        torch_threads: torch's intra-op thread count during the run, restored after (None: leave
        it). The stages already run in parallel worker threads, and the small per-block products
        of streaming lose more to synchronising a thread team than they gain: on a loaded 2-core
        machine the 24 kHz streaming encoder ran 3 to 4 times faster on 1 thread than on 2
        (torch 2.13). The codes do not depend on the thread count.
        """
        previous = None
        if torch_threads is not None:
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(torch_threads)
        try:
            anyio.run(self.run, handle_signals, drain_on_signal)
        finally:
            if previous is not None:
                import torch

                torch.set_num_threads(previous)


async def _drain(receive: MemoryObjectReceiveStream) -> None:
    async with receive:
        async for _ in receive:
            pass


def _first_error(group_error: BaseExceptionGroup) -> BaseException:
    """Return the error that made a pipeline fail, preferring an ordinary one over a cancellation."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group_error)
    for error in leaves:
        if isinstance(error, Exception):
            return error
    return leaves[0] if leaves else group_error


async def run_stages(*stages: Stage, buffer_size: int = DEFAULT_BUFFER_SIZE) -> None:
    """Run unnamed stages in order as one pipeline, for tests and short scripts."""
    pipeline = Pipeline([NamedStage(f"stage{index}", stage, buffer_size) for index, stage in enumerate(stages)])
    await pipeline.run()


async def run_in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run blocking compute (network inference, entropy coding) in a worker thread.

    Cancellation waits for the call to finish, so the work is never torn in half.
    """
    return await anyio.to_thread.run_sync(function, *args)
