"""What a train step keeps for its backward pass, computed from shapes alone (nothing is allocated, any device).

`jax._src.ad_checkpoint.saved_residuals` lists every array the backward pass of the loss reads that the forward
pass made: the activations held from the forward pass until the gradients are done. They are split into one
layer's share (what the layer scan stacks, divided by the depth) and the rest (embedding, final norm, loss).
(B, heads, T, T) attention scores are counted apart; no policy keeps them (XLA's attention recomputes them, cuDNN's
fused kernel never stores them). From them, a rough budget of a train step's device memory; the compiler's own
plan for a card is scripts/plan.py.

    python scripts/memory.py                    # the 151M loss track and the 88M token track, every remat policy
    python scripts/memory.py --track 4.5loss --remat full --loss-chunk 1024
"""

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
from flax import nnx
from jax._src import source_info_util
from jax._src.ad_checkpoint import saved_residuals

from configs.model import ModelConfig, get_model_config
from configs.tracks import Track, get_track
from jax_nano import dense
from jax_nano.core.cli import OVERRIDES, add_flag, run_main
from jax_nano.model import GPT, block_step, loss_fn, rope_tables
from jax_nano.optim import make_optimizer
from jax_nano.train import model_config_for

MIB, GIB = 2**20, 2**30
ROOT = str(Path(__file__).resolve().parent.parent) + "/"
DEFAULT_TRACKS = ("4.5loss", "8M")
# Name the model's line that made an array, not the Linear layer (Flax's, or jax_nano/dense.py's) inside it.
source_info_util.register_exclusion(str(Path(flax.__file__).resolve().parent))
source_info_util.register_exclusion(dense.__file__)
FLAGS = ("model", "batch_size", "seq_len", "precision", "loss_chunk", "remat", "attention")


@dataclass(frozen=True)
class Residual:
    nbytes: int
    array: str  # dtype[shape]
    source: str


@dataclass(frozen=True)
class Activations:
    """What the backward pass keeps: one layer's share, the rest, and XLA attention's T x T arrays apart."""

    cfg: ModelConfig
    batch_size: int
    seq_len: int
    per_layer: tuple[Residual, ...]
    outside: tuple[Residual, ...]
    scores_per_layer: int
    scores_outside: int

    @property
    def per_layer_bytes(self) -> int:
        return sum(r.nbytes for r in self.per_layer)

    @property
    def outside_bytes(self) -> int:
        return sum(r.nbytes for r in self.outside)

    @property
    def layers_bytes(self) -> int:
        return self.cfg.n_layers * self.per_layer_bytes

    @property
    def total_bytes(self) -> int:
        return self.layers_bytes + self.outside_bytes


def _short(source: str) -> str:
    return source.replace(ROOT, "").split("site-packages/")[-1]


def _is_scores(shape, seq_len: int) -> bool:
    """(B, heads..., T, T) in any order: attention scores or probabilities (q and k arrays hold T once)."""
    return len(shape) >= 4 and sum(d == seq_len for d in shape) >= 2


def _abstract_model(cfg: ModelConfig) -> GPT:
    return nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0)))


def saved_activations(cfg: ModelConfig, batch_size: int, seq_len: int) -> Activations:
    """The loss's saved residuals, as a train step differentiates it (always the scanned layer stack: unrolling
    keeps the same arrays)."""
    cfg = cfg.replace(unroll_layers=False)
    graphdef, params = nnx.split(_abstract_model(cfg))
    ids_BT = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    found = saved_residuals(lambda p, ids: loss_fn(nnx.merge(graphdef, p), ids), params, ids_BT)
    per_layer, outside, scores = [], [], {"layer": 0, "outside": 0}
    carry = (batch_size, seq_len, cfg.d_model)  # the scan's final output: the last layer's, kept once
    for aval, source in found:
        if source.startswith("from the argument"):
            continue  # the parameters and the batch: held anyway
        in_scan = source.startswith("output of scan") and aval.shape[:1] == (cfg.n_layers,) and aval.shape != carry
        shape = aval.shape[1:] if in_scan else aval.shape
        nbytes = math.prod(shape) * aval.dtype.itemsize
        if _is_scores(shape, seq_len):
            scores["layer" if in_scan else "outside"] += nbytes
        else:
            (per_layer if in_scan else outside).append(Residual(nbytes, aval.str_short(), _short(source)))
    return Activations(cfg, batch_size, seq_len, tuple(per_layer), tuple(outside), scores["layer"], scores["outside"])


def layer_sources(cfg: ModelConfig, batch_size: int, seq_len: int) -> tuple[Residual, ...]:
    """One layer traced alone, as the scan runs it: the same arrays as Activations.per_layer, with the source
    line that made each (the scan's own list names only the scan)."""
    block_graph, stacked = nnx.split(_abstract_model(cfg).transformer_blocks)
    layer = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), stacked)
    cos_TP, sin_TP = rope_tables(seq_len, cfg.head_dim, cfg.rope_base)
    x_BTD = jax.ShapeDtypeStruct((batch_size, seq_len, cfg.d_model), jnp.dtype(cfg.param_dtype))
    step = block_step(block_graph, cfg)
    found = saved_residuals(step, layer, x_BTD, cos_TP, sin_TP)
    kept = []
    for aval, source in found:
        if source.startswith("from the argument") and aval.shape != x_BTD.shape or _is_scores(aval.shape, seq_len):
            continue  # the layer's weights and the RoPE tables: held anyway
        if source.startswith("from the argument"):
            source = "the layer's input (the residual stream)"
        kept.append(Residual(aval.size * aval.dtype.itemsize, aval.str_short(), _short(source)))
    return tuple(kept)


