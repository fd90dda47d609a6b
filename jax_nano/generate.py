"""Text generation with a KV cache: one compiled prefill and one compiled decode step for a whole generation.

Prompts of a batch are left-padded to a common length; every row has its own positions (so RoPE sees each
prompt from 0) and an attention mask that hides its padding. The cache has a fixed size (`max_len` slots of
n_kv_heads per layer), so the decode step has one shape from the first new token to the last. The
prefill length is rounded up to a power of two, so prompts of similar lengths share one compiled prefill.
Sampling (greedy, temperature, top-k, top-p) runs inside the compiled step with its settings as traced
values: changing them compiles nothing. Mirrored by `torch_ref/generate.py`.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_nano.core.generation import BatchedGenerator, prefill_length
from jax_nano.model import GPT

# top-k values up to this come from `lax.top_k` of this many candidates; larger ones (or none) sort the whole
# vocabulary, which costs ~50x more on a CPU.
TOP_K_FAST = 256


def _cut(sorted_BC, top_k, top_p):
    """The smallest logit kept (B,): within the top_k of the descending `sorted_BC`, the fewest tokens whose
    probability reaches top_p (a token stays while the mass before it is below top_p, so the first always does)."""
    count = sorted_BC.shape[-1]
    kth_B = sorted_BC[:, jnp.clip(jnp.where(top_k > 0, top_k, count), 1, count) - 1]
    sorted_BC = jnp.where(sorted_BC >= kth_B[:, None], sorted_BC, -jnp.inf)
    probs_BC = jax.nn.softmax(sorted_BC, axis=-1)
    before_BC = jnp.cumsum(probs_BC, axis=-1) - probs_BC
    return jnp.maximum(jnp.min(jnp.where(before_BC < top_p, sorted_BC, jnp.inf), axis=-1), kth_B)


def sample(logits_BV, keys_B, temperature, top_k, top_p):
    """Next tokens (B,): argmax when temperature is 0, else a draw from the temperature-scaled distribution
    cut to its top_k tokens (0: all) and to the smallest set whose probability reaches top_p."""

    def draw(logits_BV):
        logits_BV = logits_BV / temperature
        fast = min(TOP_K_FAST, logits_BV.shape[-1])
        cut_B = jax.lax.cond(
            (top_k > 0) & (top_k <= fast),
            lambda x: _cut(jax.lax.top_k(x, fast)[0], top_k, top_p),
            lambda x: _cut(jnp.sort(x, axis=-1)[:, ::-1], top_k, top_p),
            logits_BV,
        )
        logits_BV = jnp.where(logits_BV >= cut_B[:, None], logits_BV, -jnp.inf)
        return jax.vmap(jax.random.categorical)(keys_B, logits_BV)

    logits_BV = logits_BV.astype(jnp.float32)
    return jax.lax.cond(temperature == 0, lambda x: jnp.argmax(x, axis=-1), draw, logits_BV).astype(jnp.int32)


def _row_keys(seed, rows_B, step):
    """One key per prompt and step: a prompt's draws do not depend on the batch it shares."""
    base = jax.random.key(seed)
    return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(base, r), step))(rows_B)


def _prefill(graphdef, max_len, params, ids_BP, pad_B, rows_B, seed, temperature, top_k, top_p):
    model = nnx.merge(graphdef, params)
    cfg, P = model.cfg, ids_BP.shape[1]
    cols, slots = jnp.arange(P), jnp.arange(max_len)
    pos_BP = jnp.maximum(cols[None, :] - pad_B[:, None], 0)
    # A column sees the slots at or before it that hold its own prompt; padding columns see only themselves
    # (their outputs are never used, and no row attends to them).
    mask_BPS = (slots[None, None, :] <= cols[None, :, None]) & (
        (slots[None, None, :] >= pad_B[:, None, None]) | (slots[None, None, :] == cols[None, :, None]))
    zeros = jnp.zeros((cfg.n_layers, ids_BP.shape[0], max_len, cfg.n_kv_heads, cfg.head_dim), cfg.compute_dtype)
    h_BPD, cache_k, cache_v = model.hidden_cached(ids_BP, pos_BP, zeros, zeros, 0, mask_BPS)
    logits_BV = model.logits(h_BPD[:, -1]).astype(jnp.float32)
    next_B = sample(logits_BV, _row_keys(seed, rows_B, 0), temperature, top_k, top_p)
    return next_B, logits_BV, cache_k, cache_v


