"""The JAX engine of the lm-eval model (jax_nano/evaluate/lm_eval_model.py holds the request handling both
frameworks share): token log-probabilities and greedy generation from a jax-nano `GPT`. Mirrored by
torch_ref/lm_eval_engine.py, so the two frameworks can be compared item by item."""

import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_nano.generate import Generator
from jax_nano.model import map_position_chunks

# Positions whose logits are formed at once: (positions x vocab) float32 stays near 200 MB for the real vocab.
LOGITS_CHUNK = 1024


class JaxEngine:
    """Token log-probabilities and greedy generation from a jax-nano `GPT`."""

    framework = "jax"

    def __init__(self, model):
        self.cfg = model.cfg
        self.model = model
        graphdef, self._state = nnx.split(model)
        self._score = jax.jit(partial(_token_scores, graphdef))
        self._compiled = {}  # (batch, length) -> the scoring program, compiled ahead of time on first use
        self.compile_s = 0.0
        self._generator = None

    def device_name(self) -> str:
        device = jax.devices()[0]
        return f"{device.platform}: {device.device_kind}"

    def token_scores(self, inputs_BT: np.ndarray, targets_BT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log p(target | inputs up to that position) and whether the target is the argmax, per position."""
        if inputs_BT.shape not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[inputs_BT.shape] = self._score.lower(self._state, inputs_BT, targets_BT).compile()
            self.compile_s += time.perf_counter() - t0
        logp_BT, hit_BT = self._compiled[inputs_BT.shape](self._state, inputs_BT, targets_BT)
        return np.asarray(logp_BT), np.asarray(hit_BT)

    def generate(self, prompts: list[list[int]], *, batch_size: int, max_len: int, **sampling) -> list[list[int]]:
        if self._generator is None:
            self._generator = Generator(self.model, batch_size=batch_size, max_len=max_len)
        out = self._generator.generate(prompts, **sampling)
        self.compile_s += self._generator.stats.compile_s  # the stats are those of this call
        return out


def _token_scores(graphdef, state, inputs_BT, targets_BT):
    model = nnx.merge(graphdef, state)
    h_BTD = model.hidden(inputs_BT)
    B, T, D = h_BTD.shape

    def one_chunk(h_KD, targets_K):
        logits_KV = model.logits(h_KD).astype(jnp.float32)
        target_K = jnp.take_along_axis(logits_KV, targets_K[:, None], axis=-1)[:, 0]
        return target_K - jax.nn.logsumexp(logits_KV, axis=-1), jnp.argmax(logits_KV, axis=-1) == targets_K

    logp_N, hit_N = map_position_chunks(one_chunk, h_BTD.reshape(B * T, D), targets_BT.reshape(B * T),
                                        min(LOGITS_CHUNK, B * T))
    return logp_N.reshape(B, T), hit_N.reshape(B, T)
