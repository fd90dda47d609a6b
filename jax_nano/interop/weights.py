"""Trained weights in, from anywhere the project meets them: a run's orbax checkpoint, a PyTorch state_dict
(ours, or upstream's trainer's `model.pt`), or a fresh model of a preset.

Upstream's `model.pt` is `{"model_state_dict", "config", "metrics", "step"}` where `config` is a pickled
dataclass of upstream's own module `configs.llm_config`. It is read as untrusted data
(jax_nano/interop/torch_file.py): tensors, containers and plain values are rebuilt, bounded by the bytes the file
holds; any other class or function the file names becomes an inert `Opaque` record of its pickled state, so
nothing of upstream's code is imported or run. Only the tensors are used; the model's shape is inferred from
them, not from the pickled config.
"""

import dataclasses
import json
import zipfile
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from configs.errors import UserError
from configs.model import CUSTOM, PRESETS, ConfigError, ModelConfig, get_model_config
from jax_nano.checkpoint import Checkpoints
from jax_nano.core.checkpoints import saved_model
from jax_nano.core.extras import require_torch
from jax_nano.layout import (
    ConversionError,
    check_state_dict,
    from_upstream,
    is_fused,
    load_params,
    match_layout,
    to_upstream,
)
from jax_nano.model import GPT

COMPILE_PREFIX = "_orig_mod."  # what torch.compile puts in front of every parameter name


class WeightsError(UserError, ValueError):
    """Weights that cannot be read or do not fit; one line naming the file and the problem."""


def _first_line(e: Exception) -> str:
    """The exception's first sentence: enough to say what broke, on one line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0].split('. ')[0][:160]}" if text else type(e).__name__


def read_checkpoint(path) -> dict:
    """The whole file as plain values: `{"model_state_dict": {name: tensor}, "config", "metrics", "step"}`
    (the last three None for a bare state_dict). Names lose the `_orig_mod.` prefix of torch.compile."""
    path = Path(path)
    if path.is_dir():
        from jax_nano.interop.hf import read_folder

        state_dict, cfg = read_folder(path)
        return {"model_state_dict": state_dict, "config": dataclasses.asdict(cfg), "metrics": None, "step": None}
    if not path.is_file():
        raise WeightsError(f"{path}: no such file; pass a PyTorch state_dict or upstream's model.pt")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty; pass a PyTorch state_dict or upstream's model.pt")
    require_torch(f"reading {path}")
    import torch

    from jax_nano.interop import torch_file

    try:
        obj = torch_file.load(path)
    except torch_file.TorchFileError as e:
        raise WeightsError(f"{path}: {e}; pass a file written by torch.save (a state_dict or upstream's model.pt)"
                           ) from None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as e:  # a zip cut short is found while reading it
        raise WeightsError(f"{path}: is truncated or damaged ({_first_line(e)}); pass a file written by "
                           "torch.save (a state_dict or upstream's model.pt)") from None
    extras = {"config": None, "metrics": None, "step": None}
    if isinstance(obj, dict) and "model_state_dict" in obj:
        extras = {k: torch_file.plain(obj.get(k)) for k in extras}
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path}: holds no state_dict (a dict of tensors, or upstream's "
                           f"{{'model_state_dict': ...}}); pass a model checkpoint")
    state_dict = {k.removeprefix(COMPILE_PREFIX): v for k, v in obj.items()}
    _check_dtypes(state_dict, path)
    return {"model_state_dict": state_dict, **extras}


def _check_dtypes(state_dict: dict, where) -> None:
    from jax_nano.interop.torch_file import TorchFileError, check_dtypes

    try:
        check_dtypes(state_dict)
    except TorchFileError as e:
        raise WeightsError(f"{where}: {e}") from None


def _read_safetensors(path: Path) -> dict:
    """A state_dict in upstream's names saved as safetensors (scripts/export.py --format safetensors)."""
    from jax_nano.interop.hf import require

    require("safetensors")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state_dict = {name: f.get_tensor(name) for name in f.keys()}
        config = json.loads(meta["jax_nano_config"]) if "jax_nano_config" in meta else None
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: is truncated or damaged or not safetensors ({_first_line(e)})") from None
    if not state_dict:
        raise WeightsError(f"{path}: holds no tensors; pass a model's state_dict")
    _check_dtypes(state_dict, path)
    return {"model_state_dict": {k.removeprefix(COMPILE_PREFIX): v for k, v in state_dict.items()},
            "config": config, "metrics": None, "step": None}


