"""Seeded fault injection for packets: loss, burst loss, bit errors, truncation, duplication,
reordering, delay and jitter.

`FaultInjector` is a pipeline stage over `Packet` records, so it fits between any two stages
that pass packets: after the acv=4 framer (faults hit the framed chunks, and a receiver counts a
damaged chunk as corrupt) or after the link framer (faults hit whole datagrams or stream
messages). Every random choice comes from generators seeded by `FaultConfig.seed`, one per kind
of fault, so the same seed and input give the same faults, and changing one rate leaves the
other kinds' choices as they were. `FaultRecord` lists what the injector did, so a test can
compare the receiver's report with it.

Time: with `interval_ms` set the injector runs on a virtual clock (packet i is sent at
i * interval_ms) and emits `Arrival` records carrying the virtual arrival time, in arrival
order, without sleeping. Without it the injector delays packets on the real clock.
"""

from __future__ import annotations

import argparse
import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.io.transport import Arrival
from ecdc_stream.pipeline.records import Packet


@dataclass(frozen=True)
class BurstLoss:
    """Gilbert-Elliott burst loss: a good and a bad state with per-packet transition probabilities.

    p_enter: probability of moving from the good to the bad state before a packet.
    p_exit: probability of moving from the bad to the good state before a packet.
    loss_bad, loss_good: loss probability of a packet in each state.
    The mean burst length is 1 / p_exit packets.
    """

    p_enter: float
    p_exit: float
    loss_bad: float = 1.0
    loss_good: float = 0.0


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise InvalidArgumentError(f"{name} is {value!r}: give a probability from 0 to 1")


