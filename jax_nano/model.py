"""The Blueberry-Nano decoder in Flax NNX (SPEC section 1).

Blocks are created with `nnx.vmap` so every block parameter carries a leading layer axis, and run with
`jax.lax.scan` over those stacked weights, so the compiled program holds one block whatever the depth (or, with
`unroll_layers`, a Python loop over the same stacked weights). Parameter names mirror the upstream PyTorch model
(`torch_ref/model.py`) so conversion is a rename plus a transpose.

Activation memory: each block runs under `jax.checkpoint` with the policy `cfg.remat` names (REMAT_POLICIES).
Even the default keeps only matmul outputs for the backward pass; the cheap elementwise work between them (norms,
casts, RoPE, SwiGLU, residual adds) is recomputed instead of kept, often in float32. `scripts/memory.py` prints
what is kept.
"""

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from configs.model import ConfigError, ModelConfig
from jax_nano.dense import Linear, rows_matmul
from jax_nano.grouped_attention import causal_attention
from jax_nano.variants import unet_skips

# What PyTorch's RMSNorm uses when no eps is given: float32 machine epsilon.
RMS_EPS = float(jnp.finfo(jnp.float32).eps)

# The fused cuDNN attention's forward primitive: its outputs (the attention output and the softmax statistics)
# are what its backward kernel needs, so keeping them means the forward kernel never runs twice.
_FUSED_ATTENTION = frozenset({"dot_product_attention_fwd_wrapper", "dot_product_attention_fwd"})


def _projections_and_fused_attention(prim, *args, **params) -> bool:
    return prim.name in _FUSED_ATTENTION or jax.checkpoint_policies.dots_with_no_batch_dims_saveable(
        prim, *args, **params)


# What a block keeps for its backward pass (the rest is recomputed from it):
#   none: the projection matmuls' outputs and cuDNN's fused attention outputs: elementwise work is recomputed,
#         and XLA's attention recomputes its (B, heads, T, T) scores and probabilities from q, k and v instead of
#         keeping them (kept, they need 36 GiB for the 151M model at 4 x 2048: the compiler's plan for an RTX
#         4090, `python scripts/plan.py --gpu rtx4090 --track 4.5loss --attention xla`);
#   dots: the outputs of the projection matmuls only: cuDNN's attention is recomputed too;
#   full: nothing but the block's input: the whole block is recomputed (about one more forward pass).
REMAT_POLICIES = {
    "none": _projections_and_fused_attention,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def _dtype(name: str):
    return jnp.dtype(name)


def matmul_precision(compute_dtype: str):
    """float32 means float32 on a GPU too: NVIDIA GPUs would otherwise run float32 matmuls in TF32 (PyTorch does
    not). The precision is fixed when a dot is traced, so this context must surround tracing (and lowering)."""
    return jax.default_matmul_precision("highest") if compute_dtype == "float32" else contextlib.nullcontext()


def _rms_stats(x):
    # Statistics in float32 whatever the compute dtype, as PyTorch does for float32 inputs.
    x32 = x.astype(jnp.float32)
    return x32, jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + RMS_EPS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x, scale, dtype):
    """x / rms(x) * scale over the last axis, returned in `dtype`. The backward pass keeps only x (in its own
    dtype) and the per-row 1/rms, and recomputes the rest."""
    return _rms_norm_fwd(x, scale, dtype)[0]


def _rms_norm_fwd(x, scale, dtype):
    x32, inv_rms = _rms_stats(x)
    return (x32 * inv_rms * scale.astype(jnp.float32)).astype(dtype), (x, inv_rms, scale)


def _rms_norm_bwd(dtype, residuals, dy):
    x, inv_rms, scale = residuals
    x_hat = x.astype(jnp.float32) * inv_rms
    dy32 = dy.astype(jnp.float32)
    d_scale = jnp.sum(dy32 * x_hat, axis=tuple(range(x.ndim - 1)))
    g = dy32 * scale.astype(jnp.float32)
    dx = inv_rms * (g - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True))
    return dx.astype(x.dtype), d_scale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, cfg: ModelConfig):
        self.scale = nnx.Param(jnp.ones((dim,), _dtype(cfg.param_dtype)))

    def __call__(self, x, dtype=None):
        """`dtype` (default x's): a block casts its norm's output to the compute dtype once, for every matmul
        that reads it."""
        return rms_norm(x, self.scale[...], _dtype(dtype or x.dtype))


