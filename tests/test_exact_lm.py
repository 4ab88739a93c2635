"""The exact LM: identical CDFs however and wherever they are computed, close to the float LM."""

from __future__ import annotations

import hashlib
import math
import sys

import numpy as np
import pytest
import torch
from exact_support import blocked_matmul, float_logits, hashed_codes, reversed_matmul, synthetic_lm_state

from ecdc_stream.container.acv4 import ChunkCoder, StreamParams
from ecdc_stream.entropy import cdf, exact_lm, tables
from ecdc_stream.entropy.exact_lm import ExactLM
from ecdc_stream.errors import ModelNotFoundError
from ecdc_stream.pipeline.records import CodeChunk

COUNT_PRECISION = 24
MIN_RANGE = 2


@pytest.fixture(scope="module")
def golden_lm(golden_dir):
    """The golden tiny 24 kHz LM (dim 16, 2 layers, 16 codes, 4 codebooks) and its codes [1, 4, 150]."""
    state = torch.load(golden_dir / "tiny_24khz" / "lm.pt", weights_only=True)
    frames = torch.load(golden_dir / "tiny_24khz" / "frames.pt", weights_only=True)
    return state, frames[0][0]


@pytest.fixture(scope="module")
def real_size_state():
    """A synthetic LM of the published size: dim 200, 5 layers, 1024 codes, 8 codebooks."""
    return synthetic_lm_state(output_gain=4.0)


@pytest.fixture(scope="module")
def real_size_lm(real_size_state):
    return ExactLM(real_size_state, num_codebooks=8, past_context=262)


def counts_digest(counts: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(counts.cpu().numpy(), dtype="<i8").tobytes()).hexdigest()


def stepwise_logits(lm: ExactLM, codes: torch.Tensor) -> torch.Tensor:
    """Logits `[B, T, K, card]` computed one frame at a time with the key/value cache."""
    state = lm.start(codes.shape[0], codes.shape[-1])
    previous = None
    steps = []
    for frame in range(codes.shape[-1]):
        steps.append(lm.step(state, previous))
        previous = codes[:, :, frame]
    return torch.stack(steps, dim=1)


def real_size_params(frames: int = 75) -> StreamParams:
    return StreamParams(
        model="encodec_24khz",
        sample_rate=24000,
        channels=1,
        num_codebooks=8,
        bandwidth=6.0,
        chunk_frames=frames,
        chunk_samples=frames * 320,
        frame_rate=75,
    )


def test_tables_match_pinned_digests():
    expected = {
        "exp 8/30": "b2986656289d675ad8c6c1d5a409b1d9bc9004bd48a1e0e411803c096835036b",
        "exp 8/20": "cc86375794217bd8f7837b52daeb84bad38bb39f847d0ec2804e44caf045ce90",
        "normal cdf": "94f73a698b64c93033e23ee6bd1d041777fba522713f327a3a2f5d12e48e2a1d",
        "sinusoid 200": "78cc32c1cd20504e3305977b357c9ee052723b3d7073179e7baaf10a5f36da46",
        "sinusoid 16": "35522bae2fd6c5b2f0436b644a034c3ba65ae9fe36cff2cbb9bb79a2ab61b87b",
    }
    digests = {
        "exp 8/30": tables.table_sha256(tables.exp_table(8, 30)),
        "exp 8/20": tables.table_sha256(tables.exp_table(8, 20)),
        "normal cdf": tables.table_sha256(tables.normal_cdf_table()),
        "sinusoid 200": tables.table_sha256(tables.sinusoid_table(200, 300, 12)),
        "sinusoid 16": tables.table_sha256(tables.sinusoid_table(16, 300, 12)),
    }
    for name, digest in digests.items():
        assert digest == expected[name], name


def test_tables_approximate_the_functions():
    exp30 = tables.exp_table(8, 30)
    u = np.arange(len(exp30))
    assert exp30[0] == 1 << 30
    assert exp30[-1] == 0
    assert np.abs(exp30 / 2.0**30 - np.exp(-u / 256)).max() <= 2.0**-31

    phi = tables.normal_cdf_table()
    x = np.arange(len(phi)) / 64 - 8
    reference = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert np.abs(phi / 2.0**30 - reference).max() <= 2.0**-30

    sinusoid = tables.sinusoid_table(200, 300, 12)
    positions = np.arange(300)[:, None]
    phase = positions / 10000 ** (np.arange(100)[None] / 99)
    reference = np.concatenate([np.cos(phase), np.sin(phase)], axis=1)
    assert np.abs(sinusoid / 4096 - reference).max() <= 1 / 4096


def test_sinusoid_table_extends_consistently():
    short = tables.sinusoid_table(24, 10, 12)
    long = tables.sinusoid_table(24, 400, 12)
    assert np.array_equal(long[:10], short)