@dataclass(frozen=True)
class FaultConfig:
    """Faults to inject, each kind independent of the others.

    loss: probability of dropping a packet.
    burst: Gilbert-Elliott burst loss on top of `loss`, or None.
    ber: bit-error rate, the probability of flipping each bit of a delivered packet.
    truncate: probability of cutting a packet to a random shorter length (0 to n-1 bytes).
    duplicate: probability of delivering a packet twice.
    reorder: probability of holding a packet back until `reorder_depth` later packets went out.
    delay_ms: fixed delay of every packet, in ms.
    jitter_ms: extra delay drawn uniformly from [0, jitter_ms] for each packet, in ms.
    seed: seed of every random choice.
    """

    loss: float = 0.0
    burst: BurstLoss | None = None
    ber: float = 0.0
    truncate: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_depth: int = 2
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("loss", "ber", "truncate", "duplicate", "reorder"):
            _check_probability(f"--{name}", getattr(self, name))
        if self.burst is not None:
            for name in ("p_enter", "p_exit", "loss_bad", "loss_good"):
                _check_probability(f"--burst {name}", getattr(self.burst, name))
        if not isinstance(self.reorder_depth, int) or self.reorder_depth < 1:
            raise InvalidArgumentError(f"reorder depth is {self.reorder_depth!r}: give a whole number of packets >= 1")
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value < math.inf):
                raise InvalidArgumentError(f"--{name.removesuffix('_ms')} is {value!r} ms: give a finite number >= 0")

    @property
    def is_clean(self) -> bool:
        """True when the configuration injects no fault at all."""
        burst = self.burst is not None and (self.burst.loss_bad > 0 or self.burst.loss_good > 0)
        rates = (self.loss, self.ber, self.truncate, self.duplicate, self.reorder, self.delay_ms, self.jitter_ms)
        return not burst and not any(rates)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as JSON-ready values."""
        burst = None if self.burst is None else vars(self.burst).copy()
        return {
            "loss": self.loss,
            "burst": burst,
            "ber": self.ber,
            "truncate": self.truncate,
            "duplicate": self.duplicate,
            "reorder": self.reorder,
            "reorder_depth": self.reorder_depth,
            "delay_ms": self.delay_ms,
            "jitter_ms": self.jitter_ms,
            "seed": self.seed,
        }


@dataclass
class FaultRecord:
    """Record of an injector's actions, by sequence number, in the order they happened.

    sent: packets that entered the injector.
    dropped: sequence numbers of dropped packets.
    corrupted: sequence numbers of delivered packets with at least one flipped bit.
    truncated: sequence numbers of delivered packets that were cut short.
    duplicated: one entry per extra copy delivered.
    held_back: sequence numbers of packets held back for reordering.
    bit_errors: bits flipped in all.
    delivered: `(sequence, arrival time in s)` for every copy, in delivery order.
    """

    sent: int = 0
    dropped: list[int] = field(default_factory=list)
    corrupted: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    held_back: list[int] = field(default_factory=list)
    bit_errors: int = 0
    delivered: list[tuple[int, float]] = field(default_factory=list)

    @property
    def damaged(self) -> set[int]:
        """Sequence numbers delivered with bit errors or cut short."""
        return set(self.corrupted) | set(self.truncated)

    @property
    def reordered(self) -> set[int]:
        """Sequence numbers whose first copy was delivered after a packet with a higher one."""
        seen: set[int] = set()
        highest = -1
        result: set[int] = set()
        for sequence, _ in self.delivered:
            if sequence not in seen and sequence < highest:
                result.add(sequence)
            seen.add(sequence)
            highest = max(highest, sequence)
        return result

    def summary(self) -> dict[str, int]:
        """Counts of each kind of fault, as JSON-ready values."""
        return {
            "sent": self.sent,
            "dropped": len(self.dropped),
            "corrupted": len(self.damaged),
            "bit_errors": self.bit_errors,
            "truncated": len(self.truncated),
            "duplicated": len(self.duplicated),
            "reordered": len(self.reordered),
        }


@dataclass(frozen=True)
class _Message(Packet):
    """A link message passing through the injector, numbered by its position in the input."""


@dataclass(order=True)
class _Scheduled:
    due: float
    order: int
    packet: Packet = field(compare=False)
    hold: bool = field(compare=False, default=False)


class FaultModel:
    """The injector's decisions without the pipeline plumbing: push packets, pop due deliveries."""

    def __init__(self, config: FaultConfig):
        self.config = config
        self.record = FaultRecord()
        streams = np.random.SeedSequence(config.seed).spawn(7)
        rngs = [np.random.default_rng(s) for s in streams]
        self._rng_loss, self._rng_burst, self._rng_ber, self._rng_truncate = rngs[:4]
        self._rng_duplicate, self._rng_reorder, self._rng_jitter = rngs[4:]
        self._bad_state = False
        self._heap: list[_Scheduled] = []
        self._held: list[list[Any]] = []  # [packets still to pass, Packet]
        self._order = 0

    def push(self, packet: Packet | bytes, now: float) -> None:
        """Decide the fate of `packet`, sent at time `now` (s), and schedule its copies.

        A `bytes` item (a link message) is recorded under its index in the input and comes out
        as `bytes` again.
        """
        config = self.config
        if isinstance(packet, (bytes, bytearray)):
            packet = _Message(self.record.sent, bytes(packet))
        self.record.sent += 1

        # Every generator draws for every packet, whatever the rates, so that the choices of one
        # kind of fault do not depend on the settings of another.
        u_loss = self._rng_loss.random()
        u_burst_move, u_burst_loss = self._rng_burst.random(2)
        u_duplicate = self._rng_duplicate.random()
        u_reorder = self._rng_reorder.random()
        extra_ms = self._rng_jitter.random() * config.jitter_ms
        u_truncate, u_cut = self._rng_truncate.random(2)

        lost = u_loss < config.loss
        if config.burst is not None:
            burst = config.burst
            if self._bad_state:
                self._bad_state = not (u_burst_move < burst.p_exit)
            else:
                self._bad_state = u_burst_move < burst.p_enter
            lost = lost or u_burst_loss < (burst.loss_bad if self._bad_state else burst.loss_good)

        # Damage is drawn for dropped packets too, for the same reason.
        data = packet.data
        truncated = u_truncate < config.truncate and bool(data)
        if truncated:
            data = data[: int(u_cut * len(data))]
        data, bit_errors = self._flip_bits(data)

        if lost:
            self.record.dropped.append(packet.sequence)
            return
        if truncated:
            self.record.truncated.append(packet.sequence)
        if bit_errors:
            self.record.corrupted.append(packet.sequence)
            self.record.bit_errors += bit_errors
        damaged = type(packet)(packet.sequence, data) if data is not packet.data else packet

        due = now + (config.delay_ms + extra_ms) / 1000.0
        hold = u_reorder < config.reorder
        if hold:
            self.record.held_back.append(packet.sequence)
        self._schedule(due, damaged, hold)
        if u_duplicate < config.duplicate:
            self.record.duplicated.append(packet.sequence)
            self._schedule(due, damaged, False)

    def _flip_bits(self, data: bytes) -> tuple[bytes, int]:
        """Flip each bit of `data` with probability `ber`; return the data and the number flipped."""
        bits = 8 * len(data)
        count = int(self._rng_ber.binomial(bits, self.config.ber)) if bits and self.config.ber > 0 else 0
        if count == 0:
            return data, 0

        positions = self._rng_ber.choice(bits, size=count, replace=False)
        flipped = bytearray(data)
        for position in positions.tolist():
            flipped[position >> 3] ^= 1 << (position & 7)
        return bytes(flipped), count

    def _schedule(self, due: float, packet: Packet, hold: bool) -> None:
        heapq.heappush(self._heap, _Scheduled(due, self._order, packet, hold))
        self._order += 1

    @property
    def next_due(self) -> float | None:
        """When the next scheduled packet is due (s), or None when none is."""
        return self._heap[0].due if self._heap else None

    def pop_due(self, now: float) -> list[tuple[Packet, float]]:
        """Return the packets due by `now` (s) with their arrival times, in delivery order."""
        out: list[tuple[Packet, float]] = []
        while self._heap and self._heap[0].due <= now:
            self._release(heapq.heappop(self._heap), out)
        return out

    def flush(self) -> list[tuple[Packet, float]]:
        """Return every packet still scheduled or held, in delivery order (end of input)."""
        out: list[tuple[Packet, float]] = []
        while self._heap:
            self._release(heapq.heappop(self._heap), out)
        # Held packets go out with the last delivery, since no later packet passes them.
        last = 0.0
        if out:
            last = out[-1][1]
        elif self.record.delivered:
            last = self.record.delivered[-1][1]
        for _, packet in self._held:
            self._deliver(packet, last, out)
        self._held.clear()
        return out

    def _release(self, item: _Scheduled, out: list[tuple[Packet, float]]) -> None:
        if item.hold:
            self._held.append([self.config.reorder_depth, item.packet])
            return

        self._deliver(item.packet, item.due, out)

        # A held packet goes out right after the `reorder_depth`-th packet that passed it.
        still_held = []
        for entry in self._held:
            entry[0] -= 1
            if entry[0] <= 0:
                self._deliver(entry[1], item.due, out)
            else:
                still_held.append(entry)
        self._held = still_held

    def _deliver(self, packet: Packet, arrival: float, out: list[tuple[Packet | bytes, float]]) -> None:
        self.record.delivered.append((packet.sequence, arrival))
        out.append((packet.data if isinstance(packet, _Message) else packet, arrival))


