"""EnCodec networks (SEANet, RVQ, LM), their configurations and checkpoints.

`load_model("encodec_24khz")` returns the 24 kHz model with its published weights; see
`weights` for where checkpoints are looked up and `random_weights` for seeded stand-ins.
"""

from .config import PUBLISHED_CONFIGS, EncodecConfig, published_config
from .encodec import EncodecModel, EncodedSegment, linear_overlap_add
from .registry import (
    build_lm,
    config_factories,
    lm_state_dict,
    load_lm,
    load_model,
    model_names,
    register_model,
    resolve_device,
    unregister_model,
)
from .weights import LM_CHECKPOINTS, MODEL_CHECKPOINTS, find_checkpoint

__all__ = [
    "PUBLISHED_CONFIGS",
    "EncodecConfig",
    "EncodecModel",
    "EncodedSegment",
    "LMModel",
    "LM_CHECKPOINTS",
    "MODEL_CHECKPOINTS",
    "build_lm",
    "config_factories",
    "find_checkpoint",
    "linear_overlap_add",
    "lm_state_dict",
    "load_lm",
    "load_model",
    "model_names",
    "published_config",
    "register_model",
    "resolve_device",
    "unregister_model",
]


def __getattr__(name: str):
    # The LM is imported on first use, so code that only needs the codec does not load it.
    if name == "LMModel":
        from .lm import LMModel

        return LMModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
