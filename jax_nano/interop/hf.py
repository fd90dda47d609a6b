"""Hugging Face transformers' layout to and from upstream's state_dict, exactly, and a transformers folder read back.

Both families are stock transformers classes, no custom code: the 151M family (SwiGLU) is `Qwen3ForCausalLM`, the
88M family (squared ReLU, no gate) is `ApertusForCausalLM` with `hidden_act="relu2"`. Both have RMSNorm on q and k
per head before RoPE, GQA, pre-norm blocks, no biases. Three transformations make the function the same:
- RoPE: this model turns interleaved pairs (0,1), (2,3), ...; transformers turns halves (i, i + head_dim/2).
  The rows of each q and k head (and the q/k norm weights) are reordered evens first, then odds; attention
  scores are sums over the head dimension, so the order does not change them.
- Embedding: the input embedding is scaled by sqrt(d_model) and tied to the head. The export carries an untied
  input embedding already multiplied by sqrt(d_model) (the same float32 product the model computes) and the head
  as it is (`tie_word_embeddings=false`); the import takes the head and checks the embedding is its product.
- eps: float32 machine epsilon, what PyTorch's RMSNorm uses when given none.
The fused (q|k|v|o) matrix of upstream's newest 88M design is split into the four projections (exact slices).
Only numpy here; safetensors is imported when a folder is read.
"""

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from configs.errors import UserError
from configs.model import CUSTOM, ConfigError, ModelConfig
from jax_nano.layout import ConversionError, check_state_dict, is_fused, match_layout

EPS = float(np.finfo(np.float32).eps)
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


class HFError(UserError, ValueError):
    """A transformers folder this project cannot load; one line naming the folder and the first mismatch."""


def require(*packages: str) -> None:
    """One line naming the first of `packages` that is not installed, and the extra that brings it."""
    for package in packages:
        if importlib.util.find_spec(package) is None:
            raise HFError(f"{package} is not installed; install the hf extra: pip install -c constraints.txt "
                          "-e '.[hf]'")


@dataclass(frozen=True)
class Family:
    mlp: str
    architecture: str
    model_type: str
    hidden_act: str
    norms: tuple[str, str]  # the block's two pre-norms, before attention and before the MLP
    mlp_names: tuple[str, ...]


FAMILIES = {
    "swiglu": Family("swiglu", "Qwen3ForCausalLM", "qwen3", "silu", ("input_layernorm", "post_attention_layernorm"),
                     ("gate_proj", "up_proj", "down_proj")),
    "relu2": Family("relu2", "ApertusForCausalLM", "apertus", "relu2", ("attention_layernorm", "feedforward_layernorm"),
                    ("up_proj", "down_proj")),
}
_BY_ARCHITECTURE = {f.architecture: f for f in FAMILIES.values()}


def rope_order(head_dim: int) -> np.ndarray:
    """Row order inside a head from interleaved pairs to halves: evens, then odds."""
    return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])


def _per_head(w, n_heads: int, head_dim: int, order) -> np.ndarray:
    return np.ascontiguousarray(w.reshape(n_heads, head_dim, *w.shape[1:])[:, order].reshape(w.shape))


def embedding_scale(cfg: ModelConfig, dtype) -> np.ndarray:
    """sqrt(d_model) in the embedding's dtype, as the model multiplies it."""
    return np.asarray(math.sqrt(cfg.d_model), dtype)


def hf_config(cfg: ModelConfig) -> dict:
    """The keyword arguments of the transformers config class of `cfg`'s family."""
    family = FAMILIES[cfg.mlp]
    kwargs = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
                  num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
                  hidden_act=family.hidden_act, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=EPS,
                  rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_base)},
                  tie_word_embeddings=False, attention_bias=False, attention_dropout=0.0,
                  initializer_range=cfg.init_std, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family.model_type == "qwen3":
        kwargs.update(head_dim=cfg.head_dim, use_sliding_window=False)
    return kwargs


