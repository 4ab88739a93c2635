"""Fault injection: seeded, each kind of fault behaves as documented, and the record is exact."""

from __future__ import annotations

import argparse
import struct
import zlib

import anyio
import numpy as np
import pytest

from ecdc_stream.errors import InvalidArgumentError
from ecdc_stream.faults import (
    BurstLoss,
    FaultConfig,
    FaultInjector,
    FaultModel,
    add_fault_arguments,
    fault_config_from_args,
)
from ecdc_stream.io.transport import Arrival
from ecdc_stream.pipeline.core import run_stages
from ecdc_stream.pipeline.records import Packet


def framed(sequence: int, size: int = 200) -> Packet:
    payload = np.random.default_rng(sequence).bytes(size)
    return Packet(sequence, struct.pack("!II", len(payload), zlib.crc32(payload)) + payload)


def run_model(config: FaultConfig, count: int = 400, interval: float = 1.0):
    model = FaultModel(config)
    out = []
    for sequence in range(count):
        model.push(framed(sequence), sequence * interval)
        out += model.pop_due(sequence * interval)
    out += model.flush()
    return model.record, out


def test_same_seed_same_faults():
    config = FaultConfig(loss=0.1, ber=1e-3, truncate=0.05, duplicate=0.05, reorder=0.05, jitter_ms=300, seed=7)
    record_a, out_a = run_model(config)
    record_b, out_b = run_model(config)
    assert record_a == record_b
    assert [(p.sequence, p.data, t) for p, t in out_a] == [(p.sequence, p.data, t) for p, t in out_b]


def test_other_seed_other_faults():
    record_a, _ = run_model(FaultConfig(loss=0.1, ber=1e-3, seed=1))
    record_b, _ = run_model(FaultConfig(loss=0.1, ber=1e-3, seed=2))
    assert record_a.dropped != record_b.dropped
    assert record_a.corrupted != record_b.corrupted


def test_independent_loss_rate():
    record, out = run_model(FaultConfig(loss=0.1, seed=3), count=5000)
    assert 400 <= len(record.dropped) <= 600
    delivered = {p.sequence for p, _ in out}
    assert delivered.isdisjoint(record.dropped)
    assert len(delivered) + len(record.dropped) == 5000


def test_loss_choices_nest_across_rates():
    # The loss draws do not depend on the rate, so a higher rate drops a superset.
    low, _ = run_model(FaultConfig(loss=0.05, ber=1e-3, seed=4))
    high, _ = run_model(FaultConfig(loss=0.2, ber=1e-3, seed=4))
    assert set(low.dropped) <= set(high.dropped)


def test_bit_errors_do_not_depend_on_loss_rate():
    clean, _ = run_model(FaultConfig(ber=1e-3, seed=5))
    lossy, _ = run_model(FaultConfig(ber=1e-3, loss=0.3, seed=5))
    # Only packets that were not dropped can be corrupted, and the same ones are.
    assert set(lossy.corrupted) == set(clean.corrupted) - set(lossy.dropped)


def test_burst_loss_is_bursty():
    burst = BurstLoss(p_enter=0.02, p_exit=0.25)
    record, _ = run_model(FaultConfig(burst=burst, seed=6), count=20000)
    dropped = np.zeros(20000, dtype=bool)
    dropped[record.dropped] = True
    starts = np.flatnonzero(dropped[1:] & ~dropped[:-1]).size + int(dropped[0])
    mean_burst = dropped.sum() / starts
    # The mean stay in the bad state is 1 / p_exit = 4 packets; independent loss at the same
    # rate would give bursts of about 1.1.
    assert 3.0 <= mean_burst <= 5.0
    stationary = burst.p_enter / (burst.p_enter + burst.p_exit)
    assert abs(dropped.mean() - stationary) < 0.02


def test_bit_error_rate_and_record():
    record, out = run_model(FaultConfig(ber=1e-3, seed=8), count=2000)
    bits = 2000 * 208 * 8
    assert abs(record.bit_errors - bits * 1e-3) < 5 * np.sqrt(bits * 1e-3)

    flipped = 0
    for packet, _ in out:
        original = framed(packet.sequence).data
        distance = sum(bin(a ^ b).count("1") for a, b in zip(original, packet.data))
        flipped += distance
        assert (distance > 0) == (packet.sequence in record.corrupted)
    assert flipped == record.bit_errors


