"""Muon (Polar Express or Newton-Schulz) + AdamW as one optax transform, matching upstream (SPEC section 2).

Sections mirror torch_ref/optim.py so the two files can be read side by side. Matrices follow the Flax
layout (..., in, out); every formula below is stated in upstream's torch layout (out, in) and the code
transposes at the boundary, so the arithmetic is the same as upstream's, matrix for matrix.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from configs.model import ConfigError
from configs.optim import OptimConfig, lr_factor, ortho_coefficients, ortho_dtype_for
from jax_nano.model import target_platform
from jax_nano.variants import muon_drop

# Blocks a side for the Gram matrices on a CPU (see `muon`): 4 was no faster than 2 on the 88M's matrices.
CPU_GRAM_BLOCKS = 2

__all__ = ["clip_by_global_norm_torch", "lr_factor", "lr_schedule", "make_optimizer", "muon", "orthogonalize",
           "param_label", "param_labels", "symmetric_gram"]

# ---------------------------------------------------------------------------------------------------------------
# Learning-rate factor: lr_factor lives in configs.optim, shared with the torch twin.


def lr_schedule(base_lr: float, kind: str, total_steps: int, warmup_ratio: float) -> optax.Schedule:
    """base_lr * lr_factor(step) as an optax schedule. A table of the Python formula (not a jnp re-derivation)
    makes both frameworks read the very same factors; steps past the end keep the last one."""
    if total_steps < 1:
        raise ConfigError(f"total_steps={total_steps} must be >= 1")
    table_S = jnp.asarray([base_lr * lr_factor(kind, s, total_steps, warmup_ratio) for s in range(total_steps)],
                          jnp.float32)
    return lambda count: table_S[jnp.minimum(count, total_steps - 1)]


# ---------------------------------------------------------------------------------------------------------------
# Orthogonalization: the coefficients live in configs.optim, shared with the torch twin.


def _mul(x, s: float):
    # torch multiplies a low-precision tensor by a Python scalar in float32 and rounds once; jnp would first
    # round the scalar itself to bf16 (8.1566 -> 8.1875), a different polynomial.
    return (x.astype(jnp.float32) * s).astype(x.dtype)


def symmetric_gram(x, tall: bool, blocks: int = 1, precision=None):
    """x^T x (tall) or x x^T (wide) over the last two axes, the short side's Gram matrix. With `blocks` > 1 the
    short side is cut into that many parts and only the products on and above the diagonal are multiplied out,
    the rest being their transposes: (blocks + 1) / (2 * blocks) of the FLOPs. Each element is still one whole
    dot product over the long side, so the values are the whole product's to float32 rounding
    (parity_tests/test_optim_parity.py)."""
    parts = jnp.array_split(x, blocks, axis=-1 if tall else -2)
    spec = "...ki,...kj->...ij" if tall else "...ik,...jk->...ij"
    upper = {(i, j): jnp.einsum(spec, parts[i], parts[j], precision=precision)
             for i in range(blocks) for j in range(i, blocks)}
    rows = [[upper[i, j] if i <= j else jnp.swapaxes(upper[j, i], -1, -2) for j in range(blocks)]
            for i in range(blocks)]
    return jnp.block(rows)


def orthogonalize(g_RC, method: str = "polar-express", steps: int = 5, dtype="bfloat16",
                  gram_blocks: int = 1):
    """Upstream's orthogonalize on (..., rows, cols) matrices, batched over leading axes. Returns the result in
    the iteration dtype, like upstream.

    Upstream transposes a tall matrix, iterates on the wide one and transposes back. The polar factor of a
    transpose is the transpose of the polar factor, so here the Gram matrix is taken on the short side of the
    matrix as it lies and nothing is transposed: the same products, and Flax's (in, out) kernels are taken as
    they are (XLA folds most transposes into its dots anyway: no measurable time changed, PERFORMANCE.md).
    `gram_blocks`: see `symmetric_gram`; the iterates are the same whatever it is."""
    dtype = jnp.dtype(dtype)
    # float32 parity runs must not fall to TF32/bf16 passes on GPU; torch's default fp32 matmul is full precision.
    precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
    x = g_RC.astype(dtype)
    tall = x.shape[-2] > x.shape[-1]
    # torch's norm of a low-precision tensor accumulates in float32 and rounds the result once.
    norm = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(-2, -1), keepdims=True)).astype(dtype)
    safety = 1.01 if method == "polar-express" else 1.0
    x = x / (_mul(norm, safety).astype(jnp.float32) + 1e-7).astype(dtype)
    for a, b, c in ortho_coefficients(method, steps):
        a_SS = symmetric_gram(x, tall, gram_blocks, precision)
        # a_SS is symmetric, so its square is its Gram matrix too.
        b_SS = _mul(a_SS, b) + _mul(symmetric_gram(a_SS, False, gram_blocks, precision), c)
        # b_SS is symmetric, so x @ b_SS on a tall matrix is the transpose of upstream's b_SS @ x on the wide one.
        bx = jnp.matmul(x, b_SS, precision=precision) if tall else jnp.matmul(b_SS, x, precision=precision)
        x = _mul(x, a) + bx
    return x


# ---------------------------------------------------------------------------------------------------------------
# Muon


def _lerp(start, end, weight: float):
    # torch.lerp's two-branch formula in float32, so momenta match upstream to the last bit in float32.
    s, e, w = start.astype(jnp.float32), end.astype(jnp.float32), jnp.float32(weight)
    out = s + w * (e - s) if abs(weight) < 0.5 else e - (e - s) * (1 - w)
    return out.astype(start.dtype)


class MuonState(NamedTuple):
    count: jax.Array
    momentum: optax.Updates


def muon(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.95, method: str = "polar-express",
         steps: int = 5, dtype="bfloat16", whole_matrices=None, drop: float = 0.0,
         seed: int = 0, one_at_a_time: bool = False, gram_blocks: int = 1) -> optax.GradientTransformation:
    """Upstream Muon on Flax kernels (..., in, out): Nesterov momentum without bias correction, orthogonalized
    in torch layout, scaled by lr * sqrt(max(1, out/in)). The momentum buffer has the parameter's dtype.
    `drop` > 0: the variant muon-drop, masks drawn from `seed` (jax_nano/variants/muon_drop.py).

    `whole_matrices` (sharded training, jax_nano/sharding.py): applied to each update before it is
    orthogonalized, a sharding constraint that leaves no matrix split across devices.

    `one_at_a_time`: a stacked (L, in, out) weight is orthogonalized one layer's matrix after another (a loop
    in the program, `lax.map`) instead of as one batch of L. On a CPU, XLA's batched dots ran the 88M model's
    Polar Express 12-17% slower than the same matrices one by one (PERFORMANCE.md); on an accelerator the
    batch keeps the device full, and a sharded stack must stay a batch, orthogonalized where it lies.

    `gram_blocks`: the Gram matrices are multiplied out in that many blocks a side, the upper ones only
    (`symmetric_gram`). On a CPU, 2 ran the 88M model's Polar Express faster, to float32 rounding (PERFORMANCE.md);
    accelerators keep one whole product, which their GEMM kernels fill better."""
    ortho_coefficients(method, steps)  # fail at construction, not inside jit
    schedule = learning_rate if callable(learning_rate) else (lambda count: learning_rate)

    def init_fn(params):
        return MuonState(count=jnp.zeros([], jnp.int32), momentum=jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        buf = jax.tree.map(lambda b, g: _lerp(b, g, 1 - momentum), state.momentum, updates)
        nesterov = jax.tree.map(lambda g, b: _lerp(g, b, momentum), updates, buf)
        lr = jnp.asarray(schedule(state.count), jnp.float32)

        def step(path, u_LIO):
            if whole_matrices is not None:
                u_LIO = whole_matrices(u_LIO)
            if one_at_a_time and u_LIO.ndim > 2:
                o_LIO = jax.lax.map(lambda u_IO: orthogonalize(u_IO, method, steps, dtype, gram_blocks), u_LIO)
            else:
                o_LIO = orthogonalize(u_LIO, method, steps, dtype, gram_blocks)
            d_in, d_out = u_LIO.shape[-2:]
            # One float32 multiply by lr*scale and one rounding, like torch's p.add_(O, alpha=-lr*scale).
            update = (o_LIO.astype(jnp.float32) * (-lr * math.sqrt(max(1.0, d_out / d_in)))).astype(u_LIO.dtype)
            return muon_drop.drop(update, seed, state.count, path, drop)

        new_state = MuonState(count=optax.safe_increment(state.count), momentum=buf)
        return jax.tree_util.tree_map_with_path(step, nesterov), new_state

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------------------------
# Gradient clipping


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_: g *= min(1, max_norm / (norm + 1e-6)). optax.clip_by_global_norm scales
    by max_norm / norm instead, which differs when the norm is close to max_norm."""

    def update_fn(updates, state, params=None):
        del params
        leaves = jax.tree.leaves(updates)
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves))
        coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


