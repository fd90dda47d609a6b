"""Upstream's state_dict layout and jax-nano's parameter tree, one to the other, in numpy (no PyTorch needed).

Upstream names every tensor per layer (`transformer_blocks.{i}.attention.q_proj.weight`, stored (out, in));
jax-nano stacks each block parameter along a leading layer axis and keeps Flax kernels (in, out). Both
directions only transpose and stack or unstack, so a round trip is bit-exact in any dtype. The PyTorch side of
the conversion (tensors to and from these arrays) is jax_nano/interop/convert.py.
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.errors import UserError
from configs.model import ModelConfig

_SPLIT_NAMES = ("q_proj", "k_proj", "v_proj", "w_o")


class ConversionError(UserError, ValueError):
    """A state_dict that does not fit the config; the message is one line."""


def _block_params(cfg: ModelConfig):
    """(upstream name inside a block, jax path under transformer_blocks, is a linear weight)."""
    if cfg.fused_qkvo:
        attn = [("attention.qkvo_proj", ("attention", "qkvo_proj"), True)]
    else:
        attn = [(f"attention.{n}.weight", ("attention", n, "kernel"), True) for n in _SPLIT_NAMES]
    attn += [(f"attention.{n}.weight", ("attention", n, "scale"), False) for n in ("q_norm", "k_norm")]
    mlp_names = ("gate_proj", "up_proj", "down_proj") if cfg.mlp == "swiglu" else ("up_proj", "down_proj")
    mlp = [(f"feed_forward.{n}.weight", ("feed_forward", n, "kernel"), True) for n in mlp_names]
    norms = [(f"{n}.weight", (n, "scale"), False) for n in ("norm1", "norm2")]
    return attn + mlp + norms


def _set(tree: dict, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path):
    for key in path:
        tree = tree[key]
    return tree


def upstream_shapes(cfg: ModelConfig) -> dict:
    """Every tensor of upstream's state_dict for `cfg` (but the tied `lm_head.weight`) and its shape."""
    d, kv, f = cfg.d_model, cfg.kv_dim, cfg.d_ff
    shapes = {"attention.qkvo_proj": (2 * d + 2 * kv, d), "attention.q_proj.weight": (d, d),
              "attention.k_proj.weight": (kv, d), "attention.v_proj.weight": (kv, d), "attention.w_o.weight": (d, d),
              "attention.q_norm.weight": (cfg.head_dim,), "attention.k_norm.weight": (cfg.head_dim,),
              "feed_forward.gate_proj.weight": (f, d), "feed_forward.up_proj.weight": (f, d),
              "feed_forward.down_proj.weight": (d, f), "norm1.weight": (d,), "norm2.weight": (d,)}
    out = {"token_embedding.weight": (cfg.vocab_size, d), "norm.weight": (d,)}
    for i in range(cfg.n_layers):
        for name, _, _ in _block_params(cfg):
            out[f"transformer_blocks.{i}.{name}"] = shapes[name]
    return out


def check_state_dict(state_dict: dict, cfg: ModelConfig) -> None:
    """One line for the first thing that keeps `state_dict` (name -> numpy array) from fitting `cfg`."""
    expected = upstream_shapes(cfg)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise ConversionError(
            f"state_dict lacks {missing[0]} ({len(missing)} tensors missing) for model {cfg.name!r} "
            f"(fused_qkvo={cfg.fused_qkvo}, mlp={cfg.mlp}); load it with the config it was saved from"
        )
    allowed = set(expected) | {"lm_head.weight"}
    unexpected = [k for k in state_dict if k not in allowed]
    if unexpected:
        raise ConversionError(f"state_dict has unexpected tensor {unexpected[0]} for model {cfg.name!r}; wrong preset?")
    for name, shape in expected.items():
        if tuple(state_dict[name].shape) != shape:
            raise ConversionError(
                f"tensor {name} has shape {tuple(state_dict[name].shape)}, model {cfg.name!r} needs {shape}"
            )
    head, embedding = state_dict.get("lm_head.weight"), state_dict["token_embedding.weight"]
    tied = head is None or head is embedding or (head.dtype == embedding.dtype and np.array_equal(head, embedding))
    if not tied:
        raise ConversionError("lm_head.weight differs from token_embedding.weight; the head must be tied")


def is_fused(state_dict: dict) -> bool:
    """Whether a state_dict holds upstream's fused `attention.qkvo_proj` instead of separate q/k/v/o."""
    return any(k.endswith(".attention.qkvo_proj") for k in state_dict)


def match_layout(state_dict: dict, cfg: ModelConfig) -> dict:
    """The same weights in `cfg`'s attention layout: (q|k|v|o) rows fused into `qkvo_proj` or split out of it.

    Both are slices of one matrix along the output axis, so either way is exact."""
    if is_fused(state_dict) == cfg.fused_qkvo:
        return state_dict
    check_state_dict(state_dict, cfg.replace(fused_qkvo=not cfg.fused_qkvo))
    d, kv = cfg.d_model, cfg.kv_dim
    out = {}
    for key, value in state_dict.items():
        prefix, _, name = key.rpartition(".attention.")
        if name == "qkvo_proj":
            for part, w in zip(_SPLIT_NAMES, np.split(value, [d, d + kv, d + 2 * kv], axis=0)):
                out[f"{prefix}.attention.{part}.weight"] = w.copy()
        elif cfg.fused_qkvo and name == "q_proj.weight":
            out[f"{prefix}.attention.qkvo_proj"] = np.concatenate(
                [state_dict[f"{prefix}.attention.{part}.weight"] for part in _SPLIT_NAMES], axis=0)
        elif not (cfg.fused_qkvo and name in {f"{part}.weight" for part in _SPLIT_NAMES}):
            out[key] = value
    return out


def from_upstream(state_dict: dict, cfg: ModelConfig) -> dict:
    """Upstream `state_dict` (name -> numpy array) -> nested dict in the layout of `nnx.state(GPT(cfg), nnx.Param)`."""
    check_state_dict(state_dict, cfg)
    params = {"token_embedding": {"embedding": state_dict["token_embedding.weight"]},
              "norm": {"scale": state_dict["norm.weight"]}}
    for name, path, is_linear in _block_params(cfg):
        layers = [state_dict[f"transformer_blocks.{i}.{name}"] for i in range(cfg.n_layers)]
        _set(params, ("transformer_blocks",) + path, np.stack([w.T if is_linear else w for w in layers]))
    return params


def to_upstream(params, cfg: ModelConfig) -> dict:
    """jax-nano parameters -> upstream `state_dict` of C-contiguous numpy arrays, with the tied `lm_head.weight`."""
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    embedding = np.asarray(params["token_embedding"]["embedding"])
    state_dict = {"token_embedding.weight": embedding, "lm_head.weight": embedding,
                  "norm.weight": np.asarray(params["norm"]["scale"])}
    for name, path, is_linear in _block_params(cfg):
        stacked = np.asarray(_get(params["transformer_blocks"], path))
        for i in range(cfg.n_layers):
            state_dict[f"transformer_blocks.{i}.{name}"] = np.ascontiguousarray(
                stacked[i].T if is_linear else stacked[i])
    return state_dict


def load_params(model: nnx.Module, params: dict) -> None:
    """Put a nested dict of arrays (e.g. from `from_upstream`) into a model, in place, keeping its dtypes."""
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(
        state, params, replace_fn=lambda old, new: old.replace(jnp.asarray(new, old.get_value().dtype))
    )
    nnx.update(model, state)