def read_state_dict(path) -> dict:
    """Parameter name -> tensor from ours or upstream's file, without the `_orig_mod.` prefix."""
    return read_checkpoint(path)["model_state_dict"]


# The context of upstream's configs and of every 49152-token preset: what a file that names none gets.
DEFAULT_MAX_SEQ_LEN = 2048


def infer_config(state_dict: dict, where="state_dict", saved=None) -> ModelConfig:
    """The model the tensors describe, in the file's attention layout (fused or not): the preset with these shapes,
    or else a model named "custom" of exactly these shapes. The tensors fix every shape; the context length and
    RoPE base, which no tensor has, come from the file's saved config `saved` when it gives them."""
    try:
        vocab, d = state_dict["token_embedding.weight"].shape
        blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("transformer_blocks.")}
        head_dim = state_dict["transformer_blocks.0.attention.q_norm.weight"].shape[0]
        d_ff = state_dict["transformer_blocks.0.feed_forward.up_proj.weight"].shape[0]
        fused = "transformer_blocks.0.attention.qkvo_proj" in state_dict
        kv_dim = ((state_dict["transformer_blocks.0.attention.qkvo_proj"].shape[0] - 2 * d) // 2 if fused
                  else state_dict["transformer_blocks.0.attention.k_proj.weight"].shape[0])
    except (KeyError, ValueError, IndexError) as e:
        raise WeightsError(f"{where}: not a Blueberry model's state_dict ({_first_line(e)})") from None
    mlp = "swiglu" if "transformer_blocks.0.feed_forward.gate_proj.weight" in state_dict else "relu2"
    shapes = {"d_model": d, "n_layers": len(blocks), "n_heads": d // max(head_dim, 1),
              "n_kv_heads": kv_dim // max(head_dim, 1), "d_ff": d_ff, "vocab_size": vocab, "mlp": mlp}
    for cfg in PRESETS.values():
        if all(getattr(cfg, k) == v for k, v in shapes.items()):
            return cfg.replace(fused_qkvo=fused)
    saved = saved if isinstance(saved, dict) else {}
    extra = {"max_seq_len": DEFAULT_MAX_SEQ_LEN}
    for field, kind in (("max_seq_len", int), ("rope_base", float)):
        if isinstance(saved.get(field), (int, float)) and not isinstance(saved.get(field), bool):
            extra[field] = kind(saved[field])
    try:
        return ModelConfig(name=CUSTOM, fused_qkvo=fused, **shapes, **extra)
    except ConfigError as e:
        raise WeightsError(f"{where}: its tensors describe no model of this project ({e})") from None


def fit_state_dict(state_dict: dict, cfg: ModelConfig, where="state_dict") -> dict:
    """The state_dict (tensors) as numpy arrays in `cfg`'s attention layout, checked against its shapes; a one-line
    error otherwise."""
    from torch_ref.tensors import numpy_state_dict

    try:
        state_dict = match_layout(numpy_state_dict(state_dict), cfg)
        check_state_dict(state_dict, cfg)
    except ConversionError as e:
        raise WeightsError(f"{where}: {e}") from None
    # The tied head is one tensor; a file may leave out its second name, a strict PyTorch load wants it.
    return {"lm_head.weight": state_dict["token_embedding.weight"], **state_dict}


def _unwrap(tree):
    """nnx's saved {"value": array} leaves -> arrays (the layout of `nnx.to_pure_dict`)."""
    if isinstance(tree, dict):
        return tree["value"] if set(tree) == {"value"} else {k: _unwrap(v) for k, v in tree.items()}
    return tree


def restore_params(run_dir) -> tuple[dict, dict]:
    """(params as a nested dict of numpy arrays, the checkpoint's fingerprint) of a run's latest orbax
    checkpoint (runs/NAME/checkpoints/STEP/{state,meta}), once its checksums verify; the optimizer state is not
    read."""
    ckpt_dir = Path(run_dir).absolute() / "checkpoints"
    if not ckpt_dir.is_dir():
        raise WeightsError(f"{run_dir}: no such run (no checkpoints directory); pass the name of a run trained "
                           "here (--run-name), or --runs-dir where it lives")
    # The run's newest checkpoint, verified against the checksums written with it before a byte is used.
    checkpoints = Checkpoints(run_dir, keep=1)
    steps = checkpoints.steps()
    if not steps:
        raise WeightsError(f"{run_dir}: the run has no finished checkpoint yet")
    step = steps[-1]
    wrong = checkpoints.problem(step)
    if wrong:
        raise WeightsError(f"{run_dir}: its newest checkpoint (step {step}) fails verification: {wrong}")
    where = ckpt_dir / str(step)
    # Read through the manager, as orbax wrote it: the step's _CHECKPOINT_METADATA names each item's handler, and
    # a checkpointer pointed at the `state` item alone warns that the item has no such file of its own.
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    try:
        with ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(create=False),
                                   item_handlers=handlers) as mgr:
            metadata = mgr.item_metadata(step)["state"]
            item = {"params": getattr(metadata, "tree", metadata)["params"]}
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
            restored = mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
                meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for a damaged directory
        raise WeightsError(f"{where}: unreadable checkpoint ({_first_line(e)})") from None
    tree, fingerprint = restored["state"], restored["meta"]["fingerprint"]
    return _unwrap(tree["params"]), fingerprint


