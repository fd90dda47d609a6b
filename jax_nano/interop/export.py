"""Trained weights out as PyTorch files: a bare state_dict, or what upstream's trainer saves as `model.pt`.

Needs PyTorch only (no JAX): the weights come as numpy arrays in upstream's layout from either trainer.
"""

import dataclasses

from configs.model import ModelConfig
from torch_ref.checkpoint import save_torch
from torch_ref.tensors import torch_state_dict


def upstream_checkpoint(state_dict: dict, cfg: ModelConfig, metrics: dict, step: int) -> dict:
    """What upstream's trainer saves as `model.pt`, with plain values where it pickles its own config class,
    so upstream's code loads it with `torch.load(...)["model_state_dict"]` and strict `load_state_dict`."""
    return {"model_state_dict": state_dict, "config": dataclasses.asdict(cfg), "metrics": dict(metrics),
            "step": int(step)}


def export_torch(weights: dict, path, fmt: str, *, cfg: ModelConfig, metrics: dict, step: int) -> None:
    """`weights` (name -> numpy array) at `path`: a state_dict ("plain") or upstream's model.pt ("upstream")."""
    state_dict = torch_state_dict(weights)
    save_torch(upstream_checkpoint(state_dict, cfg, metrics, step) if fmt == "upstream" else state_dict, path)
