"""The streaming encode and decode pipelines on files and pipes, with the tiny models."""

from __future__ import annotations

import functools
import io
import struct
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ecdc_stream import api
from ecdc_stream.container import acv4
from ecdc_stream.container.header import read_header
from ecdc_stream.errors import InvalidArgumentError, InvalidAudioError
from ecdc_stream.io.audio_files import WavWriter
from ecdc_stream.model import lm_state_dict, load_model
from ecdc_stream.model.streaming import StreamingEncoder
from ecdc_stream.pipeline.ecdc_stages import EcdcSink
from ecdc_stream.pipeline.files import audio_source, decode_file, decode_pipeline_for, encode_file, open_ecdc_input
from ecdc_stream.pipeline.records import Packet
from ecdc_stream.pipeline.standard import CollectSink, encode_pipeline, make_coder

CASES = {"tiny_24khz": 1.2, "tiny_48khz": 2.4}


@pytest.fixture(scope="module")
def models(tiny_models):
    return {name: load_model(name) for name in CASES}


def input_path(golden_dir: Path, case: str) -> Path:
    return golden_dir / case / "input.wav"


def read_chunks(path: Path, case: str) -> tuple[acv4.StreamParams, list]:
    with open(path, "rb") as fo:
        return acv4.read_acv4(fo, lm_state_dict(case))


def all_codes(chunks) -> np.ndarray:
    return np.concatenate([chunk.codes for chunk in chunks], axis=1)


