"""The LSTM that ends the SEANet encoder and starts the decoder."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator

import torch
from torch import nn


def _load_openmp_runtime() -> ctypes.CDLL | None:
    """Return the OpenMP runtime torch's CPU kernels run on, or None where there is none to find.

    torch's Linux wheels load their OpenMP runtime into the process's global symbol namespace,
    so `omp_set_num_threads` resolves to the same function the kernels' runtime uses.
    """
    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        runtime = ctypes.CDLL(None)
        runtime.omp_get_max_threads.restype = ctypes.c_int
        runtime.omp_set_num_threads.argtypes = [ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return runtime


_openmp_runtime: ctypes.CDLL | None = None
_openmp_loaded = False
_openmp_lock = threading.Lock()


def _openmp() -> ctypes.CDLL | None:
    global _openmp_runtime, _openmp_loaded
    with _openmp_lock:
        if not _openmp_loaded:
            _openmp_runtime = _load_openmp_runtime()
            _openmp_loaded = True
    return _openmp_runtime


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the body's torch CPU kernels on the calling thread alone, restoring its count after.

    This changes only the calling thread's OpenMP team size, unlike `torch.set_num_threads`,
    which also sets the count that threads starting meanwhile pick up. Without an OpenMP
    runtime to call, the body runs with the thread count unchanged.
    """
    runtime = _openmp()
    if runtime is None:
        yield
        return

    # torch sets a thread's OpenMP team size on the thread's first query of it, so query it
    # here, or that first query inside the body would undo the change.
    torch.get_num_threads()
    previous = runtime.omp_get_max_threads()
    runtime.omp_set_num_threads(1)
    try:
        yield
    finally:
        runtime.omp_set_num_threads(previous)


class SingleThreadLSTM(nn.LSTM):
    """`nn.LSTM` that runs on one CPU thread.

    On CPU, float32 LSTMs run on oneDNN (`aten::mkldnn_rnn_layer`), which synchronises its
    threads at every time step. When other processes keep the cores busy, a thread that waits
    there by spinning loses its time slice at almost every step. On a loaded 2-core machine
    (torch 2.13, oneDNN 3.12), a 2-layer, 512-channel LSTM over 150 steps took 2.4 s on 2
    threads and 0.035 s on one. oneDNN's LSTM output does not depend on its thread count
    (checked bit for bit with 1 to 16 threads), so this changes the speed, not the values.

    NOTE: on a quiet machine the second thread helps. With a load average of about 2 on 2
    cores, the 24 kHz and 48 kHz encode and decode measured 10 to 25 % slower with this class
    than with the default thread count (benchmarks/bench_networks.py).
    """

    def forward(self, *args, **kwargs):  # type: ignore[override]
        with single_thread():
            return super().forward(*args, **kwargs)


class SkipLSTM(nn.Module):
    """Multi-layer LSTM over time with a residual connection from its input to its output.

    Input and output [B, C, T]; the state starts at zero on every call. The parameters are those
    of `nn.LSTM(C, C, num_layers)`, stored under `lstm.*` as in the published checkpoints.
    """

    def __init__(self, dimension: int, num_layers: int = 2, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.lstm = SingleThreadLSTM(dimension, dimension, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = x.permute(2, 0, 1)
        y, _ = self.lstm(sequence)
        if self.skip:
            y = y + sequence
        return y.permute(1, 2, 0)