def test_integer_sqrt_is_exact():
    values = [0, 1, 2, 3, 4, 15, 16, 17, 2**52 - 1, 2**52, 2**52 + 1, 2**61 - 1, 2**62 - 1]
    values += [n * n for n in (2**26 - 1, 2**30 + 7, 2**31 - 1)]
    values += [n * n - 1 for n in (2**26 + 3, 2**30 + 7, 2**31 - 1)]
    roots = exact_lm._isqrt(torch.tensor(values, dtype=torch.int64)).tolist()
    for value, root in zip(values, roots):
        assert root == math.isqrt(value), value


def test_golden_lm_close_to_reference_probabilities(golden_lm, golden_dir):
    state, codes = golden_lm
    reference = torch.load(golden_dir / "tiny_24khz" / "lm_probs_segment0.pt", weights_only=True)
    frames = reference.shape[-1]
    lm = ExactLM(state, num_codebooks=4, past_context=262)

    logits = lm.logits(codes[:, :, :frames]).to(torch.float64) / 2**cdf.LOGIT_FRAC_BITS
    probabilities = torch.softmax(logits, dim=-1)[0]
    expected = reference[0].permute(2, 1, 0).to(torch.float64)

    assert (probabilities - expected).abs().max() < 5e-3
    divergence = (expected * (torch.log(expected) - torch.log(probabilities))).sum(-1)
    assert divergence.mean() < 1e-4


def test_real_size_lm_close_to_float_lm(real_size_state, real_size_lm):
    codes = torch.from_numpy(hashed_codes(8, 75, 1024, salt=3)).unsqueeze(0)
    with torch.no_grad():
        reference = torch.log_softmax(float_logits(real_size_state, codes, 262).to(torch.float64), dim=-1)
    logits = real_size_lm.logits(codes).to(torch.float64) / 2**cdf.LOGIT_FRAC_BITS
    log_probabilities = torch.log_softmax(logits, dim=-1)

    divergence = (reference.exp() * (reference - log_probabilities)).sum(-1)
    assert divergence.mean() < 1e-4
    assert (log_probabilities - reference).abs().max() < 0.05


def test_teacher_forced_equals_stepwise_golden(golden_lm):
    state, codes = golden_lm
    lm = ExactLM(state, num_codebooks=4, past_context=262)
    teacher_forced = lm.logits(codes)
    stepwise = stepwise_logits(lm, codes)
    assert torch.equal(teacher_forced, stepwise)
    assert torch.equal(
        cdf.counts_from_logits(teacher_forced, COUNT_PRECISION, MIN_RANGE),
        cdf.counts_from_logits(stepwise, COUNT_PRECISION, MIN_RANGE),
    )


def test_teacher_forced_equals_stepwise_past_window(golden_lm):
    # 300 frames with a 20-frame window: the zero frame leaves the window, the window slides,
    # and the teacher-forced pass crosses a query block boundary (256 frames).
    state, _ = golden_lm
    lm = ExactLM(state, num_codebooks=4, past_context=20)
    codes = torch.from_numpy(hashed_codes(4, 300, 16, salt=5)).unsqueeze(0)
    assert torch.equal(lm.logits(codes), stepwise_logits(lm, codes))


def test_teacher_forced_equals_stepwise_real_size(real_size_lm):
    codes = torch.from_numpy(hashed_codes(8, 40, 1024, salt=7)).unsqueeze(0)
    teacher_forced = real_size_lm.logits(codes)
    stepwise = stepwise_logits(real_size_lm, codes)
    assert torch.equal(teacher_forced, stepwise)


def test_torch_steps_equal_numpy_steps(real_size_state, monkeypatch):
    # On the CPU the LM steps in numpy; on a GPU it steps in torch. Forcing the torch network on
    # the CPU runs the GPU's code path here, cache growth included (capacity 8 for 40 frames).
    codes = torch.from_numpy(hashed_codes(8, 40, 1024, salt=9)).unsqueeze(0)
    numpy_lm = ExactLM(real_size_state, num_codebooks=8, past_context=30)
    torch_lm = ExactLM(real_size_state, num_codebooks=8, past_context=30)
    monkeypatch.setattr(torch_lm, "_step_network", torch_lm.network)

    def steps(lm: ExactLM) -> list[torch.Tensor]:
        state = lm.start(1, max_frames=7)
        logits, previous = [], None
        for frame in range(codes.shape[-1]):
            logits.append(lm.step(state, previous))
            previous = codes[:, :, frame]
        return logits

    numpy_steps, torch_steps = steps(numpy_lm), steps(torch_lm)
    assert isinstance(numpy_lm.start(1).keys[0], np.ndarray)
    assert isinstance(torch_lm.start(1).keys[0], torch.Tensor)
    for frame, (expected, actual) in enumerate(zip(numpy_steps, torch_steps)):
        assert torch.equal(expected, actual), frame
    assert torch.equal(torch.stack(numpy_steps, dim=1), numpy_lm.logits(codes))


def blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [library["num_threads"] for library in threadpool_info() if library["user_api"] == "blas"]


def test_concurrent_steps_restore_blas_threads(real_size_lm):
    # Steps run numpy's BLAS on one thread. With several threads stepping at once, the setting
    # must come back to what it was when the last one is done, and every thread's logits stay right.
    # NOTE: this run did not reproduce the race of a per-step save and restore, which left the
    # setting at one thread after two concurrent decodes of the published-size 24 kHz stream.
    import threading

    from threadpoolctl import threadpool_limits

    lm = real_size_lm
    codes = torch.from_numpy(hashed_codes(8, 20, 1024, salt=11)).unsqueeze(0)
    expected = lm.logits(codes)
    switch_interval = sys.getswitchinterval()
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        results: list[torch.Tensor] = []
        threads = [threading.Thread(target=lambda: results.append(stepwise_logits(lm, codes))) for _ in range(4)]
        # Switching threads every microsecond makes their steps overlap in every order.
        sys.setswitchinterval(1e-6)
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            sys.setswitchinterval(switch_interval)
        assert blas_threads() == before
    assert len(results) == 4
    for logits in results:
        assert torch.equal(logits, expected)


def test_batch_equals_single(golden_lm):
    state, _ = golden_lm
    lm = ExactLM(state, num_codebooks=4, past_context=262)
    codes = torch.stack([torch.from_numpy(hashed_codes(4, 60, 16, salt=s)) for s in range(5)])
    batched = lm.logits(codes)
    batched_steps = stepwise_logits(lm, codes)
    for index in range(codes.shape[0]):
        single = lm.logits(codes[index : index + 1])
        assert torch.equal(batched[index : index + 1], single), index
        assert torch.equal(batched_steps[index : index + 1], single), index


def encode_and_decode(coder: ChunkCoder, chunks: list[CodeChunk]) -> tuple[list[bytes], list[np.ndarray]]:
    framed = [coder.encode(chunk) for chunk in chunks]
    decoded = coder.decode_batch(framed)
    return framed, [chunk.codes for chunk in decoded]


@pytest.fixture(scope="module")
def real_size_chunks():
    # Two short chunks (30 frames each) keep the blocked product, a Python loop, fast enough.
    return [CodeChunk(sequence, hashed_codes(8, 30, 1024, salt=20 + sequence), 30 * 320) for sequence in range(2)]


@pytest.fixture(scope="module")
def real_size_coded(real_size_state, real_size_chunks):
    coder = ChunkCoder(real_size_params(), real_size_state)
    framed, decoded = encode_and_decode(coder, real_size_chunks)
    for chunk, codes in zip(real_size_chunks, decoded):
        assert np.array_equal(chunk.codes, codes)
    return framed, decoded


@pytest.mark.parametrize("matmul", [reversed_matmul, blocked_matmul], ids=["reversed", "blocked"])
def test_matmul_order_gives_same_bytes(monkeypatch, matmul, real_size_state, real_size_chunks, real_size_coded):
    monkeypatch.setattr(exact_lm, "integer_matmul", matmul)
    coder = ChunkCoder(real_size_params(), real_size_state)
    framed, decoded = encode_and_decode(coder, real_size_chunks)
    assert framed == real_size_coded[0]
    for codes, expected in zip(decoded, real_size_coded[1]):
        assert np.array_equal(codes, expected)


@pytest.mark.parametrize("matmul", [reversed_matmul, blocked_matmul], ids=["reversed", "blocked"])
def test_matmul_order_changes_float_lm(matmul, real_size_state):
    # The same check as above fails for a float LM: another summation order changes logits in
    # their last bits, and some CDFs built from them change too.
    codes = torch.from_numpy(hashed_codes(8, 75, 1024, salt=20)).unsqueeze(0)
    with torch.no_grad():
        plain = float_logits(real_size_state, codes, 262)
        swapped = float_logits(real_size_state, codes, 262, matmul=matmul)
    plain_counts = cdf.counts_from_logits(cdf.quantize_logits(plain), COUNT_PRECISION, MIN_RANGE)
    swapped_counts = cdf.counts_from_logits(cdf.quantize_logits(swapped), COUNT_PRECISION, MIN_RANGE)
    assert not torch.equal(plain, swapped)
    assert not torch.equal(plain_counts, swapped_counts)


def test_thread_counts_give_same_bytes(real_size_state, real_size_chunks, real_size_coded):
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            coder = ChunkCoder(real_size_params(), real_size_state)
            framed, decoded = encode_and_decode(coder, real_size_chunks)
            assert framed == real_size_coded[0], count
            for codes, expected in zip(decoded, real_size_coded[1]):
                assert np.array_equal(codes, expected), count
    finally:
        torch.set_num_threads(threads)