def to_hf(state_dict: dict, cfg: ModelConfig) -> dict:
    """Upstream state_dict (name -> numpy array, either attention layout) -> transformers' names and layout."""
    check_state_dict(state_dict, cfg.replace(fused_qkvo=is_fused(state_dict)))
    sd = match_layout(state_dict, cfg.replace(fused_qkvo=False))
    family, hd, order = FAMILIES[cfg.mlp], cfg.head_dim, rope_order(cfg.head_dim)
    embedding = sd["token_embedding.weight"]
    out = {"model.embed_tokens.weight": embedding * embedding_scale(cfg, embedding.dtype),
           "lm_head.weight": embedding, "model.norm.weight": sd["norm.weight"]}
    for i in range(cfg.n_layers):
        up, hf = f"transformer_blocks.{i}.", f"model.layers.{i}."
        attn = {"q_proj": _per_head(sd[up + "attention.q_proj.weight"], cfg.n_heads, hd, order),
                "k_proj": _per_head(sd[up + "attention.k_proj.weight"], cfg.n_kv_heads, hd, order),
                "v_proj": sd[up + "attention.v_proj.weight"], "o_proj": sd[up + "attention.w_o.weight"],
                "q_norm": sd[up + "attention.q_norm.weight"][order],
                "k_norm": sd[up + "attention.k_norm.weight"][order]}
        out.update({f"{hf}self_attn.{name}.weight": w for name, w in attn.items()})
        out.update({f"{hf}mlp.{name}.weight": sd[f"{up}feed_forward.{name}.weight"] for name in family.mlp_names})
        for norm, ours in zip(family.norms, ("norm1", "norm2")):
            out[f"{hf}{norm}.weight"] = sd[f"{up}{ours}.weight"]
    return out