def _linear(d_in: int, d_out: int, cfg: ModelConfig, rngs: nnx.Rngs) -> Linear:
    return Linear(
        d_in, d_out, use_bias=False, dtype=_dtype(cfg.compute_dtype), param_dtype=_dtype(cfg.param_dtype),
        kernel_init=nnx.initializers.normal(cfg.init_std), rngs=rngs,
    )


def rope_tables(seq_len: int, head_dim: int, base: float):
    """cos/sin of shape (T, head_dim/2): pair i of every head turns by pos * base**(-2i/head_dim)."""
    return rope_at(jnp.arange(seq_len, dtype=jnp.float32), head_dim, base)


def apply_rope(x_BTNH, cos_TP, sin_TP):
    """Interleaved RoPE: dims (0,1), (2,3), ... rotate together (not the rotate-half layout)."""
    x = x_BTNH.astype(jnp.float32).reshape(*x_BTNH.shape[:-1], -1, 2)
    x0, x1 = x[..., 0], x[..., 1]
    cos, sin = cos_TP[None, :, None, :], sin_TP[None, :, None, :]
    out = jnp.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)
    return out.reshape(x_BTNH.shape).astype(x_BTNH.dtype)


# The platform a program is compiled for: JAX's backend, unless a plan compiles for a card that is not attached
# (jax_nano/plan/), where the kernel choice must be the card's, not this machine's.
_TARGET_PLATFORM = contextvars.ContextVar("target_platform", default=None)


@contextlib.contextmanager
def compiling_for(platform: str):
    """Choose kernels for `platform` ("gpu", "tpu", "cpu") within the block, whatever JAX's own backend is."""
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def target_platform() -> str:
    return _TARGET_PLATFORM.get() or jax.default_backend()


def attention_kernel(cfg: ModelConfig) -> str:
    """cuDNN's fused kernel wants half precision on a GPU; on a CPU the grouped einsums are faster than jax.nn's
    (jax_nano/grouped_attention.py); jax.nn's XLA path covers the rest."""
    if cfg.attention != "auto":
        return cfg.attention
    if target_platform() == "cpu":
        return "grouped"
    return "cudnn" if target_platform() == "gpu" and cfg.compute_dtype != "float32" else "xla"


def check_attention_backend(cfg: ModelConfig) -> None:
    if cfg.attention == "cudnn" and target_platform() != "gpu":
        raise ConfigError(f"attention 'cudnn' needs an NVIDIA GPU, but JAX runs on {target_platform()}; "
                          "use attention auto or xla")


def rope_at(pos_T, head_dim: int, base: float):
    """`rope_tables` at arbitrary positions (T,): cos/sin of shape (T, head_dim/2)."""
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles_TP = pos_T.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles_TP), jnp.sin(angles_TP)