def test_pinned_cdf_digest_golden(golden_lm):
    state, codes = golden_lm
    lm = ExactLM(state, num_codebooks=4, past_context=262)
    counts = cdf.counts_from_logits(lm.logits(codes), COUNT_PRECISION, MIN_RANGE)
    assert counts_digest(counts) == "af2a00a7b90b8919851938da4efb5813cc521d2c66c040d606eaff8672211a71"


def test_pinned_chunk_bytes_golden(golden_lm):
    state, codes = golden_lm
    params = StreamParams(
        model="tiny_24khz",
        sample_rate=24000,
        channels=1,
        num_codebooks=4,
        bandwidth=1.2,
        chunk_frames=150,
        chunk_samples=48000,
        frame_rate=75,
    )
    data = ChunkCoder(params, state).encode(CodeChunk(0, codes[0].numpy(), 48000))
    assert len(data) == 829
    assert hashlib.sha256(data).hexdigest() == "97c904d582682787cd4c5fe136745330343ba55e8099db9490bfbf3a45235841"


def test_pinned_cdf_digest_real_size(real_size_lm):
    codes = torch.from_numpy(hashed_codes(8, 75, 1024, salt=11)).unsqueeze(0)
    counts = cdf.counts_from_logits(real_size_lm.logits(codes), COUNT_PRECISION, MIN_RANGE)
    assert counts_digest(counts) == "7a4d665861cd516deca064874efdd769fc9d6fb2b4964407df033f9f115ba4e3"


def test_pinned_fingerprint(golden_lm):
    state, _ = golden_lm
    fingerprint = ExactLM(state, num_codebooks=4, past_context=262).fingerprint()
    assert fingerprint == "6d75e51a2414058583b0d61c57fe13f833b3f25da63a233e6c21e3218f7e0100"


def test_temperature_flattens_distributions(golden_lm):
    state, codes = golden_lm
    cold = ExactLM(state, num_codebooks=4, past_context=262).logits(codes)
    warm = ExactLM(state, num_codebooks=4, past_context=262, temperature=2.0).logits(codes)
    spread_cold = (cold.amax(-1) - cold.amin(-1)).to(torch.float64)
    spread_warm = (warm.amax(-1) - warm.amin(-1)).to(torch.float64)
    assert torch.allclose(spread_warm, spread_cold / 2, atol=2)


def test_checkpoint_with_nan_is_rejected(golden_lm):
    state, _ = golden_lm
    broken = dict(state)
    broken["transformer.layers.1.linear2.weight"] = broken["transformer.layers.1.linear2.weight"].clone()
    broken["transformer.layers.1.linear2.weight"][0, 0] = float("nan")
    with pytest.raises(ModelNotFoundError, match="NaN"):
        ExactLM(broken, num_codebooks=4, past_context=262)


def test_checkpoint_missing_key_is_rejected(golden_lm):
    state, _ = golden_lm
    broken = {key: value for key, value in state.items() if key != "transformer.layers.0.norm2.bias"}
    with pytest.raises(ModelNotFoundError, match="norm2.bias"):
        ExactLM(broken, num_codebooks=4, past_context=262)


def test_checkpoint_wrong_shape_is_rejected(golden_lm):
    state, _ = golden_lm
    broken = dict(state)
    broken["linears.2.bias"] = torch.zeros(15)
    with pytest.raises(ModelNotFoundError, match="linears.2.bias"):
        ExactLM(broken, num_codebooks=4, past_context=262)


def test_huge_weights_are_rejected(golden_lm):
    state, _ = golden_lm
    broken = dict(state)
    broken["linears.0.weight"] = torch.full_like(state["linears.0.weight"], 1e9)
    with pytest.raises(ModelNotFoundError, match="too large"):
        ExactLM(broken, num_codebooks=4, past_context=262)


def test_too_many_codebooks_rejected(golden_lm):
    state, _ = golden_lm
    with pytest.raises(ValueError, match="5 codebooks"):
        ExactLM(state, num_codebooks=5, past_context=262)


def test_codes_out_of_range_rejected(golden_lm):
    state, _ = golden_lm
    lm = ExactLM(state, num_codebooks=4, past_context=262)
    with pytest.raises(ValueError, match="codes must be in"):
        lm.logits(torch.full((1, 4, 3), 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_same_bytes(real_size_state, real_size_chunks, real_size_coded):
    coder = ChunkCoder(real_size_params(), real_size_state, device="cuda")
    framed, decoded = encode_and_decode(coder, real_size_chunks)
    assert framed == real_size_coded[0]
    for codes, expected in zip(decoded, real_size_coded[1]):
        assert np.array_equal(codes, expected)
