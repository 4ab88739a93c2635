"""Streaming EnCodec audio compression with streams that decode identically on every machine.

The names below are imported on first use, so that `import ecdc_stream.container` and other
torch-free parts do not load torch.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "compress": "ecdc_stream.api",
    "compress_to_file": "ecdc_stream.api",
    "decompress": "ecdc_stream.api",
    "decompress_from_file": "ecdc_stream.api",
    "load_lm": "ecdc_stream.model",
    "load_model": "ecdc_stream.model",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ecdc_stream' has no attribute {name!r}")
