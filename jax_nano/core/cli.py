"""What every command line of the project shares: the track flags and one-line errors instead of tracebacks."""

import argparse
import os
import sys
from pathlib import Path

from configs import variants
from configs.errors import UserError
from configs.model import ATTENTION_KINDS, PRESETS, REMAT_POLICIES, ConfigError
from configs.optim import ORTHO_DTYPES, ORTHOGONALIZERS, SCHEDULES
from configs.tracks import FRAMEWORKS, PRECISIONS, TORCH_COMPILE, Track, get_track
from configs.variants import VARIANTS
from jax_nano.core.extras import require_torch
from jax_nano.core.safe_paths import run_folder


def run_main(main, argv=None) -> int:
    try:
        return main(argv) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


OFF = "off"  # the type of a --no-X flag: it sets its boolean field to False
# flag -> (Track field, "optim.<field>" or "model.<field>", type, help)
OVERRIDES = {
    "framework": ("framework", str, f"one of {', '.join(FRAMEWORKS)} (default jax)"),
    "model": ("model", str, f"model preset: {', '.join(PRESETS)}"),
    "batch_size": ("batch_size", int, "sequences per step"),
    "seq_len": ("seq_len", int, "tokens per sequence"),
    "data": ("data", str, "token store directory, or 'sample' for the embedded sample"),
    "seed": ("seed", int, "data order and initial weights"),
    "precision": ("precision", str, f"one of {', '.join(PRECISIONS)}"),
    "tokens": ("target_tokens", int, "stop after this many tokens (token tracks)"),
    "target_loss": ("target_loss", float, "stop at the first step whose train loss <= this (loss tracks)"),
    "max_tokens": ("max_tokens", int, "a loss track gives up after this many tokens"),
    "max_steps": ("max_steps", int, "cap on the steps (also the schedule length)"),
    "eval_every": ("eval_every", int, "steps between milestone evaluations (0: only at the end)"),
    "eval_batches": ("eval_batches", int, "fixed validation batches per evaluation"),
    "warmup_steps": ("warmup_steps", int, "untimed warm-up steps before the clock starts"),
    "loss_chunk": ("loss_chunk", int, "JAX: cross-entropy over N positions at a time, no full logits (0: off)"),
    "remat": ("remat", str, f"JAX: what each block recomputes in the backward pass: {', '.join(REMAT_POLICIES)}"),
    "unroll_layers": ("unroll_layers", bool, "JAX: a Python loop over the layers instead of a scan (longer compile)"),
    "attention": ("attention", str, f"JAX attention kernel: {', '.join(ATTENTION_KINDS)} "
                  "(auto: cudnn on a GPU in bf16, grouped on a CPU, else xla)"),
    "torch_compile": ("torch_compile", str, f"PyTorch: torch.compile the model and Muon's orthogonalization: "
                      f"{', '.join(TORCH_COMPILE)} (auto: wherever it works, eager with a note where it cannot)"),
    "no_divergence_guard": ("divergence_guard", OFF, "do not stop a run whose loss stays at ln(vocab) or whose "
                            "weights blow up (jax_nano/core/guard.py)"),
    "checkpoint_every": ("checkpoint_every", int, "steps between checkpoints (0: only at the end)"),
    "keep_checkpoints": ("keep_checkpoints", int, "checkpoints kept on disk"),
    "muon_lr": ("optim.muon_lr", float, "Muon learning rate"),
    "adamw_lr": ("optim.adamw_lr", float, "AdamW learning rate"),
    "weight_decay": ("optim.weight_decay", float, "AdamW decoupled weight decay"),
    "grad_clip": ("optim.grad_clip", float, "global gradient-norm clip"),
    "schedule": ("optim.schedule", str, f"learning-rate schedule: {', '.join(SCHEDULES)}"),
    "warmup_ratio": ("optim.warmup_ratio", float, "fraction of steps spent warming up the learning rate"),
    "orthogonalizer": ("optim.orthogonalizer", str, f"Muon's: {', '.join(ORTHOGONALIZERS)}"),
    "ortho_steps": ("optim.ortho_steps", int, "orthogonalization iterations"),
    "ortho_dtype": ("optim.ortho_dtype", str, f"orthogonalization dtype: {', '.join(ORTHO_DTYPES)}"),
    # The variants (configs/variants.py), one flag each.
    **{v.field: (v.setting, v.kind, f"variant: {v.doc}") for v in VARIANTS.values()},
}


