"""What the JAX and PyTorch generators share: the checks of a request, the padded prompt length, the statistics,
and the split of the prompts into batches (jax_nano/generate.py and torch_ref/generate.py fill one batch each)."""

import dataclasses

import numpy as np

from configs.errors import UserError


class GenerationError(UserError, ValueError):
    """Generation settings that cannot work; one line naming the problem and the fix."""


@dataclasses.dataclass
class Stats:
    """What the last `generate` call did: tokens and seconds for the prompts and for the new tokens."""

    prompt_tokens: int = 0
    prompt_s: float = 0.0
    new_tokens: int = 0
    decode_s: float = 0.0
    compile_s: float = 0.0

    def describe(self) -> str:
        def rate(n, s):
            return f"{n / s:,.0f} tokens/s" if s > 0 else "n/a"

        return (f"prompt: {self.prompt_tokens} tokens in {self.prompt_s:.2f} s "
                f"({rate(self.prompt_tokens, self.prompt_s)}); generated: {self.new_tokens} tokens in "
                f"{self.decode_s:.2f} s ({rate(self.new_tokens, self.decode_s)})"
                + (f"; compile {self.compile_s:.1f} s" if self.compile_s else ""))


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if not temperature >= 0:
        raise GenerationError(f"temperature {temperature} is below zero; use 0 for greedy or a positive value")
    if not 0 < top_p <= 1:
        raise GenerationError(f"top-p {top_p} is outside (0, 1]; use 1 to turn it off")
    if top_k < 0:
        raise GenerationError(f"top-k {top_k} is negative; use 0 to turn it off")


def check_request(prompts, max_new_tokens: int, max_len: int, temperature: float, top_k: int, top_p: float):
    """One line for what a generation cannot do as asked, before any work (both frameworks)."""
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens <= 0:
        raise GenerationError(f"max_new_tokens {max_new_tokens} must be positive")
    for i, p in enumerate(prompts):
        if not p:
            raise GenerationError(f"prompt {i} is empty; give every prompt at least one token")
        if len(p) + max_new_tokens > max_len:
            raise GenerationError(f"prompt {i} ({len(p)} tokens) plus {max_new_tokens} new tokens exceeds "
                                  f"max_len {max_len}; shorten it or ask for fewer new tokens")


def prefill_length(longest: int, room: int) -> int:
    """The padded prompt length: the power of two at or above `longest`, at most `room`."""
    return min(1 << max(longest - 1, 0).bit_length(), room)


class BatchedGenerator:
    """What the JAX and PyTorch generators share: checks of the request and the split of the prompts into batches
    of `batch_size` rows; a subclass's `_batch` generates one batch, writing into `outputs` (and `logits`)."""

    def __init__(self, cfg, *, batch_size: int, max_len: int):
        if batch_size <= 0:
            raise GenerationError(f"batch_size {batch_size} must be positive")
        if not 1 < max_len <= cfg.max_seq_len:
            raise GenerationError(f"max_len {max_len} must be in 2..{cfg.max_seq_len} (the model's context)")
        self.cfg, self.batch_size, self.max_len = cfg, batch_size, max_len
        self.stats = Stats()

    # -- generation -----------------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, stop_ids=(0,), on_token=None) -> list[list[int]]:
        """New tokens of every prompt (without the stop token that ended it). `on_token(i, token)` is called
        for each new token of prompt i as soon as it is known; when it returns True, prompt i ends there."""
        return self._generate(prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, on_token)[0]

    def generate_with_logits(self, prompts: list[list[int]], *, max_new_tokens: int, stop_ids=(0,)):
        """Greedy `generate`, plus the float32 logits each new token was chosen from: per prompt (steps, vocab)."""
        return self._generate(prompts, max_new_tokens, 0.0, 0, 1.0, 0, stop_ids, None, keep_logits=True)

    def _generate(self, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, on_token,
                  keep_logits=False):
        check_request(prompts, max_new_tokens, self.max_len, temperature, top_k, top_p)
        self.stats = Stats()
        outputs, logits = [[] for _ in prompts], [[] for _ in prompts]
        for start in range(0, len(prompts), self.batch_size):
            rows = list(range(start, min(start + self.batch_size, len(prompts))))
            self._batch(prompts, rows, max_new_tokens, temperature, top_k, top_p, seed, set(stop_ids), on_token,
                        outputs, logits if keep_logits else None)
        if keep_logits:
            return outputs, [np.stack(x) if x else np.zeros((0, self.cfg.vocab_size), np.float32) for x in logits]
        return outputs, None

    def _batch(self, prompts, rows, max_new, temperature, top_k, top_p, seed, stops, on_token, outputs, logits):
        raise NotImplementedError