def apply_rope_rows(x_BTNH, cos_BTP, sin_BTP):
    """`apply_rope` with positions of its own for every row (left-padded batches)."""
    return jax.vmap(lambda x, c, s: apply_rope(x[None], c, s)[0])(x_BTNH, cos_BTP, sin_BTP)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d, kv = cfg.d_model, cfg.kv_dim
        if cfg.fused_qkvo:
            # Upstream's single (q|k|v|o) matrix; stored (in, out) like every Flax kernel.
            init = nnx.initializers.normal(cfg.init_std)
            self.qkvo_proj = nnx.Param(init(rngs.params(), (d, 2 * d + 2 * kv), _dtype(cfg.param_dtype)))
        else:
            self.q_proj = _linear(d, d, cfg, rngs)
            self.k_proj = _linear(d, kv, cfg, rngs)
            self.v_proj = _linear(d, kv, cfg, rngs)
            self.w_o = _linear(d, d, cfg, rngs)
        self.q_norm = RMSNorm(cfg.head_dim, cfg)
        self.k_norm = RMSNorm(cfg.head_dim, cfg)

    def _project(self, x_BTD):
        cfg = self.cfg
        if not cfg.fused_qkvo:
            return self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD), self.w_o
        w_DE = self.qkvo_proj[...].astype(cfg.compute_dtype)
        qkv = rows_matmul(x_BTD, w_DE[:, : cfg.d_model + 2 * cfg.kv_dim])
        q, k, v = jnp.split(qkv, [cfg.d_model, cfg.d_model + cfg.kv_dim], axis=-1)
        w_o_DD = w_DE[:, cfg.d_model + 2 * cfg.kv_dim :]
        return q, k, v, lambda a: rows_matmul(a, w_o_DD)

    def _heads(self, x_BTD, rope):
        """q and k (QK-normed, then rotated by `rope`) and v split into heads, and the output projection."""
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        q, k, v, out_proj = self._project(x_BTD)
        q_BTNH = rope(self.q_norm(q.reshape(B, T, cfg.n_heads, cfg.head_dim)))
        k_BTKH = rope(self.k_norm(k.reshape(B, T, cfg.n_kv_heads, cfg.head_dim)))
        return q_BTNH, k_BTKH, v.reshape(B, T, cfg.n_kv_heads, cfg.head_dim), out_proj

    def __call__(self, x_BTD, cos_TP, sin_TP):
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        q_BTNH, k_BTKH, v_BTKH, out_proj = self._heads(x_BTD, lambda x: apply_rope(x, cos_TP, sin_TP))
        scale, kernel = 1.0 / math.sqrt(cfg.head_dim), attention_kernel(cfg)
        if kernel == "grouped":
            a_BTNH = causal_attention(q_BTNH, k_BTKH, v_BTKH, scale)
        else:
            a_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, scale=scale, is_causal=True,
                                                  implementation=kernel)
        return out_proj(a_BTNH.reshape(B, T, cfg.d_model))

    def cached(self, x_BTD, cos_BTP, sin_BTP, kv, start, mask_BTS):
        """Attention of T new positions written at cache slots [start, start+T) of this layer's
        `kv` = (k_BSKH, v_BSKH), over the slots `mask_BTS` allows. Returns (output, updated kv)."""
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        q_BTNH, k_BTKH, v_BTKH, out_proj = self._heads(x_BTD, lambda x: apply_rope_rows(x, cos_BTP, sin_BTP))
        k_BSKH = jax.lax.dynamic_update_slice_in_dim(kv[0], k_BTKH.astype(kv[0].dtype), start, axis=1)
        v_BSKH = jax.lax.dynamic_update_slice_in_dim(kv[1], v_BTKH.astype(kv[1].dtype), start, axis=1)
        a_BTNH = jax.nn.dot_product_attention(
            q_BTNH, k_BSKH.astype(q_BTNH.dtype), v_BSKH.astype(q_BTNH.dtype), mask=mask_BTS[:, None],
            scale=1.0 / math.sqrt(cfg.head_dim), implementation="xla",
        )
        return out_proj(a_BTNH.reshape(B, T, cfg.d_model)), (k_BSKH, v_BSKH)


class FeedForward(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = _linear(cfg.d_model, cfg.d_ff, cfg, rngs)
        self.up_proj = _linear(cfg.d_model, cfg.d_ff, cfg, rngs)
        self.down_proj = _linear(cfg.d_ff, cfg.d_model, cfg, rngs)

    def __call__(self, x_BTD):
        if self.swiglu:
            h_BTF = jax.nn.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD)
        else:
            h_BTF = jnp.square(jax.nn.relu(self.up_proj(x_BTD)))
        return self.down_proj(h_BTF)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attention = Attention(cfg, rngs)
        self.feed_forward = FeedForward(cfg, rngs)
        self.norm1 = RMSNorm(cfg.d_model, cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg)

    def __call__(self, x_BTD, cos_TP, sin_TP):
        dtype = self.attention.cfg.compute_dtype
        x_BTD = x_BTD + self.attention(self.norm1(x_BTD, dtype), cos_TP, sin_TP)
        return x_BTD + self.feed_forward(self.norm2(x_BTD, dtype))

    def cached(self, x_BTD, cos_BTP, sin_BTP, kv, start, mask_BTS):
        dtype = self.attention.cfg.compute_dtype
        a_BTD, kv = self.attention.cached(self.norm1(x_BTD, dtype), cos_BTP, sin_BTP, kv, start, mask_BTS)
        x_BTD = x_BTD + a_BTD
        return x_BTD + self.feed_forward(self.norm2(x_BTD, dtype)), kv


