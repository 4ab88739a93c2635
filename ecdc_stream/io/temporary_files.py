"""Temporary files beside an output, for writing it under another name and renaming it into place."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ecdc_stream.errors import InvalidArgumentError

# Random names tried before giving up. With 32 random bits per name, even one clash is rare.
MAX_NAME_ATTEMPTS = 100


def create_beside(path: Path, suffix: str = ".part") -> tuple[int, Path]:
    """Create a new empty file in the folder of `path` and return its open descriptor and path.

    The name is `.NAME.RANDOM` followed by `suffix`. Unlike `tempfile.mkstemp`, which always
    makes mode 0600, the file gets mode 0666 less the process umask, as `open(path, "w")` would
    give it. So the output keeps the usual permissions after the rename.
    Raises InvalidArgumentError when the folder does not exist.
    """
    folder = path.parent
    if not folder.is_dir():
        raise InvalidArgumentError(f"output folder {str(folder)!r} does not exist")
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(MAX_NAME_ATTEMPTS):
        candidate = folder / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(candidate, flags, 0o666), candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {str(path)!r} after {MAX_NAME_ATTEMPTS} attempts")
