"""Causal attention as XLA einsums with the heads first and each group's query heads merged with the positions.

jax.nn.dot_product_attention (XLA) keeps the (batch, positions, heads, head) layout, and with grouped queries its
key and value gradients are dots over two axes at once (a group's query heads and the positions). Here every dot
is a matmul batched over (batch, kv head) with one contracting axis: the 88M model's forward+backward took 1/1.10
of jax.nn's time on a 2-core CPU (its whole train step, of which attention is less, 1/1.02, within that
machine's noise: PERFORMANCE.md). The softmax runs in float32 as jax.nn's does, and the values agree with it to
float32 rounding (tests/test_model_levers.py).
"""

import jax
import jax.numpy as jnp


def causal_attention(q_BTNH, k_BTKH, v_BTKH, scale: float):
    """Each of the N query heads attends over the positions up to its own in kv head n // (N / K)."""
    B, T, N, H = q_BTNH.shape
    K = k_BTKH.shape[2]
    G = N // K
    # R: a kv head's G query heads one after another, T positions each.
    q_BKRH = q_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
    k_BKSH, v_BKSH = k_BTKH.transpose(0, 2, 1, 3), v_BTKH.transpose(0, 2, 1, 3)
    s_BKRS = jnp.einsum("bkrh,bksh->bkrs", q_BKRH, k_BKSH, preferred_element_type=jnp.float32) * scale
    causal_RS = (jnp.arange(G * T) % T)[:, None] >= jnp.arange(T)[None, :]
    s_BKRS = jnp.where(causal_RS, s_BKRS, jnp.finfo(jnp.float32).min)
    p_BKRS = jax.nn.softmax(s_BKRS, axis=-1).astype(v_BTKH.dtype)
    o_BKRH = jnp.einsum("bkrs,bksh->bkrh", p_BKRS, v_BKSH)
    return o_BKRH.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)
