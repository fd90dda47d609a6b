"""PyTorch state_dicts <-> jax-nano parameters: the one place where both frameworks meet.

The layout work (names, transposes, the layer axis) is numpy in jax_nano/layout.py; tensors cross to and
from numpy bit for bit in torch_ref/tensors.py. So a round trip is bit-exact in any dtype.
"""

from flax import nnx

from configs.model import ModelConfig
from jax_nano.layout import from_upstream, to_upstream
from jax_nano.model import GPT
from torch_ref.model import MinimalLLM
from torch_ref.tensors import numpy_state_dict, torch_state_dict


def torch_to_jax(state_dict: dict, cfg: ModelConfig) -> dict:
    """Upstream `state_dict` of tensors -> nested dict of arrays in the layout of `nnx.state(GPT(cfg), nnx.Param)`."""
    return from_upstream(numpy_state_dict(state_dict), cfg)


def jax_to_torch(params, cfg: ModelConfig) -> dict:
    """jax-nano parameters -> upstream `state_dict` of tensors (with the tied `lm_head.weight`), loadable with
    strict=True."""
    return torch_state_dict(to_upstream(params, cfg))


def to_torch_model(model: GPT, cfg: ModelConfig) -> MinimalLLM:
    """The PyTorch twin (`torch_ref.model.MinimalLLM`) of a jax-nano model, with the same weights."""
    twin = MinimalLLM(cfg)
    twin.load_state_dict(jax_to_torch(nnx.state(model, nnx.Param), cfg), strict=True)
    return twin.eval()