def hf_shapes(cfg: ModelConfig) -> dict:
    """Every tensor of the transformers model of `cfg` and its shape."""
    d, kv, f, hd = cfg.d_model, cfg.kv_dim, cfg.d_ff, cfg.head_dim
    family = FAMILIES[cfg.mlp]
    block = {"self_attn.q_proj": (d, d), "self_attn.k_proj": (kv, d), "self_attn.v_proj": (kv, d),
             "self_attn.o_proj": (d, d), "self_attn.q_norm": (hd,), "self_attn.k_norm": (hd,),
             "mlp.gate_proj": (f, d), "mlp.up_proj": (f, d), "mlp.down_proj": (d, f)}
    names = [f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")]
    names += [f"mlp.{n}" for n in family.mlp_names]
    out = {"model.embed_tokens.weight": (cfg.vocab_size, d), "lm_head.weight": (cfg.vocab_size, d),
           "model.norm.weight": (d,)}
    for i in range(cfg.n_layers):
        out.update({f"model.layers.{i}.{n}.weight": block[n] for n in names})
        out.update({f"model.layers.{i}.{n}.weight": (d,) for n in family.norms})
    return out


def from_hf(hf: dict, cfg: ModelConfig, where="folder") -> dict:
    """transformers' tensors (name -> numpy array) -> upstream state_dict (separate q/k/v/o), the inverse of `to_hf`
    bit for bit. One line for the first tensor that is missing, extra, of another shape, or an input embedding
    that is not the head times sqrt(d_model)."""
    expected = hf_shapes(cfg)
    for name, shape in expected.items():
        if name not in hf:
            raise HFError(f"{where}: lacks tensor {name}; export the folder with scripts/export.py --format hf")
        if tuple(hf[name].shape) != tuple(shape):
            raise HFError(f"{where}: tensor {name} has shape {tuple(hf[name].shape)}, config.json's model needs "
                          f"{tuple(shape)}")
    extra = sorted(set(hf) - set(expected))
    if extra:
        raise HFError(f"{where}: has tensor {extra[0]}, which this architecture does not have")
    family, hd = FAMILIES[cfg.mlp], cfg.head_dim
    undo = np.argsort(rope_order(hd))
    head = hf["lm_head.weight"]
    embed = hf["model.embed_tokens.weight"]
    product = head * embedding_scale(cfg, head.dtype)
    # Exact for a float32 export; a folder cast to another dtype rounded each of the two once.
    tol = 4 * float(np.finfo(head.dtype).eps) if np.issubdtype(head.dtype, np.floating) else 0.0
    if embed.dtype != head.dtype or not np.allclose(embed.astype(np.float32), product.astype(np.float32),
                                                    rtol=tol, atol=0.0):
        raise HFError(f"{where}: model.embed_tokens.weight is not lm_head.weight * sqrt(hidden_size), as in a "
                      "jax-nano export (the model's tied embedding is scaled by sqrt(d_model)); a model trained "
                      "elsewhere cannot be loaded exactly")
    sd = {"token_embedding.weight": head, "norm.weight": hf["model.norm.weight"]}
    for i in range(cfg.n_layers):
        up, at = f"transformer_blocks.{i}.", f"model.layers.{i}."
        sd[up + "attention.q_proj.weight"] = _per_head(hf[at + "self_attn.q_proj.weight"], cfg.n_heads, hd, undo)
        sd[up + "attention.k_proj.weight"] = _per_head(hf[at + "self_attn.k_proj.weight"], cfg.n_kv_heads, hd, undo)
        sd[up + "attention.v_proj.weight"] = hf[at + "self_attn.v_proj.weight"]
        sd[up + "attention.w_o.weight"] = hf[at + "self_attn.o_proj.weight"]
        sd[up + "attention.q_norm.weight"] = hf[at + "self_attn.q_norm.weight"][undo]
        sd[up + "attention.k_norm.weight"] = hf[at + "self_attn.k_norm.weight"][undo]
        for name in family.mlp_names:
            sd[f"{up}feed_forward.{name}.weight"] = hf[f"{at}mlp.{name}.weight"]
        for norm, ours in zip(family.norms, ("norm1", "norm2")):
            sd[f"{up}{ours}.weight"] = hf[f"{at}{norm}.weight"]
    return sd


MAX_JSON_BYTES = 16 << 20  # a config or shard index is a few KB


def _read_json(path: Path, where) -> dict:
    if path.is_symlink() or (path.exists() and (not path.is_file() or path.stat().st_size > MAX_JSON_BYTES)):
        raise HFError(f"{where}: {path.name} is not a regular file of at most {MAX_JSON_BYTES:,} bytes (a symlink, "
                      "device or oversized file is not read)")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HFError(f"{where}: has no {path.name}; pass a folder written by scripts/export.py --format hf "
                      "(or another transformers model folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise HFError(f"{where}: {path.name} is not readable JSON ({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise HFError(f"{where}: {path.name} holds no JSON object")
    return obj


def config_from_hf(config: dict, where="folder", name=CUSTOM) -> ModelConfig:
    """The ModelConfig of a transformers config.json, or one line naming its first field this model lacks."""
    architectures = config.get("architectures") or [None]
    family = _BY_ARCHITECTURE.get(architectures[0])
    if family is None:
        raise HFError(f"{where}: architecture {architectures[0]!r} is not one this project loads; it loads "
                      f"{' and '.join(_BY_ARCHITECTURE)} folders as scripts/export.py writes them")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = rope.get("rope_theta", config.get("rope_theta"))
    d, heads = config.get("hidden_size"), config.get("num_attention_heads")
    wanted = [("hidden_act", config.get("hidden_act"), family.hidden_act),
              ("rms_norm_eps", config.get("rms_norm_eps"), EPS),
              ("tie_word_embeddings", config.get("tie_word_embeddings", True), False),
              ("attention_bias", config.get("attention_bias", False), False),
              ("mlp_bias", config.get("mlp_bias", False), False),
              ("use_sliding_window", config.get("use_sliding_window", False), False),
              ("rope type", rope.get("rope_type", rope.get("type", "default")), "default")]
    if isinstance(d, int) and isinstance(heads, int) and heads > 0:
        wanted.append(("head_dim", config.get("head_dim", d // heads), d // heads))
    for field, got, want in wanted:
        if got != want:
            raise HFError(f"{where}: config.json has {field}={got!r}, this project's {family.architecture} "
                          f"needs {want!r}")
    fields = {"d_model": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
              "n_kv_heads": "num_key_value_heads", "d_ff": "intermediate_size", "vocab_size": "vocab_size",
              "max_seq_len": "max_position_embeddings"}
    values = {ours: config.get(theirs) for ours, theirs in fields.items()}
    for ours, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise HFError(f"{where}: config.json's {fields[ours]} is {value!r}, not a whole number")
    if not isinstance(theta, (int, float)):
        raise HFError(f"{where}: config.json gives no rope_theta")
    try:
        return ModelConfig(name=name, mlp=family.mlp, rope_base=float(theta), **values)
    except ConfigError as e:
        raise HFError(f"{where}: config.json describes no model of this project ({e})") from None


def shard_files(folder: Path, where) -> list[Path]:
    """The files of a sharded folder's `model.safetensors.index.json`: its weight_map must map tensor names to
    plain file names (no folder, no `..`) of regular files in the folder itself, never reached through a symlink."""
    weight_map = _read_json(folder / INDEX, where).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise HFError(f"{where}: {INDEX}'s weight_map is not a mapping of tensor names to file names; export the "
                      "folder again with scripts/export.py --format hf")
    files = sorted(set(weight_map.values()))
    for name in files:
        if Path(name).name != name or name in (".", "..") or "\\" in name or "\0" in name:
            raise HFError(f"{where}: {INDEX} names {name!r:.100}, not a file of the folder itself; a model folder "
                          "may only name its own files")
    return [folder / name for name in files]


def read_tensors(folder: Path, where) -> dict:
    """name -> torch tensor of a folder's `model.safetensors` (or its shards)."""
    require("safetensors")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from jax_nano.interop.torch_file import TorchFileError, check_dtypes

    files = [folder / WEIGHTS]
    if not files[0].is_file() and (folder / INDEX).is_file():
        files = shard_files(folder, where)
    tensors = {}
    for path in files:
        if path.is_symlink() or not path.is_file():
            raise HFError(f"{where}: has no {path.name} (or it is a symlink, which is not followed); pass a folder "
                          "written by scripts/export.py --format hf")
        try:
            tensors.update(load_file(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise HFError(f"{where}: {path.name} is damaged or not safetensors ({str(e)[:120]})") from None
    try:
        check_dtypes(tensors)
    except TorchFileError as e:
        raise HFError(f"{where}: {e}") from None
    return tensors


def read_folder(folder, preset: ModelConfig | None = None) -> tuple[dict, ModelConfig]:
    """(upstream state_dict of torch tensors, ModelConfig) of a transformers folder of a matching architecture.
    The shapes come from config.json; `preset` (if given) must have them."""
    from torch_ref.tensors import numpy_state_dict, torch_state_dict

    folder = Path(folder)
    where = str(folder)
    if not folder.is_dir():
        raise HFError(f"{where}: no such folder; pass a folder written by scripts/export.py --format hf")
    cfg = config_from_hf(_read_json(folder / "config.json", where), where)
    if preset is not None:
        for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab_size", "mlp"):
            if getattr(preset, field) != getattr(cfg, field):
                raise HFError(f"{where}: its model has {field}={getattr(cfg, field)!r}, preset {preset.name!r} has "
                              f"{getattr(preset, field)!r}; leave out the preset or choose the matching one")
        cfg = preset.replace(fused_qkvo=False)
    sd = from_hf(numpy_state_dict(read_tensors(folder, where)), cfg, where)
    try:
        check_state_dict(sd, cfg)
    except ConversionError as e:
        raise HFError(f"{where}: {e}") from None
    return torch_state_dict(sd), cfg