def load_weights(*, run=None, state_dict=None, model_dir=None, preset=None, runs_dir="runs"):
    """(weights, ModelConfig): the weights (upstream's names, numpy arrays in the config's attention layout, with
    the tied `lm_head.weight`) of the latest checkpoint of runs_dir/`run`, of a weights file (`state_dict`: a
    PyTorch state_dict, upstream's model.pt or a .safetensors) or of a transformers folder (`model_dir`, as
    scripts/export.py writes it); None for a fresh model of `preset`. A file's model is the one its tensors
    describe (a preset when one has these shapes) unless `preset` names one."""
    sources = sum(x is not None for x in (run, state_dict, model_dir))
    if sources > 1 or (sources == 0 and preset is None):
        raise WeightsError("choose the weights: a run, a state_dict file, a model folder, or a preset for a fresh "
                           "model")
    if model_dir is not None and not Path(model_dir).is_dir():
        raise WeightsError(f"{model_dir}: no such folder; pass a folder written by scripts/export.py --format hf")
    source = state_dict if state_dict is not None else model_dir
    if run is not None:
        params, fingerprint = restore_params(Path(runs_dir) / run)
        saved = saved_model(fingerprint)  # a run of a model no preset has is known only by its settings
        cfg = get_model_config(preset) if preset else saved or get_model_config(fingerprint["model"])
        model = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
        _check_shapes(params, nnx.to_pure_dict(nnx.state(model, nnx.Param)), run, cfg)
        return to_upstream(params, cfg), cfg
    if source is None:
        return None, get_model_config(preset)
    checkpoint = read_checkpoint(source)
    tensors = checkpoint["model_state_dict"]
    if preset is None:
        cfg = infer_config(tensors, where=source, saved=checkpoint["config"])
    else:
        cfg = get_model_config(preset).replace(fused_qkvo=is_fused(tensors))
    return fit_state_dict(tensors, cfg, where=source), cfg


def load_model(*, run=None, state_dict=None, model_dir=None, preset=None, runs_dir="runs", compute_dtype="float32"):
    """(GPT, ModelConfig) of the weights `load_weights` finds (the same arguments), or fresh of `preset`.
    Parameters are float32 whatever they were saved in; `compute_dtype` is the matmul dtype."""
    weights, cfg = load_weights(run=run, state_dict=state_dict, model_dir=model_dir, preset=preset,
                                runs_dir=runs_dir)
    cfg = cfg.replace(compute_dtype=compute_dtype, param_dtype="float32", loss_chunk=0)
    if weights is None:
        return GPT(cfg, rngs=nnx.Rngs(0)), cfg
    # Shapes only: the loaded weights replace every parameter, so none is initialized.
    model = nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))
    load_params(model, from_upstream(weights, cfg))
    return model, cfg


def _check_shapes(params: dict, expected: dict, where, cfg: ModelConfig) -> None:
    def shapes(tree):
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        return {jax.tree_util.keystr(path): tuple(x.shape) for path, x in flat}

    got, want = shapes(params), shapes(expected)
    for name in sorted(set(got) | set(want)):
        if got.get(name) != want.get(name):
            raise WeightsError(f"{where}: parameter {name} has shape {got.get(name)}, model {cfg.name!r} needs "
                               f"{want.get(name)}; choose the preset the weights were trained with")

