"""U-Net skips (variant `unet-skips`), as upstream's commit dcf1f5d has them, over the scanned layer stack.

Upstream, after block i: if i < L // 2 its output is pushed on a stack; otherwise, while the stack is not empty,
the last pushed output is popped and added to block i's output. Block L//2 + j thus gets block L//2 - 1 - j's
output added (j = 0 .. L//2 - 1); with an odd L the last block gets none. No weights are added.

The stack of blocks is one `lax.scan` over stacked weights (jax_nano/model.py); here the first half is one scan
that also returns its outputs, the second half a scan that takes them in reverse, and an odd last block runs
alone. The cached path (generation) runs one scan over every layer, so it carries the pushed outputs in a buffer
and chooses by the layer index what to write and what to add.
"""

import jax
import jax.numpy as jnp


def run_stack(step, stacked, x_BTD, cos_TP, sin_TP, n_layers: int, unroll: bool):
    """The block stack with skips: `step(params, x, cos, sin)` is one layer, `stacked` every layer's weights."""
    half = n_layers // 2
    if unroll:
        pushed = []
        for i in range(n_layers):
            x_BTD = step(jax.tree.map(lambda w, i=i: w[i], stacked), x_BTD, cos_TP, sin_TP)
            if i < half:
                pushed.append(x_BTD)
            elif pushed:
                x_BTD = x_BTD + pushed.pop()
        return x_BTD

    def layers(lo, hi):
        return jax.tree.map(lambda w: w[lo:hi], stacked)

    def first(x, params):
        x = step(params, x, cos_TP, sin_TP)
        return x, x

    def second(x, params_and_skip):
        params, skip_BTD = params_and_skip
        return step(params, x, cos_TP, sin_TP) + skip_BTD, None

    x_BTD, pushed_HBTD = jax.lax.scan(first, x_BTD, layers(0, half))
    x_BTD, _ = jax.lax.scan(second, x_BTD, (layers(half, 2 * half), pushed_HBTD[::-1]))
    if n_layers % 2:
        x_BTD = step(jax.tree.map(lambda w: w[-1], stacked), x_BTD, cos_TP, sin_TP)
    return x_BTD


def cached_buffer(cfg, x_BTD):
    """What the cached scan carries for the skips: room for the first half's outputs (None when off)."""
    if not cfg.unet_skips or cfg.n_layers < 2:
        return None
    return jnp.zeros((cfg.n_layers // 2, *x_BTD.shape), x_BTD.dtype)


def cached_layer(cfg, layer, x_BTD, pushed_HBTD):
    """After the block of index `layer` (traced) in the cached scan: push its output or add the one it pairs with."""
    if pushed_HBTD is None:
        return x_BTD, None
    half = cfg.n_layers // 2
    slot = jnp.minimum(layer, half - 1)
    pushed_HBTD = pushed_HBTD.at[slot].set(jnp.where(layer < half, x_BTD, pushed_HBTD[slot]))
    pops = (layer >= half) & (layer < 2 * half)
    skip_BTD = pushed_HBTD[jnp.clip(2 * half - 1 - layer, 0, half - 1)]
    return jnp.where(pops, x_BTD + skip_BTD, x_BTD), pushed_HBTD
