"""Trained weights out as PyTorch files: a bare state_dict, or what upstream's trainer saves as `model.pt`.

Needs PyTorch only (no JAX): the weights come as numpy arrays in upstream's layout from either trainer.

Upstream's `model.pt` is written for the upstream design the model belongs to: the 151M family (SwiGLU) in the
separate q_proj/k_proj/v_proj/w_o layout of upstream's SwiGLU revisions (33bfcca, 2025-12-18, up to 2158181),
the 88M family (squared ReLU) in the fused `attention.qkvo_proj` layout of upstream's revisions since 1d595e6
(2025-12-28; the current 4ba324f). Its `config` is pickled as upstream's own `configs.llm_config.BlueberryConfig`
with the model's fields, as upstream's trainer pickles it, so upstream's loaders get the object they expect and
no class of this project is named in the file.
"""

import os
import pickle
import secrets
import types
from pathlib import Path

import torch

from configs.model import ModelConfig
from jax_nano.layout import match_layout
from torch_ref.tensors import torch_state_dict

UPSTREAM_LAYOUTS = {"separate": False, "fused": True}
UPSTREAM_CONFIG_CLASS = b"configs.llm_config\nBlueberryConfig\n"


def upstream_layout(cfg: ModelConfig) -> str:
    """The attention layout of the upstream design of `cfg`'s family (the module docstring)."""
    return "fused" if cfg.mlp == "relu2" else "separate"


class UpstreamConfig:
    """Pickles as an instance of upstream's `configs.llm_config.BlueberryConfig` whose fields are `fields`; fields it
    does not set keep the class's defaults when upstream loads it."""

    def __init__(self, fields: dict):
        self.fields = fields


def upstream_config_fields(cfg: ModelConfig) -> dict:
    """What upstream's `MinimalLLM(config)` and its benchmark loader read from the config."""
    return {"d_model": cfg.d_model, "n_heads": cfg.n_heads, "n_layers": cfg.n_layers, "d_ff": cfg.d_ff,
            "n_kv_heads": cfg.n_kv_heads, "max_seq_len": cfg.max_seq_len, "vocab_size": cfg.vocab_size,
            "dropout": 0.0, "d_k": cfg.head_dim}


def _save_upstream_config(pickler, obj: UpstreamConfig) -> None:
    # The opcodes pickle writes for a dataclass instance (protocol 2): the class, NEWOBJ, then its __dict__.
    pickler.write(pickle.GLOBAL + UPSTREAM_CONFIG_CLASS + pickle.EMPTY_TUPLE + pickle.NEWOBJ)
    pickler.memoize(obj)
    pickler.save(obj.fields)
    pickler.write(pickle.BUILD)


class _UpstreamPickler(pickle._Pickler):
    dispatch = {**pickle._Pickler.dispatch, UpstreamConfig: _save_upstream_config}


_UPSTREAM_PICKLE = types.SimpleNamespace(__name__="upstream_pickle", Pickler=_UpstreamPickler)


def upstream_checkpoint(state_dict: dict, cfg: ModelConfig, metrics: dict, step: int) -> dict:
    """What upstream's trainer saves as `model.pt`: upstream loads it with `torch.load(..., weights_only=False)`
    and a strict `load_state_dict(ckpt["model_state_dict"])`, and builds its model from `ckpt["config"]`."""
    return {"model_state_dict": state_dict, "config": UpstreamConfig(upstream_config_fields(cfg)),
            "metrics": dict(metrics), "step": int(step)}


def _save(obj, path: Path, pickle_module=pickle) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        torch.save(obj, tmp, pickle_module=pickle_module)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_torch(weights: dict, path, fmt: str, *, cfg: ModelConfig, metrics: dict, step: int,
                 layout: str | None = None) -> None:
    """`weights` (name -> numpy array) at `path`: a state_dict ("plain") or upstream's model.pt ("upstream") in
    `layout` ("separate" or "fused"; default the one of the model's upstream design)."""
    if fmt != "upstream":
        _save(torch_state_dict(weights), Path(path))
        return
    fused = UPSTREAM_LAYOUTS[layout or upstream_layout(cfg)]
    weights = match_layout(weights, cfg.replace(fused_qkvo=fused))
    if "lm_head.weight" not in weights:
        weights = {**weights, "lm_head.weight": weights["token_embedding.weight"]}
    _save(upstream_checkpoint(torch_state_dict(weights), cfg, metrics, step), Path(path), _UPSTREAM_PICKLE)
