"""Finding, downloading and loading the published EnCodec checkpoints.

Checkpoints are looked up by their published file names in two places. The first is the folder
named by the `weights_dir` argument (the `--weights DIR` option) or, without it, by the
`ECDC_STREAM_WEIGHTS` environment variable. The second is the torch hub cache
`$TORCH_HOME/hub/checkpoints`, where the original EnCodec package stores them too. A file found
in neither is downloaded into the hub cache, unless a folder was named, because naming one
means working offline.

The SHA-256 prefix in a published name (`encodec_24khz-d7cc33bc.th`) is checked when the file is
downloaded, not when a file already on disk is loaded. So a folder can hold seeded random
checkpoints under the published names (see `random_weights`), which tests and CI use because the
real ones cannot be downloaded there. A file that is not a valid checkpoint, or does not match
the model, is reported whichever folder it came from.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pickle
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn
from tqdm import tqdm

from ..errors import ModelNotFoundError

logger = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "ECDC_STREAM_WEIGHTS"
BASE_URL_ENV = "ECDC_STREAM_WEIGHTS_URL"
DEFAULT_BASE_URL = "https://dl.fbaipublicfiles.com/encodec/v0/"

MODEL_CHECKPOINTS = {
    "encodec_24khz": "encodec_24khz-d7cc33bc.th",
    "encodec_48khz": "encodec_48khz-7e698e3e.th",
}
LM_CHECKPOINTS = {
    "encodec_24khz": "encodec_lm_24khz-1608e3c0.th",
    "encodec_48khz": "encodec_lm_48khz-7add9fc3.th",
}

DOWNLOAD_TIMEOUT_S = 30.0
_CHUNK_BYTES = 1 << 20
_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")

# torch.load raises these for files that are empty, truncated, not a zip archive, or contain a
# pickle that weights_only loading rejects. Its documentation names no exception types.
_LOAD_ERRORS = (
    RuntimeError,
    EOFError,
    pickle.UnpicklingError,
    KeyError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
)


def hub_checkpoint_dir() -> Path:
    """Return the torch hub checkpoint folder, `torch.hub.get_dir()/checkpoints`."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def expected_hash_prefix(file_name: str) -> str | None:
    """Return the hex SHA-256 prefix that a published file name ends with, or None."""
    match = _HASH_PREFIX.search(file_name)
    return match.group(1) if match else None


def named_weights_dir(weights_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the folder named by `weights_dir`, else by `ECDC_STREAM_WEIGHTS`, else None."""
    if weights_dir is not None:
        return Path(weights_dir).expanduser()
    from_env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(from_env).expanduser() if from_env else None


def base_url() -> str:
    """Return the download location: `ECDC_STREAM_WEIGHTS_URL` if set, else the published one."""
    url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


def find_checkpoint(
    file_name: str,
    weights_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Return the path of checkpoint `file_name`, downloading it into the hub cache if needed.

    Raises `ModelNotFoundError` naming the file, the folders searched and how to provide it when
    it is in none of them and cannot be downloaded.
    """
    named = named_weights_dir(weights_dir)
    hub = hub_checkpoint_dir()
    folders = [named, hub] if named is not None else [hub]
    for folder in folders:
        candidate = folder / file_name
        if candidate.is_file():
            return candidate

    searched = ", ".join(str(folder) for folder in folders)
    if named is not None and not named.is_dir():
        raise ModelNotFoundError(
            f"weights folder {named} does not exist: pass the folder that contains {file_name} "
            f"with --weights DIR or {WEIGHTS_DIR_ENV}"
        )
    if named is not None or not download:
        raise ModelNotFoundError(
            f"checkpoint {file_name} not found in {searched}: copy it into {folders[0]} "
            f"(folders are named with --weights DIR or {WEIGHTS_DIR_ENV}), or download it from {base_url()}{file_name}"
        )

    try:
        return download_checkpoint(file_name, hub, progress=progress)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise ModelNotFoundError(
            f"checkpoint {file_name} not found in {searched} and downloading {base_url()}{file_name} "
            f"failed ({reason}): on a machine without network, put the file in a folder and pass it "
            f"with --weights DIR or {WEIGHTS_DIR_ENV}"
        ) from None


def download_checkpoint(file_name: str, directory: Path, *, progress: bool = True) -> Path:
    """Download `file_name` from `base_url()` into `directory` and return its path.

    The data goes to a temporary file in `directory`, which is renamed to `file_name` only after
    its size and SHA-256 prefix check out, so an interrupted or corrupt download never sits
    under the real name. Raises `ModelNotFoundError` on a hash mismatch or short transfer, and
    `urllib.error.URLError`, `http.client.HTTPException` or `OSError` when the server cannot be
    reached or read.
    """
    url = base_url() + file_name
    directory.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, directory)

    handle, temp_name = tempfile.mkstemp(prefix=f".{file_name}.", suffix=".partial", dir=directory)
    temp_path = Path(temp_name)
    try:
        digest, received, announced = _fetch(url, handle, file_name, progress)

        if announced is not None and received != announced:
            raise ModelNotFoundError(
                f"download of {file_name} from {url} stopped after {received} of {announced} bytes: try again"
            )
        expected = expected_hash_prefix(file_name)
        if expected is not None and not digest.startswith(expected):
            raise ModelNotFoundError(
                f"downloaded {file_name} has SHA-256 {digest}, which does not start with {expected}: "
                f"the file from {url} is corrupt or not this checkpoint, so it was discarded"
            )

        final_path = directory / file_name
        os.replace(temp_path, final_path)
        return final_path
    finally:
        temp_path.unlink(missing_ok=True)


def _fetch(url: str, handle: int, file_name: str, progress: bool) -> tuple[str, int, int | None]:
    """Copy `url` into the open file descriptor `handle`; return (sha256 hex, bytes, Content-Length)."""
    sha256 = hashlib.sha256()
    received = 0
    with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        length_header = response.headers.get("Content-Length")
        announced = int(length_header) if length_header and length_header.isdigit() else None
        with tqdm(
            total=announced,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=file_name,
            disable=None if progress else True,
        ) as bar:
            while chunk := response.read(_CHUNK_BYTES):
                out.write(chunk)
                sha256.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    return sha256.hexdigest(), received, announced


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from `path` with `torch.load(weights_only=True)` onto the CPU.

    Raises `ModelNotFoundError` with a one-line message when the file is unreadable, truncated,
    not a torch checkpoint, or not a mapping from names to tensors.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelNotFoundError(
            f"checkpoint {path} is corrupt or truncated ({first_line[:120]}): delete it and download it again"
        ) from None
    except OSError as error:
        raise ModelNotFoundError(f"cannot read checkpoint {path}: {error.strerror or error}") from None

    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ModelNotFoundError(f"checkpoint {path} does not hold a state dict of named tensors: replace the file")
    return dict(state)


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise `ModelNotFoundError` (one line) unless `state` has exactly the keys and shapes of `module`."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {list(state[key].shape)} instead of {list(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]

    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise ModelNotFoundError(
            f"checkpoint {source} does not match the model ({'; '.join(problems)}): "
            "it belongs to another model or is damaged, so replace it"
        )


def load_checkpoint(module: nn.Module, path: Path) -> None:
    """Load the state dict in `path` into `module` with strict key matching, after checking it."""
    state = read_state_dict(path)
    check_state_dict(module, state, str(path))
    module.load_state_dict(state, strict=True)