def _tree_bytes(tree) -> int:
    return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def step_budget(track: Track, cfg: ModelConfig, kept: Activations, kept_without_remat: Activations,
                on_gpu_attention: str) -> dict:
    """A rough device-memory budget of one train step, in bytes. Not counted: XLA's workspace and fragmentation."""
    params = nnx.to_pure_dict(nnx.state(_abstract_model(cfg), nnx.Param))
    opt_state = jax.eval_shape(make_optimizer(track.optim, track.total_steps).init, params)
    vocab, itemsize = cfg.vocab_size, jnp.dtype(cfg.compute_dtype).itemsize
    positions = cfg.loss_chunk or track.batch_size * (track.seq_len - 1)
    # The loss's backward pass: the logits recomputed in float32 and their gradient in the compute dtype (with
    # chunks, also the chunk's forward logits and its float32 gradient).
    logits = positions * vocab * ((4 + itemsize) * (2 if cfg.loss_chunk else 1))
    scores = (kept.scores_per_layer * cfg.n_layers + kept.scores_outside) if on_gpu_attention == "xla" else 0
    return {
        "parameters": _tree_bytes(params),
        "optimizer state": _tree_bytes(opt_state),
        "gradients": _tree_bytes(params),
        "activations": kept.total_bytes + scores,
        "loss logits (backward)": logits,
        # Under remat, one layer's backward recomputes what the policy dropped, one layer at a time.
        "one layer recomputed": kept_without_remat.per_layer_bytes - kept.per_layer_bytes,
    }


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def _gib(n: int) -> str:
    return f"{n / GIB:,.2f} GiB"


def _gpu_attention(cfg: ModelConfig) -> str:
    """The kernel `attention: auto` picks on a GPU (model.attention_kernel), whatever this machine is."""
    if cfg.attention != "auto":
        return cfg.attention
    return "xla" if cfg.compute_dtype == "float32" else "cudnn"


def describe(track: Track, card_gib: float, top: int) -> str:
    cfg = model_config_for(track, get_model_config(track.model))
    policies = {remat: saved_activations(cfg.replace(remat=remat), track.batch_size, track.seq_len)
                for remat in ("none", "dots", "full")}
    kept = policies[cfg.remat]
    gpu_attention = _gpu_attention(cfg)
    lines = [f"{cfg.name}, {track.batch_size} x {track.seq_len} tokens, precision {track.precision}, "
             f"remat {cfg.remat}, loss chunk {cfg.loss_chunk or 'off'}",
             f"activations kept for the backward pass (computed from shapes on {jax.default_backend()}; "
             "nothing allocated):",
             f"  {'remat':<6} {'per layer':>11} {f'x {cfg.n_layers} layers':>13} {'outside layers':>15} "
             f"{'total':>10}   {'XLA attention T x T per layer':>29}"]
    for remat, act in policies.items():
        lines.append(f"  {remat:<6} {_mib(act.per_layer_bytes):>11} {_gib(act.layers_bytes):>13} "
                     f"{_gib(act.outside_bytes):>15} {_gib(act.total_bytes):>10}   {_mib(act.scores_per_layer):>29}")
    lines.append("  XLA attention's T x T scores/probabilities are not in the totals: cuDNN's fused attention keeps "
                 f"none. On a GPU this run's attention is {gpu_attention}"
                 + (", so the estimate below counts them." if gpu_attention == "xla" else "."))
    sources = sorted(layer_sources(cfg, track.batch_size, track.seq_len), key=lambda r: -r.nbytes)
    lines.append(f"largest kept per layer (remat {cfg.remat}; one layer traced alone: "
                 f"{_mib(sum(r.nbytes for r in sources))}):")
    lines += [f"  {_mib(r.nbytes):>11}  {r.array:<28} {r.source}" for r in sources[:top]]
    lines.append("largest kept outside the layers:")
    lines += [f"  {_mib(r.nbytes):>11}  {r.array:<28} {r.source}"
              for r in sorted(kept.outside, key=lambda r: -r.nbytes)[:top]]
    budget = step_budget(track, cfg, kept, policies["none"], gpu_attention)
    total = sum(budget.values())
    verdict = (f"fits in {card_gib:g} GiB with {_gib(card_gib * GIB - total)} to spare" if total <= card_gib * GIB
               else f"does NOT fit in {card_gib:g} GiB (short by {_gib(total - card_gib * GIB)})")
    lines.append(f"train step on one GPU, estimated from shapes (attention {gpu_attention}; XLA's workspace "
                 "and fragmentation not counted):")
    lines.append("  " + ", ".join(f"{name} {_gib(n)}" for name, n in budget.items()))
    lines.append(f"  total {_gib(total)}: {verdict}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--track", action="append", default=None,
                   help=f"a track (repeatable; default {' and '.join(DEFAULT_TRACKS)})")
    for flag in FLAGS:
        add_flag(p, flag, *OVERRIDES[flag][1:])
    p.add_argument("--card-gib", type=float, default=12.0, help="device memory to budget against (default 12)")
    p.add_argument("--top", type=int, default=10, help="largest arrays listed per group (default 10)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    overrides = {OVERRIDES[f][0]: getattr(args, f) for f in FLAGS if getattr(args, f) is not None}
    reports = [describe(get_track(name, **overrides), args.card_gib, args.top)
               for name in args.track or DEFAULT_TRACKS]
    print("\n\n".join(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