def _decode(graphdef, max_len, params, cache_k, cache_v, ids_B, t, step, pad_B, rows_B, seed, temperature, top_k,
            top_p):
    model = nnx.merge(graphdef, params)
    slots = jnp.arange(max_len)
    mask_B1S = ((slots[None, :] <= t) & (slots[None, :] >= pad_B[:, None]))[:, None, :]
    h_B1D, cache_k, cache_v = model.hidden_cached(ids_B[:, None], (t - pad_B)[:, None], cache_k, cache_v, t,
                                                  mask_B1S)
    logits_BV = model.logits(h_B1D[:, 0]).astype(jnp.float32)
    next_B = sample(logits_BV, _row_keys(seed, rows_B, step), temperature, top_k, top_p)
    return next_B, logits_BV, cache_k, cache_v


# Compiled programs by (model structure, batch, cache length, kind, prefill length): generators of the same
# model shape share them, whatever their weights.
_PROGRAMS = {}


class Generator(BatchedGenerator):
    """Batched generation from a `GPT`: `batch_size` rows at a time, a cache of `max_len` positions."""

    def __init__(self, model: GPT, *, batch_size: int, max_len: int):
        super().__init__(model.cfg, batch_size=batch_size, max_len=max_len)
        self.graphdef, self.params = nnx.split(model)

    def _program(self, kind: str, P: int = 0):
        """The compiled prefill (one per padded length) or decode step, compiled ahead of time on first use."""
        key = (self.graphdef, self.batch_size, self.max_len, kind, P)
        if key not in _PROGRAMS:
            t0 = time.perf_counter()
            cfg, B, S = self.cfg, self.batch_size, self.max_len
            i32, f32 = jnp.int32, jnp.float32
            row, scalar = jax.ShapeDtypeStruct((B,), i32), jax.ShapeDtypeStruct((), i32)
            sampling = (scalar, jax.ShapeDtypeStruct((), f32), scalar, jax.ShapeDtypeStruct((), f32))
            if kind == "prefill":
                fn = jax.jit(functools.partial(_prefill, self.graphdef, S))
                args = (self.params, jax.ShapeDtypeStruct((B, P), i32), row, row, *sampling)
            else:
                cache = jax.ShapeDtypeStruct((cfg.n_layers, B, S, cfg.n_kv_heads, cfg.head_dim),
                                             jnp.dtype(cfg.compute_dtype))
                fn = jax.jit(functools.partial(_decode, self.graphdef, S), donate_argnums=(1, 2))
                args = (self.params, cache, cache, row, scalar, scalar, row, row, *sampling)
            _PROGRAMS[key] = fn.lower(*args).compile()
            self.stats.compile_s += time.perf_counter() - t0
        return _PROGRAMS[key]

    def _batch(self, prompts, rows, max_new, temperature, top_k, top_p, seed, stops, on_token, outputs, logits):
        B = self.batch_size
        lengths = [len(prompts[r]) for r in rows] + [1] * (B - len(rows))  # idle rows hold one token
        P = prefill_length(max(lengths), self.max_len - max_new)
        ids_BP = np.zeros((B, P), np.int32)
        for b, r in enumerate(rows):
            ids_BP[b, P - lengths[b]:] = prompts[r]
        pad_B = np.asarray([P - n for n in lengths], np.int32)
        rows_B = np.asarray(rows + [0] * (B - len(rows)), np.int32)
        sampling = (np.int32(seed), np.float32(temperature), np.int32(top_k), np.float32(top_p))
        prefill, decode = self._program("prefill", P), self._program("decode")

        t0 = time.perf_counter()
        next_B, logits_BV, cache_k, cache_v = prefill(self.params, ids_BP, pad_B, rows_B, *sampling)
        tokens = np.asarray(next_B)
        self.stats.prompt_s += time.perf_counter() - t0
        self.stats.prompt_tokens += sum(len(prompts[r]) for r in rows)
        live = [True] * len(rows)
        t0 = time.perf_counter()
        for step in range(max_new):
            step_logits = np.asarray(logits_BV) if logits is not None else None
            # The next step is dispatched before this one's tokens go to the host callbacks, so the device
            # computes while the host streams (at most one step is wasted when every row has stopped).
            pending = None
            if step < max_new - 1:
                pending = decode(self.params, cache_k, cache_v, next_B, np.int32(P + step), np.int32(step + 1),
                                 pad_B, rows_B, *sampling)
            for b, r in enumerate(rows):
                if not live[b]:
                    continue
                token = int(tokens[b])
                if token in stops:
                    live[b] = False
                    continue
                outputs[r].append(token)
                if logits is not None:
                    logits[r].append(step_logits[b])
                if on_token is not None and on_token(r, token):
                    live[b] = False
            if pending is None or not any(live):
                break
            next_B, logits_BV, cache_k, cache_v = pending
            tokens = np.asarray(next_B)
        self.stats.decode_s += time.perf_counter() - t0
        self.stats.new_tokens += sum(len(outputs[r]) for r in rows)