class FaultInjector:
    """A pipeline stage that injects the faults of `config` into `Packet` records or link messages.

    interval_ms: with a value, run on a virtual clock and emit `Arrival(packet, arrival_s)`
    records without sleeping. A packet is sent at its own time when it comes as an `Arrival`,
    else packet i at i * interval_ms. With None, delay packets on the real clock and emit them
    as they came in (`Packet` records or link messages).
    """

    def __init__(self, config: FaultConfig, interval_ms: float | None = None):
        self.config = config
        self.interval_ms = interval_ms
        self.model = FaultModel(config)

    @property
    def record(self) -> FaultRecord:
        """What the injector did so far."""
        return self.model.record

    async def run(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        """Read packets from `receive` until it ends, send the faulted packets to `send`."""
        async with receive, send:
            if self.interval_ms is not None:
                await self._run_virtual(receive, send)
            else:
                await self._run_real_time(receive, send)

    async def _run_virtual(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        index = 0
        async for item in receive:
            # An item stamped upstream is sent at its stamp; others at their place in the input.
            if isinstance(item, Arrival):
                now, packet = item.time_s, item.item
            else:
                now, packet = index * self.interval_ms / 1000.0, item
            self.model.push(packet, now)
            index += 1
            for delivered, arrival in self.model.pop_due(now):
                await send.send(Arrival(delivered, arrival))
        for delivered, arrival in self.model.flush():
            await send.send(Arrival(delivered, arrival))

    async def _run_real_time(self, receive: MemoryObjectReceiveStream, send: MemoryObjectSendStream) -> None:
        input_open = True
        while input_open:
            due = self.model.next_due
            timeout = math.inf if due is None else max(0.0, due - anyio.current_time())
            with anyio.move_on_after(timeout):
                try:
                    packet = await receive.receive()
                except anyio.EndOfStream:
                    input_open = False
                else:
                    self.model.push(packet, anyio.current_time())
            for delivered, _ in self.model.pop_due(anyio.current_time()):
                await send.send(delivered)

        while self.model.next_due is not None:
            await anyio.sleep(max(0.0, self.model.next_due - anyio.current_time()))
            for delivered, _ in self.model.pop_due(anyio.current_time()):
                await send.send(delivered)
        for delivered, _ in self.model.flush():
            await send.send(delivered)


# ----------------------------------------------------------------------------------------------
# Command-line options


def _burst(text: str) -> BurstLoss:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not 2 <= len(values) <= 4:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not P_ENTER,P_EXIT[,LOSS_BAD[,LOSS_GOOD]], for example 0.05,0.3"
        )
    return BurstLoss(*values)


def _reorder(text: str) -> tuple[float, int]:
    probability, _, depth = text.partition(":")
    try:
        return float(probability), int(depth) if depth else 2
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not P[:DEPTH], for example 0.05:2") from None


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fault options (`--loss`, `--burst`, `--ber`, ...) to a command's parser."""
    group = parser.add_argument_group("fault injection")
    group.add_argument("--loss", type=float, default=0.0, metavar="P", help="probability of dropping each chunk")
    group.add_argument(
        "--burst",
        type=_burst,
        default=None,
        metavar="P_ENTER,P_EXIT[,LOSS_BAD[,LOSS_GOOD]]",
        help="Gilbert-Elliott burst loss: per-chunk probabilities of entering and leaving the bad state, "
        "and the loss probability in the bad (default 1) and good (default 0) state",
    )
    group.add_argument("--ber", type=float, default=0.0, metavar="B", help="bit-error rate: probability of flipping each bit")
    group.add_argument("--truncate", type=float, default=0.0, metavar="P", help="probability of cutting a chunk short")
    group.add_argument("--duplicate", type=float, default=0.0, metavar="P", help="probability of delivering a chunk twice")
    group.add_argument(
        "--reorder",
        type=_reorder,
        default=(0.0, 2),
        metavar="P[:DEPTH]",
        help="probability of holding a chunk back until DEPTH (default 2) later chunks went out",
    )
    group.add_argument("--delay", type=float, default=0.0, metavar="MS", help="fixed delay of every chunk, in ms")
    group.add_argument("--jitter", type=float, default=0.0, metavar="MS", help="extra random delay of 0 to MS ms per chunk")
    group.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the fault choices (same seed, same faults)")


def fault_config_from_args(args: argparse.Namespace) -> FaultConfig:
    """Build the `FaultConfig` from the options that `add_fault_arguments` added."""
    reorder, depth = args.reorder
    return FaultConfig(
        loss=args.loss,
        burst=args.burst,
        ber=args.ber,
        truncate=args.truncate,
        duplicate=args.duplicate,
        reorder=reorder,
        reorder_depth=depth,
        delay_ms=args.delay,
        jitter_ms=args.jitter,
        seed=args.seed,
    )
