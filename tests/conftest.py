"""Fixtures shared by the test modules: golden vectors, tiny models, random weights, recordings.

No test may reach the internet: for the whole session the torch hub cache is a temporary folder
and checkpoint downloads go to a loopback port where nothing listens, unless a test points
`ECDC_STREAM_WEIGHTS_URL` at a server of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

import ecdc_stream.model
from ecdc_stream.model import LM_CHECKPOINTS, MODEL_CHECKPOINTS, EncodecConfig, config_factories, register_model
from ecdc_stream.model.random_weights import write_random_checkpoints

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
# The recordings live outside the repository: in the shared folder beside the clone, or where
# ECDC_STREAM_TEST_AUDIO points.
AUDIO_DIR = Path(os.environ.get("ECDC_STREAM_TEST_AUDIO") or Path(__file__).resolve().parents[2] / "shared" / "audio")
RECORDINGS = ("test_24k.wav", "test_48k.wav")
TINY_CASES = ("tiny_24khz", "tiny_48khz")

# Port 9 (discard) on loopback: a download attempt fails at once with "connection refused".
UNREACHABLE_URL = "http://127.0.0.1:9/"


def pytest_sessionstart(session: pytest.Session) -> None:
    # The random checkpoints and many tests read the recordings, so without them the suite would
    # fail in dozens of places. One message says what is missing instead.
    missing = [name for name in RECORDINGS if not (AUDIO_DIR / name).is_file()]
    if missing:
        pytest.exit(
            f"test recordings {', '.join(missing)} not found in {AUDIO_DIR}: clone the repository beside "
            "the shared folder, or set ECDC_STREAM_TEST_AUDIO to the folder that holds them",
            returncode=4,
        )


def tiny_config(case: str) -> EncodecConfig:
    """Return the model configuration of golden case `case` ("tiny_24khz" or "tiny_48khz")."""
    values = json.loads((GOLDEN_DIR / case / "config.json").read_text())
    return EncodecConfig.from_dict(values, ignore_unknown=True)


@pytest.fixture(scope="session", autouse=True)
def offline_weights(tmp_path_factory):
    """Keep the session off the user's hub cache and off the network."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        patch.setenv("ECDC_STREAM_WEIGHTS_URL", UNREACHABLE_URL)
        patch.delenv("ECDC_STREAM_WEIGHTS", raising=False)
        yield


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Folder of the reference's golden vectors (tests/golden)."""
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    """Folder of the shared recordings test_24k.wav (mono) and test_48k.wav (stereo)."""
    return AUDIO_DIR


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, EncodecConfig]:
    """Register "tiny_24khz" and "tiny_48khz" with their golden weights; return their configurations.

    After this fixture, `load_model("tiny_24khz")` and `load_lm("tiny_24khz")` work offline.
    """
    configs = {}
    for case in TINY_CASES:
        config = tiny_config(case)
        model_factory, lm_factory = config_factories(config, GOLDEN_DIR / case / "model.pt", GOLDEN_DIR / case / "lm.pt")
        register_model(case, model_factory, lm_factory)
        configs[case] = config
    return configs


def random_weights_key() -> str:
    """Return a digest of everything the random checkpoints depend on: torch, model code, audio."""
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted(Path(ecdc_stream.model.__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for name in ("test_24k.wav", "test_48k.wav"):
        recording = AUDIO_DIR / name
        digest.update(str(recording.stat().st_size if recording.exists() else -1).encode())
    return digest.hexdigest()[:16]


def prune_stale_weights(cache_root: Path, keep: str, max_age_s: float = 3600.0) -> None:
    """Delete cached random checkpoints of other keys that were last written over an hour ago."""
    for entry in cache_root.iterdir():
        if entry.name != keep and time.time() - entry.stat().st_mtime > max_age_s:
            shutil.rmtree(entry, ignore_errors=True)


@pytest.fixture(scope="session")
def weights_dir(request, tmp_path_factory) -> Path:
    """Folder with seeded random checkpoints under the four published names (read-only files).

    Writing them takes seconds, so they are kept in the pytest cache under a key of the model
    code, torch version and recordings, and rewritten whenever one of those changes.
    """
    file_names = [*MODEL_CHECKPOINTS.values(), *LM_CHECKPOINTS.values()]
    cache = request.config.cache
    if cache is None:
        folder = tmp_path_factory.mktemp("weights")
        write_random_checkpoints(folder, seed=0, audio_dir=AUDIO_DIR)
        return folder

    cache_root = Path(cache.mkdir("ecdc_random_weights"))
    key = random_weights_key()
    folder = cache_root / key
    if not all((folder / name).is_file() for name in file_names):
        staging = Path(tempfile.mkdtemp(prefix="staging-", dir=cache_root))
        write_random_checkpoints(staging, seed=0, audio_dir=AUDIO_DIR)
        for path in staging.iterdir():
            path.chmod(0o444)
        try:
            os.rename(staging, folder)
        except OSError:
            # Another test session finished the same folder first.
            shutil.rmtree(staging, ignore_errors=True)
        prune_stale_weights(cache_root, key)
    return folder