def block_step(graphdef, cfg: ModelConfig):
    """One layer as the stack runs it, `(params, x_BTD, cos_TP, sin_TP) -> x_BTD`, under cfg.remat's policy.
    `params` are one layer's slice of the stacked block weights."""

    def apply(params, x_BTD, cos_TP, sin_TP):
        return nnx.merge(graphdef, params)(x_BTD, cos_TP, sin_TP)

    # Inside a scan XLA cannot merge the recomputation back into the forward pass; unrolled, it could.
    return jax.checkpoint(apply, policy=REMAT_POLICIES[cfg.remat], prevent_cse=cfg.unroll_layers)


class GPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        check_attention_backend(cfg)
        self.cfg = cfg
        # The residual stream keeps the parameters' dtype (float32 under bf16 compute, as PyTorch autocast keeps
        # it); only matmul inputs are cast to the compute dtype.
        self.token_embedding = nnx.Embed(
            cfg.vocab_size, cfg.d_model, dtype=_dtype(cfg.param_dtype), param_dtype=_dtype(cfg.param_dtype),
            embedding_init=nnx.initializers.normal(cfg.init_std), rngs=rngs,
        )

        @nnx.split_rngs(splits=cfg.n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_blocks(rngs):
            return Block(cfg, rngs)

        self.transformer_blocks = make_blocks(rngs)
        self.norm = RMSNorm(cfg.d_model, cfg)

    def hidden(self, ids_BT):
        """Final normalized hidden states (B, T, D), before the tied LM head."""
        cfg = self.cfg
        with matmul_precision(cfg.compute_dtype):
            cos_TP, sin_TP = rope_tables(ids_BT.shape[1], cfg.head_dim, cfg.rope_base)
            x_BTD = self.token_embedding(ids_BT) * jnp.asarray(math.sqrt(cfg.d_model), _dtype(cfg.param_dtype))
            graphdef, stacked = nnx.split(self.transformer_blocks)
            step = block_step(graphdef, cfg)
            if cfg.unet_skips:
                x_BTD = unet_skips.run_stack(step, stacked, x_BTD, cos_TP, sin_TP, cfg.n_layers, cfg.unroll_layers)
            elif cfg.unroll_layers:
                for i in range(cfg.n_layers):
                    x_BTD = step(jax.tree.map(lambda w, i=i: w[i], stacked), x_BTD, cos_TP, sin_TP)
            else:
                x_BTD, _ = jax.lax.scan(lambda x, params: (step(params, x, cos_TP, sin_TP), None), x_BTD, stacked)
            return self.norm(x_BTD)

    def logits(self, h_BTD):
        """The LM head, tied to the token embedding, in the compute dtype."""
        dtype = _dtype(self.cfg.compute_dtype)
        with matmul_precision(self.cfg.compute_dtype):
            return rows_matmul(h_BTD.astype(dtype), self.token_embedding.embedding[...].astype(dtype).T)

    def __call__(self, ids_BT):
        """Logits (B, T, V)."""
        return self.logits(self.hidden(ids_BT))

    def hidden_cached(self, ids_BT, pos_BT, cache_k, cache_v, start, mask_BTS):
        """`hidden` for T new tokens at per-row positions `pos_BT`, with a KV cache of every layer
        (cache_k, cache_v: (L, B, S, n_kv_heads, head_dim)) written at slots [start, start+T) and read where
        `mask_BTS` allows. Returns (hidden (B, T, D), cache_k, cache_v)."""
        cfg = self.cfg
        with matmul_precision(cfg.compute_dtype):
            cos_BTP, sin_BTP = jax.vmap(lambda p: rope_at(p, cfg.head_dim, cfg.rope_base))(pos_BT)
            x_BTD = self.token_embedding(ids_BT) * jnp.asarray(math.sqrt(cfg.d_model), _dtype(cfg.param_dtype))

            # The caches ride in the carry and each layer updates its slice in place (a scan output would copy
            # the whole cache every step).
            @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
            def run_blocks(carry, block, layer):
                x_BTD, k_LBSKH, v_LBSKH, skips = carry
                x_BTD, (k_BSKH, v_BSKH) = block.cached(x_BTD, cos_BTP, sin_BTP, (k_LBSKH[layer], v_LBSKH[layer]),
                                                        start, mask_BTS)
                x_BTD, skips = unet_skips.cached_layer(cfg, layer, x_BTD, skips)
                return x_BTD, k_LBSKH.at[layer].set(k_BSKH), v_LBSKH.at[layer].set(v_BSKH), skips

            x_BTD, cache_k, cache_v, _ = run_blocks((x_BTD, cache_k, cache_v, unet_skips.cached_buffer(cfg, x_BTD)),
                                                    self.transformer_blocks, jnp.arange(cfg.n_layers))
            return self.norm(x_BTD), cache_k, cache_v


def _nll(logits_NV, labels_N):
    """Cross-entropy per position, over the last axis (any leading axes)."""
    logits_NV = logits_NV.astype(jnp.float32)
    return jax.nn.logsumexp(logits_NV, axis=-1) - jnp.take_along_axis(logits_NV, labels_N[..., None], axis=-1)[..., 0]


def loss_fn(model: GPT, ids_BT):
    """Mean next-token cross-entropy over all B*(T-1) positions; labels are the inputs shifted by one.

    Every one of the B*T positions is computed and the last of each row weighted 0, rather than slicing it off:
    merging (B, T-1) into one axis is a relayout of the logits on a TPU (T-1 is no multiple of its 8-row tiles),
    and that copy alone held the 88M step's TPU compile for minutes."""
    B, T = ids_BT.shape
    labels_BT = jnp.pad(ids_BT[:, 1:], ((0, 0), (0, 1)))
    counted_BT = jnp.broadcast_to(jnp.arange(T) < T - 1, (B, T))
    chunk = model.cfg.loss_chunk
    if not chunk:
        logits_BTV = model(ids_BT)
        # Narrower logits are checkpointed: the backward pass keeps them in the compute dtype, not a float32
        # softmax of them. Float32 logits are not: the softmax it keeps instead is no larger, and recomputing it
        # cost the smoke step's forward+backward 13-27% on a 2-core CPU (PERFORMANCE.md).
        nll = _nll if logits_BTV.dtype == jnp.float32 else jax.checkpoint(_nll)
        nll_BT = nll(logits_BTV, labels_BT)
    else:
        @jax.checkpoint  # the backward pass recomputes each chunk's logits instead of keeping them all
        def chunk_nll(h_KD, labels_K):
            return _nll(model.logits(h_KD), labels_K)

        h_BTD = model.hidden(ids_BT)
        nll_BT = map_position_chunks(chunk_nll, h_BTD.reshape(B * T, -1), labels_BT.reshape(B * T),
                                     chunk).reshape(B, T)
    return jnp.sum(jnp.where(counted_BT, nll_BT, 0.0)) / (B * (T - 1))


def map_position_chunks(fn, h_ND, labels_N, chunk: int):
    """`fn(h_KD, labels_K)` over `chunk` positions at a time (the last chunk padded), so the (positions x vocab)
    logits are never formed whole; its outputs per position, (N, ...)."""
    n, d = h_ND.shape
    pad = -n % chunk
    h_CKD = jnp.pad(h_ND, ((0, pad), (0, 0))).reshape(-1, chunk, d)
    labels_CK = jnp.pad(labels_N, (0, pad)).reshape(-1, chunk)
    out = jax.lax.map(lambda xs: fn(*xs), (h_CKD, labels_CK))
    return jax.tree.map(lambda o_CK: o_CK.reshape(-1, *o_CK.shape[2:])[:n], out)


def count_params(cfg: ModelConfig) -> int:
    """Parameter count from shapes alone: `jax.eval_shape` allocates nothing."""
    state = jax.eval_shape(lambda: nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))