@pytest.mark.parametrize("chunk_seconds", [0.25, 1.0])
def test_encode_file_gives_streaming_codes_24khz(models, golden_dir, tmp_path, chunk_seconds):
    model = models["tiny_24khz"]
    out = tmp_path / "out.ecdc"
    report = encode_file(input_path(golden_dir, "tiny_24khz"), out, model=model, bandwidth=1.2, chunk_seconds=chunk_seconds)

    audio, _ = sf.read(input_path(golden_dir, "tiny_24khz"), dtype="float32", always_2d=True)
    expected = StreamingEncoder(model, 4).encode_all(torch.from_numpy(audio.T.copy())).numpy()
    params, chunks = read_chunks(out, "tiny_24khz")

    assert report.samples == audio.shape[0] == params.total_samples
    assert np.array_equal(all_codes(chunks), expected)
    assert sum(chunk.num_samples for chunk in chunks) == audio.shape[0]
    assert report.chunks == len(chunks) == -(-audio.shape[0] // params.chunk_samples)


def test_encode_file_gives_offline_segments_48khz(models, golden_dir, tmp_path):
    model = models["tiny_48khz"]
    out = tmp_path / "out.ecdc"
    encode_file(input_path(golden_dir, "tiny_48khz"), out, model=model, bandwidth=2.4)

    # The pipeline runs torch on one thread, and a segment's scale (an RMS, a float reduction)
    # depends on the thread count, so the reference runs on one thread too.
    audio, _ = sf.read(input_path(golden_dir, "tiny_48khz"), dtype="float32", always_2d=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        segments = model.encode(torch.from_numpy(audio.T.copy())[None], 2.4)
    finally:
        torch.set_num_threads(threads)
    params, chunks = read_chunks(out, "tiny_48khz")

    expected = np.concatenate([codes[0].numpy() for codes, _ in segments], axis=1)
    assert np.array_equal(all_codes(chunks), expected)
    scales = [scale for chunk in chunks for scale in chunk.scales]
    assert scales == [struct.unpack(">f", struct.pack(">f", float(scale)))[0] for _, scale in segments]


@pytest.mark.parametrize("case", list(CASES))
def test_decode_file_matches_offline_decode(models, golden_dir, tmp_path, case):
    stream = tmp_path / "in.ecdc"
    encode_file(input_path(golden_dir, case), stream, model=models[case], bandwidth=CASES[case])
    out = tmp_path / "out.wav"
    report = decode_file(stream, out, model=models[case], subtype="FLOAT")

    decoded, rate = sf.read(out, dtype="float32", always_2d=True)
    offline, offline_rate = api.decompress_from_file(stream)
    assert rate == offline_rate == models[case].sample_rate
    assert decoded.shape == tuple(offline.T.shape)
    assert report.samples == decoded.shape[0]
    assert report.gaps == 0
    np.testing.assert_allclose(decoded.T, offline.numpy(), atol=1e-4, rtol=0)


def test_bytes_after_last_chunk_are_reported(models, golden_dir, tmp_path, caplog):
    model = models["tiny_24khz"]
    stream = tmp_path / "in.ecdc"
    encode_file(input_path(golden_dir, "tiny_24khz"), stream, model=model, bandwidth=1.2, chunk_seconds=0.5)
    clean = tmp_path / "clean.wav"
    decode_file(stream, clean, model=model, subtype="FLOAT")

    # A second copy of the stream appended, as `cat a.ecdc b.ecdc` would make.
    appended = tmp_path / "appended.ecdc"
    appended.write_bytes(stream.read_bytes() * 2)
    out = tmp_path / "out.wav"
    with caplog.at_level("WARNING"):
        report = decode_file(appended, out, model=model, subtype="FLOAT")
    assert f"ignored {stream.stat().st_size} bytes after the stream's last chunk" in caplog.text
    assert report.gaps == 0
    assert np.array_equal(sf.read(out, dtype="float32")[0], sf.read(clean, dtype="float32")[0])

    # A seek that stops before the last chunk reads nothing after it, so it has nothing to report.
    caplog.clear()
    with caplog.at_level("WARNING"):
        decode_file(appended, out, model=model, end_seconds=0.5)
    assert "after the stream's last chunk" not in caplog.text


@pytest.mark.parametrize("case", list(CASES))
def test_seek_decodes_only_needed_chunks(models, golden_dir, tmp_path, case):
    model = models[case]
    stream = tmp_path / "in.ecdc"
    encode_file(input_path(golden_dir, case), stream, model=model, bandwidth=CASES[case], chunk_seconds=0.5)
    full = tmp_path / "full.wav"
    decode_file(stream, full, model=model, subtype="FLOAT")
    full_audio, rate = sf.read(full, dtype="float32", always_2d=True)

    start, end = 1.1, 1.9
    with ExitStack() as stack:
        fo, params = open_ecdc_input(stream, stack)
        sink = CollectSink()
        pipeline = decode_pipeline_for(fo, params, lambda r, c: sink, start_seconds=start, end_seconds=end, model=model)
        decoded_chunks = []
        pipeline.insert_after("entropy_decoder", "spy", _spy(decoded_chunks))
        pipeline.run_sync(handle_signals=False)

    audio = sink.audio().T
    first = int(round(start * rate))
    assert audio.shape[0] == int(round(end * rate)) - first
    # Only the chunks that hold [start, end) were read past their frame header and decoded.
    needed = list(range(first // params.chunk_samples, (int(round(end * rate)) - 1) // params.chunk_samples + 1))
    assert [chunk.sequence for chunk in decoded_chunks] == needed
    assert pipeline.get("source").chunks == len(needed)

    if case == "tiny_48khz":
        # Segments decode independently; after the first segment's overlap the audio is the same.
        overlap = model.segment_length - model.segment_stride
        np.testing.assert_allclose(audio[overlap:], full_audio[first + overlap : first + audio.shape[0]], atol=1e-5)


def _spy(seen: list):
    async def spy(receive, send):
        async with receive, send:
            async for item in receive:
                seen.append(item)
                await send.send(item)

    return spy


def test_raw_pcm_through_standard_input_and_output(models, golden_dir, tmp_path):
    audio, _ = sf.read(input_path(golden_dir, "tiny_24khz"), dtype="int16")
    raw_in = io.BytesIO(audio.astype("<i2").tobytes())
    stream = io.BytesIO()
    report = encode_file("-", "-", model=models["tiny_24khz"], bandwidth=1.2, input_format="s16le", rate=24000, channels=1,
                         stdin=raw_in, stdout=stream)
    assert report.samples == audio.shape[0]

    stream.seek(0)
    raw_out = io.BytesIO()
    decode_report = decode_file("-", "-", output_format="s16le", model=models["tiny_24khz"], stdin=stream, stdout=raw_out)
    assert decode_report.samples == audio.shape[0]
    assert len(raw_out.getvalue()) == 2 * audio.shape[0]


def test_wav_through_standard_input_resampled(models, golden_dir, tmp_path):
    # A 16 kHz stereo WAV on standard input is converted to the model's 24 kHz mono.
    audio, _ = sf.read(input_path(golden_dir, "tiny_24khz"), dtype="float32")
    wav = io.BytesIO()
    sf.write(wav, np.stack([audio[:32000], audio[:32000]], axis=1), 16000, format="WAV", subtype="PCM_16")
    wav.seek(0)
    stream = io.BytesIO()
    report = encode_file("-", "-", model=models["tiny_24khz"], bandwidth=1.2, input_format="wav", stdin=wav, stdout=stream)
    assert abs(report.samples - 48000) <= 2

    stream.seek(0)
    wav_out = io.BytesIO()
    decode_file("-", "-", output_format="wav", model=models["tiny_24khz"], stdin=stream, stdout=wav_out)
    assert wav_out.getvalue()[:4] == b"RIFF"
    assert len(wav_out.getvalue()) - 44 == 2 * report.samples


def test_tags_and_length_in_header(models, golden_dir, tmp_path):
    stream = tmp_path / "tagged.ecdc"
    encode_file(input_path(golden_dir, "tiny_24khz"), stream, model=models["tiny_24khz"], bandwidth=1.2,
                tags={"title": "Test tone", "artist": "ecdc", "comment": "é ü"})
    with open(stream, "rb") as fo:
        metadata = read_header(fo)
    assert metadata["tags"] == {"title": "Test tone", "artist": "ecdc", "comment": "é ü"}
    assert metadata["total_samples"] == 48000


class _Pipe(io.RawIOBase):
    """A write-only, non-seekable byte sink, like a pipe."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        self.data += data
        return len(data)


def test_unknown_length_stream_decodes(models, golden_dir, tmp_path):
    pipe = _Pipe()
    encode_file(input_path(golden_dir, "tiny_24khz"), "-", model=models["tiny_24khz"], bandwidth=1.2,
                chunk_seconds=0.5, stdout=pipe)
    stream = io.BytesIO(bytes(pipe.data))
    assert read_header(stream)["total_samples"] is None

    stream.seek(0)
    out = tmp_path / "out.wav"
    report = decode_file("-", out, model=models["tiny_24khz"], stdin=stream)
    assert report.samples == 48000
    assert sf.info(out).frames == 48000


@pytest.mark.parametrize("case", list(CASES))
def test_corrupt_chunk_becomes_silence_of_its_length(models, golden_dir, tmp_path, case):
    model = models[case]
    stream = tmp_path / "in.ecdc"
    encode_file(input_path(golden_dir, case), stream, model=model, bandwidth=CASES[case], chunk_seconds=0.5)
    clean = tmp_path / "clean.wav"
    decode_file(stream, clean, model=model, subtype="FLOAT")

    data = bytearray(stream.read_bytes())
    with open(stream, "rb") as fo:
        read_header(fo)
        first_chunk = fo.tell()
    first_length = struct.unpack(">I", data[first_chunk : first_chunk + 4])[0]
    second_chunk = first_chunk + 8 + first_length
    data[second_chunk + 20] ^= 0x55  # inside chunk 1's payload: its CRC fails
    damaged = tmp_path / "damaged.ecdc"
    damaged.write_bytes(bytes(data))

    out = tmp_path / "out.wav"
    report = decode_file(damaged, out, model=model, subtype="FLOAT")
    audio, rate = sf.read(out, dtype="float32", always_2d=True)
    clean_audio, _ = sf.read(clean, dtype="float32", always_2d=True)

    with open(stream, "rb") as fo:
        chunk_samples = read_header(fo)["chunk_samples"]
    assert audio.shape == clean_audio.shape
    assert report.gaps == 1
    fade = int(0.005 * rate)
    silent = audio[chunk_samples + fade + (model.segment_length - model.segment_stride if model.segment_length else 0) : 2 * chunk_samples]
    np.testing.assert_array_equal(silent, 0.0)
    assert np.abs(clean_audio[chunk_samples : 2 * chunk_samples]).max() > 0


def test_truncated_stream_decodes_to_last_whole_chunk(models, golden_dir, tmp_path):
    model = models["tiny_24khz"]
    pipe = _Pipe()
    encode_file(input_path(golden_dir, "tiny_24khz"), "-", model=model, bandwidth=1.2, chunk_seconds=0.25, stdout=pipe)
    data = bytes(pipe.data)
    stream = tmp_path / "cut.ecdc"
    stream.write_bytes(data[: len(data) - 5])

    out = tmp_path / "out.wav"
    report = decode_file(stream, out, model=model)
    chunk_samples = read_header(io.BytesIO(data))["chunk_samples"]
    chunks = -(-48000 // chunk_samples)
    # The last chunk is cut, the ones before it decode.
    assert report.samples == (chunks - 1) * chunk_samples


def test_custom_stage_drops_a_packet(models, golden_dir, tmp_path):
    model = models["tiny_24khz"]
    coder = make_coder(model, 1.2, 0.5)
    out = tmp_path / "lossy.ecdc"

    async def drop_chunk_one(receive, send):
        async with receive, send:
            async for packet in receive:
                assert isinstance(packet, Packet)
                if packet.sequence != 1:
                    await send.send(packet)

    with open(out, "wb") as fo:
        source = audio_source(input_path(golden_dir, "tiny_24khz"), model.sample_rate, model.channels)
        pipeline = encode_pipeline(model, source, EcdcSink(fo, coder), coder)
        pipeline.insert_after("entropy_coder", "faults", drop_chunk_one)
        pipeline.run_sync(handle_signals=False)

    wav = tmp_path / "lossy.wav"
    report = decode_file(out, wav, model=model)
    # The header records where the last chunk ends, so the missing chunk 1 is concealed and
    # the output keeps the input's length.
    assert report.gaps == 1
    assert report.samples == 48000


def test_wav_writer_clamps_and_counts(tmp_path):
    path = tmp_path / "loud.wav"
    samples = np.array([[0.5, 1.5, -2.0, 1.0, -1.0]], dtype=np.float32)
    with WavWriter(path, 24000, 1) as writer:
        writer.write(samples)
    assert writer.clamped == 2
    data, _ = sf.read(path, dtype="int16")
    assert data.tolist() == [16384, 32767, -32768, 32767, -32768]


def test_failed_encode_leaves_no_output(models, tmp_path):
    bad = tmp_path / "nan.wav"
    audio = np.zeros(24000, dtype=np.float32)
    audio[30000 // 2] = np.nan
    sf.write(bad, audio, 24000, subtype="FLOAT")
    out = tmp_path / "out.ecdc"
    with pytest.raises(InvalidAudioError, match="NaN"):
        encode_file(bad, out, model=models["tiny_24khz"], bandwidth=1.2)
    assert list(tmp_path.iterdir()) == [bad]


def test_seek_outside_stream_is_rejected(models, golden_dir, tmp_path):
    stream = tmp_path / "in.ecdc"
    encode_file(input_path(golden_dir, "tiny_24khz"), stream, model=models["tiny_24khz"], bandwidth=1.2)
    with pytest.raises(InvalidArgumentError, match="beyond the end"):
        decode_file(stream, tmp_path / "out.wav", start_seconds=2.0, model=models["tiny_24khz"])
    with pytest.raises(InvalidArgumentError, match="start < end"):
        decode_file(stream, tmp_path / "out.wav", start_seconds=1.0, end_seconds=0.5, model=models["tiny_24khz"])
    assert not (tmp_path / "out.wav").exists()


def test_encode_part_of_a_file(models, golden_dir, tmp_path):
    stream = tmp_path / "part.ecdc"
    report = encode_file(input_path(golden_dir, "tiny_48khz"), stream, model=models["tiny_48khz"], bandwidth=2.4,
                         start_seconds=0.5, end_seconds=1.75)
    assert report.samples == int(1.25 * 48000)
    with open(stream, "rb") as fo:
        assert read_header(fo)["total_samples"] == int(1.25 * 48000)
