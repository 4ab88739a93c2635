"""Checkpoint discovery, download over loopback HTTP, hash checks, and damaged checkpoint files."""

from __future__ import annotations

import functools
import hashlib
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from ecdc_stream.errors import InvalidArgumentError, ModelNotFoundError
from ecdc_stream.model import EncodecConfig, EncodecModel, load_lm, load_model, resolve_device
from ecdc_stream.model.random_weights import main as random_weights_main
from ecdc_stream.model.random_weights import random_lm_state
from ecdc_stream.model.weights import (
    LM_CHECKPOINTS,
    expected_hash_prefix,
    find_checkpoint,
    hub_checkpoint_dir,
    load_checkpoint,
)


class LoopbackHandler(SimpleHTTPRequestHandler):
    """Serves files from a folder; under /short/ it announces more bytes than it sends."""

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if self.path.startswith("/short/"):
            body = (Path(self.directory) / self.path.removeprefix("/short/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving the returned folder; downloads are pointed at it."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []
    handler = functools.partial(type("Handler", (LoopbackHandler,), {"requests": requests}), directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    monkeypatch.setenv("ECDC_STREAM_WEIGHTS_URL", base)
    try:
        yield root, base, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def hashed_copy(source: Path, folder: Path, stem: str) -> Path:
    """Copy `source` into `folder` as `<stem>-<first 8 hex digits of its SHA-256>.th`."""
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    target = folder / f"{stem}-{digest[:8]}.th"
    shutil.copyfile(source, target)
    return target


@pytest.fixture
def tiny_model(tiny_models: dict[str, EncodecConfig]) -> EncodecModel:
    return EncodecModel(tiny_models["tiny_24khz"])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_hash_prefix_of_published_names():
    assert expected_hash_prefix("encodec_24khz-d7cc33bc.th") == "d7cc33bc"
    assert expected_hash_prefix("encodec_lm_48khz-7add9fc3.th") == "7add9fc3"
    assert expected_hash_prefix("model.th") is None


def test_found_in_named_folder(tmp_path, golden_dir):
    path = hashed_copy(golden_dir / "tiny_24khz" / "model.pt", tmp_path, "tiny")
    assert find_checkpoint(path.name, tmp_path) == path


def test_found_in_env_folder(tmp_path, golden_dir, monkeypatch):
    path = hashed_copy(golden_dir / "tiny_24khz" / "model.pt", tmp_path, "tiny")
    monkeypatch.setenv("ECDC_STREAM_WEIGHTS", str(tmp_path))
    assert find_checkpoint(path.name) == path


def test_found_in_hub_cache(golden_dir):
    hub = hub_checkpoint_dir()
    hub.mkdir(parents=True, exist_ok=True)
    path = hashed_copy(golden_dir / "tiny_24khz" / "model.pt", hub, "hubbed")
    try:
        assert hub.parent.parent == Path(torch.hub.get_dir()).parent
        assert find_checkpoint(path.name) == path
    finally:
        path.unlink()


def test_named_folder_before_hub(tmp_path, golden_dir):
    hub = hub_checkpoint_dir()
    hub.mkdir(parents=True, exist_ok=True)
    in_hub = hashed_copy(golden_dir / "tiny_24khz" / "model.pt", hub, "twice")
    try:
        in_folder = hashed_copy(golden_dir / "tiny_24khz" / "model.pt", tmp_path, "twice")
        assert find_checkpoint(in_folder.name, tmp_path) == in_folder
    finally:
        in_hub.unlink()


def test_missing_in_named_folder_never_downloads(tmp_path, server):
    _, _, requests = server
    with pytest.raises(ModelNotFoundError) as caught:
        find_checkpoint("encodec_24khz-d7cc33bc.th", tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert "encodec_24khz-d7cc33bc.th" in message
    assert str(tmp_path) in message
    assert str(hub_checkpoint_dir()) in message
    assert "--weights DIR" in message
    assert "ECDC_STREAM_WEIGHTS" in message
    assert requests == []


def test_missing_without_network(tmp_path):
    # The session points downloads at a closed loopback port.
    with pytest.raises(ModelNotFoundError) as caught:
        load_model("encodec_24khz")
    message = str(caught.value)
    assert "\n" not in message
    assert "encodec_24khz-d7cc33bc.th" in message
    assert str(hub_checkpoint_dir()) in message
    assert "--weights DIR" in message
    assert "ECDC_STREAM_WEIGHTS" in message
    assert not (hub_checkpoint_dir() / "encodec_24khz-d7cc33bc.th").exists()


def test_download_into_hub_cache(server, golden_dir, tiny_model):
    root, _, requests = server
    served = hashed_copy(golden_dir / "tiny_24khz" / "model.pt", root, "tiny_download")

    path = find_checkpoint(served.name, progress=False)

    assert path == hub_checkpoint_dir() / served.name
    assert path.read_bytes() == served.read_bytes()
    assert requests == [f"/{served.name}"]
    assert not [name for name in leftovers(hub_checkpoint_dir()) if name.endswith(".partial")]
    load_checkpoint(tiny_model, path)
    path.unlink()


def test_download_wrong_hash_rejected(server, golden_dir):
    root, _, _ = server
    shutil.copyfile(golden_dir / "tiny_24khz" / "model.pt", root / "tiny-00000000.th")
    assert not hashlib.sha256((root / "tiny-00000000.th").read_bytes()).hexdigest().startswith("00000000")
    before = leftovers(hub_checkpoint_dir())

    with pytest.raises(ModelNotFoundError) as caught:
        find_checkpoint("tiny-00000000.th", progress=False)

    message = str(caught.value)
    assert "\n" not in message
    assert "SHA-256" in message
    assert "00000000" in message
    assert leftovers(hub_checkpoint_dir()) == before


def test_download_of_random_published_lm_rejected(server, weights_dir):
    # Random stand-ins are trusted in a folder, but a download must carry the published hash.
    root, _, requests = server
    file_name = LM_CHECKPOINTS["encodec_48khz"]
    shutil.copyfile(weights_dir / file_name, root / file_name)
    before = leftovers(hub_checkpoint_dir())

    with pytest.raises(ModelNotFoundError, match="SHA-256"):
        load_lm("encodec_48khz", progress=False)

    assert requests == [f"/{file_name}"]
    assert leftovers(hub_checkpoint_dir()) == before


def test_short_download_rejected(server, golden_dir, monkeypatch):
    root, base, _ = server
    served = hashed_copy(golden_dir / "tiny_24khz" / "model.pt", root, "tiny_short")
    monkeypatch.setenv("ECDC_STREAM_WEIGHTS_URL", base + "short/")
    before = leftovers(hub_checkpoint_dir())

    with pytest.raises(ModelNotFoundError) as caught:
        find_checkpoint(served.name, progress=False)

    assert "\n" not in str(caught.value)
    assert leftovers(hub_checkpoint_dir()) == before


def test_http_error_is_model_not_found(server):
    with pytest.raises(ModelNotFoundError) as caught:
        find_checkpoint("absent-12345678.th", progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "downloading" in message
    assert "not found" in message.lower()


def damaged_files(golden_dir: Path, folder: Path) -> dict[str, Path]:
    data = (golden_dir / "tiny_24khz" / "model.pt").read_bytes()
    contents = {
        "truncated": data[: len(data) // 2],
        "truncated_tail": data[:-10],
        "empty": b"",
        "text": b"not a checkpoint\n" * 20,
        "garbage": bytes(range(256)) * 8,
    }
    paths = {}
    for label, content in contents.items():
        paths[label] = folder / f"{label}.th"
        paths[label].write_bytes(content)
    torch.save([torch.zeros(3)], folder / "list.th")
    paths["list"] = folder / "list.th"
    return paths


def test_damaged_checkpoints_rejected(tmp_path, golden_dir, tiny_model):
    for label, path in damaged_files(golden_dir, tmp_path).items():
        with pytest.raises(ModelNotFoundError) as caught:
            load_checkpoint(tiny_model, path)
        message = str(caught.value)
        assert "\n" not in message, label
        assert str(path) in message, label


def test_checkpoint_of_other_model_rejected(golden_dir, tiny_models):
    model = EncodecModel(tiny_models["tiny_48khz"])
    path = golden_dir / "tiny_24khz" / "model.pt"
    with pytest.raises(ModelNotFoundError) as caught:
        load_checkpoint(model, path)
    message = str(caught.value)
    assert "\n" not in message
    assert "does not match" in message
    assert "missing" in message
    assert "unexpected" in message


def test_checkpoint_with_wrong_shape_rejected(tmp_path, golden_dir, tiny_model):
    state = torch.load(golden_dir / "tiny_24khz" / "model.pt", weights_only=True)
    state["quantizer.vq.layers.0._codebook.embed"] = torch.zeros(8, 16)
    path = tmp_path / "reshaped.th"
    torch.save(state, path)
    with pytest.raises(ModelNotFoundError, match=r"wrong shape: quantizer\.vq\.layers\.0\._codebook\.embed \[8, 16\]"):
        load_checkpoint(tiny_model, path)


def test_named_folder_missing(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        find_checkpoint("encodec_24khz-d7cc33bc.th", tmp_path / "absent")


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="encodec_24khz"):
        load_model("encodec_96khz")


def test_device_checks():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InvalidArgumentError):
        resolve_device("toaster")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgumentError, match="not available"):
            resolve_device("cuda")


def test_random_lm_state_depends_on_seed():
    first = random_lm_state("encodec_48khz", seed=0)
    again = random_lm_state("encodec_48khz", seed=0)
    other = random_lm_state("encodec_48khz", seed=1)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


@pytest.mark.slow
def test_random_checkpoints_same_bytes(tmp_path, weights_dir, audio_dir, capsys):
    assert random_weights_main([str(tmp_path), "--seed", "0", "--audio-dir", str(audio_dir)]) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    assert sorted(path.name for path in written) == sorted(path.name for path in weights_dir.iterdir())
    for path in written:
        assert path.read_bytes() == (weights_dir / path.name).read_bytes(), path.name
    assert not [name for name in leftovers(tmp_path) if name.endswith(".partial")]
