"""Seeded random checkpoints under the published file names, for tests and CI.

The real checkpoints cannot be downloaded on the machines that run the tests, so
`write_random_checkpoints` writes stand-ins with the published keys, shapes and file names.
Network weights come from torch's default initialisation under a fixed seed. The codebooks are
filled with encoder outputs of real audio frames (level by level, each from the residual the
levels before it leave), so that encoding audio gives diverse codes rather than one code
everywhere. The same seed, audio, machine and torch build give the same bytes.

Run as `python -m ecdc_stream.model.random_weights DIR [--seed N]`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import soundfile
import torch

from .config import PUBLISHED_CONFIGS, EncodecConfig
from .encodec import EncodecModel
from .registry import build_lm
from .weights import LM_CHECKPOINTS, MODEL_CHECKPOINTS

logger = logging.getLogger(__name__)

# Recordings published with the reference implementation, in the shared folder beside the
# repository checkout. Without them the codebooks are filled from seeded noise.
DEFAULT_AUDIO_DIR = Path(__file__).resolve().parent.parent.parent.parent / "shared" / "audio"
AUDIO_FILES = {"encodec_24khz": "test_24k.wav", "encodec_48khz": "test_48k.wav"}

# Seconds of audio encoded to fill the codebooks. At 24 kHz that is 750 frames for 1024
# codewords, so some frames serve twice, each time with its own noise (see CODEWORD_NOISE).
FILL_SECONDS = 10

# Standard deviation of the noise added to each codeword, relative to the residual's standard
# deviation in each dimension, so that each level leaves a residual for the next one to code.
CODEWORD_NOISE = 0.5


def _fill_audio(config: EncodecConfig, audio_dir: Path | None, generator: torch.Generator) -> torch.Tensor:
    """Return up to FILL_SECONDS of audio [1, C, n] at the model's rate: the recording, else noise."""
    num_samples = FILL_SECONDS * config.sample_rate
    path = (audio_dir or DEFAULT_AUDIO_DIR) / AUDIO_FILES.get(config.name, "")
    if path.is_file():
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True, frames=num_samples)
        if rate == config.sample_rate and samples.shape[1] == config.channels:
            return torch.from_numpy(samples.T.copy()).unsqueeze(0)
        logger.warning("%s is not %d Hz with %d channel(s), so noise fills the codebooks", path, config.sample_rate, config.channels)
    return 0.1 * torch.randn(1, config.channels, num_samples, generator=generator)


@torch.no_grad()
def _encoder_frames(model: EncodecModel, audio: torch.Tensor) -> torch.Tensor:
    """Return the encoder outputs [N, D] of `audio` [1, C, n], segment by segment as `encode` cuts it."""
    length = audio.shape[-1]
    segment_length = model.segment_length or length
    frames = []
    for offset in model.segment_offsets(length):
        segment = audio[:, :, offset : offset + segment_length]
        if model.normalize:
            volume = segment.mean(dim=1, keepdim=True).pow(2).mean(dim=2, keepdim=True).sqrt()
            segment = segment / (1e-8 + volume)
        embeddings = model.encoder(segment)
        frames.append(embeddings[0].t())
    return torch.cat(frames)


@torch.no_grad()
def _fill_codebooks(model: EncodecModel, frames: torch.Tensor, generator: torch.Generator) -> None:
    """Set each codebook to `bins` rows of the residual that the previous levels leave of `frames` [N, D]."""
    residual = frames
    bins = model.bins
    for layer in model.quantizer.vq.layers:
        codebook = layer._codebook
        if residual.shape[0] >= bins:
            rows = torch.randperm(residual.shape[0], generator=generator)[:bins]
        else:
            rows = torch.randint(0, residual.shape[0], (bins,), generator=generator)

        # Without the noise a frame chosen as a codeword would leave a zero residual, and every
        # later level would code the fill audio with one codeword.
        spread = residual.std(dim=0, keepdim=True).clamp_min(1e-6)
        embed = residual[rows] + CODEWORD_NOISE * spread * torch.randn(bins, residual.shape[1], generator=generator)

        codebook.embed.copy_(embed)
        codebook.embed_avg.copy_(embed)
        codebook.cluster_size.fill_(1.0)
        codebook.inited.fill_(1.0)
        residual = residual - codebook.decode(codebook.encode(residual))


def random_model_state(name: str, seed: int = 0, audio_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """Return a seeded random state dict for published model `name` with audio-filled codebooks."""
    config = PUBLISHED_CONFIGS[name]
    generator = torch.Generator().manual_seed(seed * 1000 + 1 + list(PUBLISHED_CONFIGS).index(name))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        model = EncodecModel(config).eval()

    frames = _encoder_frames(model, _fill_audio(config, audio_dir, generator))
    _fill_codebooks(model, frames, generator)
    return {key: value.detach().clone().contiguous() for key, value in model.state_dict().items()}


def random_lm_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a seeded random state dict for the LM of published model `name`."""
    config = PUBLISHED_CONFIGS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + 101 + list(PUBLISHED_CONFIGS).index(name))
        lm = build_lm(config)
    return {key: value.detach().clone().contiguous() for key, value in lm.state_dict().items()}


def write_random_checkpoints(
    directory: str | os.PathLike, seed: int = 0, audio_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Write seeded random checkpoints for both published models and their LMs into `directory`.

    Returns the four paths, named as the published files. Each file is written under a temporary
    name and renamed, so a file under a published name is always complete.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    audio_folder = Path(audio_dir) if audio_dir is not None else None

    written = []
    with torch.no_grad():
        for name in PUBLISHED_CONFIGS:
            states = (
                (MODEL_CHECKPOINTS[name], random_model_state(name, seed, audio_folder)),
                (LM_CHECKPOINTS[name], random_lm_state(name, seed)),
            )
            for file_name, state in states:
                path = folder / file_name
                temp_path = folder / f".{file_name}.partial"
                torch.save(state, temp_path)
                os.replace(temp_path, path)
                written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Write the random checkpoints into the folder named on the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m ecdc_stream.model.random_weights",
        description="Write seeded random EnCodec checkpoints under the published file names.",
    )
    parser.add_argument("directory", type=Path, help="folder to write the four .th files into")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--audio-dir", type=Path, default=None, help="folder with test_24k.wav and test_48k.wav")
    args = parser.parse_args(argv)

    for path in write_random_checkpoints(args.directory, args.seed, args.audio_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