def add_flag(parser, flag: str, kind, text: str) -> None:
    """One override flag (default None: the track's own value); a bool field is a switch, e.g. --unroll-layers,
    and an OFF field one that turns it off, e.g. --no-divergence-guard."""
    if kind is OFF:
        parser.add_argument("--" + flag.replace("_", "-"), action="store_const", const=False, default=None, help=text)
    elif kind is bool:
        parser.add_argument("--" + flag.replace("_", "-"), action="store_true", default=None, help=text)
    else:
        parser.add_argument("--" + flag.replace("_", "-"), type=kind, default=None, help=text)


def add_track_flags(parser: argparse.ArgumentParser, skip=()) -> None:
    """One flag per overridable track field, and --variant NAME[=VALUE] (unless `skip` names it)."""
    for flag, (_, kind, text) in OVERRIDES.items():
        if flag not in skip:
            add_flag(parser, flag, kind, text)
    if "variant" not in skip:
        parser.add_argument("--variant", action="append", default=None, metavar="NAME[=VALUE]",
                            help=f"turn a variant on by name (repeatable): {', '.join(VARIANTS)} (docs/variants.md)")


def track_from_args(args) -> Track:
    """The track named by --track with every override flag the user passed."""
    if args.tokens is not None and args.target_loss is not None:
        raise ConfigError("--tokens and --target-loss conflict: a run stops on one rule; pass only one")
    if args.resume and args.init_from:
        raise ConfigError("--resume and --init-from conflict: a resumed run continues its own weights")
    track, optim, chosen = {}, {}, {}
    for spec in getattr(args, "variant", None) or ():
        chosen.update([variants.parse(spec)])
    for flag, (field, _, _) in OVERRIDES.items():
        value = getattr(args, flag)
        if value is not None and field.startswith("model."):
            chosen[VARIANTS[flag.replace("_", "-")]] = value
        elif value is not None:
            (optim if field.startswith("optim.") else track)[field.removeprefix("optim.")] = value
    if "target_tokens" in track:
        track["target_loss"] = None
    elif "target_loss" in track:
        track["target_tokens"] = None
    base = get_track(args.track)
    if optim:
        track["optim"] = base.optim.replace(**optim)
    return variants.apply(base.replace(**track), chosen)


def use_compilation_cache(path=None) -> None:
    """JAX's persistent compilation cache: `path`, else $JAX_NANO_CACHE, else ~/.cache/jax-nano/xla. A second
    run of the same program compiles from it in seconds. Call it before the first compilation."""
    import jax

    default = os.environ.get("JAX_NANO_CACHE", str(Path.home() / ".cache" / "jax-nano" / "xla"))
    jax.config.update("jax_compilation_cache_dir", str(path or default))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def add_weight_flags(parser: argparse.ArgumentParser, *, model_dir: bool = True, fresh: bool = True) -> None:
    """The flags naming one source of a model's weights: a run's newest checkpoint, a state_dict, a transformers
    folder (`model_dir`), or, where `fresh`, a newly initialised preset."""
    w = parser.add_argument_group("the weights (one of)")
    w.add_argument("--run", default=None, help="the latest checkpoint of runs/NAME")
    w.add_argument("--state-dict", default=None, metavar="PATH",
                   help="a PyTorch state_dict (ours or upstream's model.pt) or a .safetensors")
    if model_dir:
        w.add_argument("--model-dir", default=None, metavar="DIR", help="a transformers folder (scripts/export.py)")
    alone = "alone: a fresh model of this preset; " if fresh else ""
    w.add_argument("--model", default=None, metavar="PRESET",
                   help=f"{alone}with --state-dict: the preset its shapes must fit ({', '.join(PRESETS)}); "
                        "default: the model its shapes describe")
    w.add_argument("--runs-dir", default="runs", help="where runs keep their checkpoints (default runs)")


def check_weight_source(args) -> None:
    """One source of weights, as add_weight_flags(model_dir=True, fresh=True) describes them."""
    sources = [args.run, args.state_dict, args.model_dir]
    if args.run is not None:
        run_folder(args.runs_dir, args.run, "--run")
    if sum(x is not None for x in sources) > 1:
        raise ConfigError("--run, --state-dict and --model-dir conflict: pass one source of weights")
    if all(x is None for x in sources) and args.model is None:
        raise ConfigError("no weights: choose --run NAME, --state-dict PATH, --model-dir DIR or --model PRESET "
                          "(a fresh model)")
    if getattr(args, "framework", "jax") == "torch":
        require_torch("--framework torch")
    if args.state_dict is not None or args.model_dir is not None:
        require_torch("reading weights from --state-dict or --model-dir")