def test_truncation_cuts_short():
    record, out = run_model(FaultConfig(truncate=0.2, seed=9))
    assert 40 <= len(record.truncated) <= 120
    for packet, _ in out:
        original = framed(packet.sequence).data
        if packet.sequence in record.truncated:
            assert len(packet.data) < len(original)
            assert original.startswith(packet.data)
        else:
            assert packet.data == original


def test_duplication_delivers_copies():
    record, out = run_model(FaultConfig(duplicate=0.1, seed=10))
    sequences = [p.sequence for p, _ in out]
    assert len(sequences) == 400 + len(record.duplicated)
    for sequence in set(record.duplicated):
        assert sequences.count(sequence) == 1 + record.duplicated.count(sequence)


def test_reorder_holds_back_by_depth():
    record, out = run_model(FaultConfig(reorder=0.05, reorder_depth=3, seed=11))
    order = [p.sequence for p, _ in out]
    assert sorted(order) == list(range(400))
    assert record.reordered == set(record.held_back)
    for sequence in record.held_back:
        position = order.index(sequence)
        passed = [s for s in order[:position] if s > sequence]
        assert len(passed) >= 3


def test_delay_and_jitter_on_virtual_clock():
    record, out = run_model(FaultConfig(delay_ms=40, jitter_ms=30, seed=12), interval=0.02)
    arrivals = {p.sequence: t for p, t in out}
    delays = np.array([arrivals[s] - s * 0.02 for s in range(400)])
    assert delays.min() >= 0.040 - 1e-9
    assert delays.max() <= 0.070 + 1e-9
    assert delays.std() > 0.005
    # Jitter larger than the packet interval reorders, and arrivals come out in time order.
    times = [t for _, t in out]
    assert times == sorted(times)
    assert record.reordered


@pytest.mark.parametrize(
    "kwargs",
    [{"loss": 1.5}, {"ber": -0.1}, {"duplicate": float("nan")}, {"reorder_depth": 0}, {"jitter_ms": -1},
     {"burst": BurstLoss(0.1, 2.0)}],
)
def test_invalid_config_raises(kwargs):
    with pytest.raises(InvalidArgumentError):
        FaultConfig(**kwargs)


def test_command_line_options():
    parser = argparse.ArgumentParser()
    add_fault_arguments(parser)
    args = parser.parse_args(
        ["--loss", "0.1", "--burst", "0.05,0.3", "--ber", "1e-4", "--reorder", "0.02:3", "--jitter", "20", "--seed", "5"]
    )
    config = fault_config_from_args(args)
    assert config.loss == 0.1
    assert config.burst == BurstLoss(0.05, 0.3)
    assert config.ber == 1e-4
    assert (config.reorder, config.reorder_depth) == (0.02, 3)
    assert config.jitter_ms == 20
    assert config.seed == 5
    with pytest.raises(SystemExit):
        parser.parse_args(["--burst", "0.1"])


async def stage_output(injector: FaultInjector, packets: list[Packet]) -> list:
    out = []

    async def source(receive, send):
        async with receive, send:
            for packet in packets:
                await send.send(packet)

    async def sink(receive, send):
        async with receive, send:
            async for item in receive:
                out.append(item)

    await run_stages(source, injector, sink)
    return out


async def test_stage_virtual_clock_stamps_arrivals():
    injector = FaultInjector(FaultConfig(loss=0.2, jitter_ms=500, seed=13), interval_ms=250)
    out = await stage_output(injector, [framed(i) for i in range(50)])
    assert all(isinstance(item, Arrival) for item in out)
    assert [(a.item.sequence, a.time_s) for a in out] == injector.record.delivered
    assert len(out) == 50 - len(injector.record.dropped)


async def test_stage_real_clock_delays():
    injector = FaultInjector(FaultConfig(delay_ms=80, seed=14))
    start = anyio.current_time()
    out = await stage_output(injector, [framed(i) for i in range(5)])
    assert anyio.current_time() - start >= 0.08
    assert [p.sequence for p in out] == [0, 1, 2, 3, 4]
    assert all(isinstance(p, Packet) for p in out)


async def test_stage_real_clock_reorders():
    injector = FaultInjector(FaultConfig(reorder=0.3, duplicate=0.1, loss=0.1, seed=15))
    out = await stage_output(injector, [framed(i) for i in range(60)])
    assert [p.sequence for p in out] == [s for s, _ in injector.record.delivered]
    assert injector.record.reordered
