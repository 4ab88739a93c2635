"""Models by name: the published EnCodec models and any registered with `register_model`.

A model factory is called as `factory(weights_dir, progress)` and returns the network with its
weights loaded: an `EncodecModel` for the model factory, an `LMModel` for the LM factory.
`weights_dir` is the folder passed to `load_model` (or None), and `progress` sets whether a
download may show a progress bar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..errors import InvalidArgumentError, ModelNotFoundError
from .config import PUBLISHED_CONFIGS, EncodecConfig
from .encodec import EncodecModel
from .weights import LM_CHECKPOINTS, MODEL_CHECKPOINTS, find_checkpoint, load_checkpoint

if TYPE_CHECKING:
    from .lm import LMModel

WeightsDir = str | os.PathLike | None
ModelFactory = Callable[[WeightsDir, bool], EncodecModel]
LMFactory = Callable[[WeightsDir, bool], "LMModel"]


@dataclass(frozen=True)
class _Entry:
    model_factory: ModelFactory
    lm_factory: LMFactory | None


_REGISTRY: dict[str, _Entry] = {}


def build_lm(config: EncodecConfig) -> LMModel:
    """Build the untrained LM of a model configuration: n_q codebooks of `bins` codes each."""
    from .lm import LMModel

    return LMModel(
        n_q=config.n_q,
        card=config.bins,
        dim=config.lm_dim,
        num_layers=config.lm_layers,
        num_heads=config.lm_num_heads,
        hidden_scale=config.lm_hidden_scale,
        past_context=config.resolved_lm_past_context,
    )


def register_model(name: str, model_factory: ModelFactory, lm_factory: LMFactory | None = None) -> None:
    """Make `load_model(name)` call `model_factory` and `load_lm(name)` call `lm_factory`.

    A later registration under the same name replaces the earlier one.
    """
    _REGISTRY[name] = _Entry(model_factory, lm_factory)


def unregister_model(name: str) -> None:
    """Forget a model registered with `register_model`; unknown names are ignored."""
    _REGISTRY.pop(name, None)


def model_names() -> list[str]:
    """Return the names `load_model` accepts."""
    return list(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(f"unknown model {name!r}: use one of {', '.join(_REGISTRY)}") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """Parse `device` ("cpu", "cuda", "cuda:1", "mps") and check that this machine has it."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"invalid device {device!r}: use cpu, cuda or mps") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError(f"device {device!r} is not available on this machine: use cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidArgumentError(f"device {device!r} is not available on this machine: use cpu")
    return resolved


def _ready(module: nn.Module, device: str | torch.device) -> nn.Module:
    target = resolve_device(device)
    module.eval()
    module.requires_grad_(False)
    return module.to(target)


def load_model(
    name: str, weights_dir: WeightsDir = None, device: str | torch.device = "cpu", *, progress: bool = True
) -> EncodecModel:
    """Return model `name` with its weights, in eval mode, on `device`.

    Published checkpoints are found as `weights.find_checkpoint` describes. Raises
    `ModelNotFoundError` for an unknown name or a missing or bad checkpoint, and
    `InvalidArgumentError` for a device this machine does not have.
    """
    resolve_device(device)
    model = _entry(name).model_factory(weights_dir, progress)
    return _ready(model, device)


def load_lm(
    name: str, weights_dir: WeightsDir = None, device: str | torch.device = "cpu", *, progress: bool = True
) -> LMModel:
    """Return the language model of model `name` with its weights, in eval mode, on `device`."""
    resolve_device(device)
    lm_factory = _entry(name).lm_factory
    if lm_factory is None:
        raise ModelNotFoundError(f"model {name!r} has no language model: encode without --lm")
    return _ready(lm_factory(weights_dir, progress), device)


def lm_state_dict(name: str, weights_dir: WeightsDir = None, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """Return the LM weights of model `name` as a state dict of CPU tensors, checked against the LM."""
    lm = load_lm(name, weights_dir, "cpu", progress=progress)
    return {key: value.detach().clone() for key, value in lm.state_dict().items()}


def _published_model_factory(name: str) -> ModelFactory:
    def factory(weights_dir: WeightsDir, progress: bool) -> EncodecModel:
        model = EncodecModel(PUBLISHED_CONFIGS[name])
        load_checkpoint(model, find_checkpoint(MODEL_CHECKPOINTS[name], weights_dir, progress=progress))
        return model

    return factory


def _published_lm_factory(name: str) -> LMFactory:
    def factory(weights_dir: WeightsDir, progress: bool) -> LMModel:
        lm = build_lm(PUBLISHED_CONFIGS[name])
        load_checkpoint(lm, find_checkpoint(LM_CHECKPOINTS[name], weights_dir, progress=progress))
        return lm

    return factory


def config_factories(config: EncodecConfig, model_state: Path, lm_state: Path | None = None) -> tuple[ModelFactory, LMFactory | None]:
    """Return factories that build `config`'s model and LM from state-dict files, for `register_model`."""

    def model_factory(weights_dir: WeightsDir, progress: bool) -> EncodecModel:
        model = EncodecModel(config)
        load_checkpoint(model, Path(model_state))
        return model

    def lm_factory(weights_dir: WeightsDir, progress: bool) -> LMModel:
        lm = build_lm(config)
        load_checkpoint(lm, Path(lm_state))  # type: ignore[arg-type]
        return lm

    return model_factory, (lm_factory if lm_state is not None else None)


for _name in PUBLISHED_CONFIGS:
    register_model(_name, _published_model_factory(_name), _published_lm_factory(_name))