# ---------------------------------------------------------------------------------------------------------------
# Parameter groups


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def param_label(path, leaf) -> str:
    """'adamw' for the embedding (= tied head) and norms; 'muon' for matrices: a stacked (L, in, out) block
    weight, or a plain 2-D weight (an unstacked layer list, as upstream's rule has it)."""
    names = [_key_name(k) for k in path]
    if "token_embedding" in names or any("norm" in n for n in names):
        return "adamw"
    stacked = "transformer_blocks" in names and not any(n.isdigit() for n in names)
    return "muon" if len(leaf.shape) == (3 if stacked else 2) else "adamw"


def param_labels(params):
    """Labels with the structure of `params` (a nested dict or an nnx.State)."""
    return jax.tree_util.tree_map_with_path(param_label, params)


# ---------------------------------------------------------------------------------------------------------------
# The whole optimizer


def make_optimizer(config: OptimConfig, total_steps: int, whole_matrices=None,
                   seed: int = 0) -> optax.GradientTransformation:
    """Clip all gradients together, then Muon for block matrices and PyTorch-style AdamW for the rest.
    optax.adamw computes -lr*(adam + wd*p_old), the same as torch's p *= 1-lr*wd followed by the Adam step.
    `whole_matrices`: see `muon` (None on one device). `seed`: the run's, for the muon-drop masks. The
    orthogonalization dtype "auto" is resolved for the platform the step is compiled for (`ortho_dtype_for`),
    and so are whether Muon takes a stacked weight's matrices one at a time (on a CPU, unsharded) and in how many
    blocks it multiplies out a Gram matrix (`CPU_GRAM_BLOCKS` on a CPU)."""
    muon_lr = lr_schedule(config.muon_lr, config.schedule, total_steps, config.warmup_ratio)
    adamw_lr = lr_schedule(config.adamw_lr, config.schedule, total_steps, config.warmup_ratio)
    b1, b2 = config.adam_betas
    platform = target_platform()
    cpu = platform == "cpu"
    return optax.chain(
        clip_by_global_norm_torch(config.grad_clip),
        optax.partition(
            {
                "muon": muon(muon_lr, config.muon_momentum, config.orthogonalizer, config.ortho_steps,
                             ortho_dtype_for(config.ortho_dtype, platform), whole_matrices,
                             config.muon_drop, seed,
                             one_at_a_time=cpu and whole_matrices is None, gram_blocks=CPU_GRAM_BLOCKS if cpu else 1),
                "adamw": optax.adamw(adamw_lr, b1=b1, b2=b2, eps=config.adam_eps, weight_decay=config.weight_decay),
            },
            param_labels,
        ),
    )
