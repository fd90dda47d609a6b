"""Text generation with a KV cache in PyTorch, mirroring `jax_nano/generate.py`: left-padded batches with
per-row positions and a mask that hides the padding, a fixed-size cache of n_kv_heads per layer written in
place, greedy / temperature / top-k / top-p sampling."""

import time

import torch

from jax_nano.core.generation import BatchedGenerator, prefill_length
from torch_ref.model import MinimalLLM


def sample(logits_BV, generators, temperature: float, top_k: int, top_p: float):
    """Next tokens (B,): argmax when temperature is 0, else a draw cut to top_k and top_p as in JAX (only the
    top_k candidates are sorted, not the whole vocabulary)."""
    logits_BV = logits_BV.float()
    if temperature == 0:
        return logits_BV.argmax(-1)
    k = top_k if 0 < top_k < logits_BV.shape[-1] else logits_BV.shape[-1]
    top_BK, ids_BK = (logits_BV / temperature).topk(k, dim=-1)
    probs_BK = top_BK.softmax(-1)
    # A token stays while the mass before it is below top_p (so the first one always stays).
    probs_BK = probs_BK.masked_fill(probs_BK.cumsum(-1) - probs_BK >= top_p, 0.0)
    picks_B1 = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs_BK, generators)])
    return ids_BK.gather(-1, picks_B1)[:, 0]


class Generator(BatchedGenerator):
    """Batched generation from a `MinimalLLM`: `batch_size` rows at a time, a cache of `max_len` positions."""

    def __init__(self, model: MinimalLLM, *, batch_size: int, max_len: int):
        super().__init__(model.cfg, batch_size=batch_size, max_len=max_len)
        self.model, self.device = model.eval(), next(model.parameters()).device

    @torch.no_grad()
    def _batch(self, prompts, rows, max_new, temperature, top_k, top_p, seed, stops, on_token, outputs, logits):
        cfg, B, S, dev = self.cfg, len(rows), self.max_len, self.device
        lengths = [len(prompts[r]) for r in rows]
        P = prefill_length(max(lengths), S - max_new)
        ids_BP = torch.zeros(B, P, dtype=torch.long, device=dev)
        for b, r in enumerate(rows):
            ids_BP[b, P - lengths[b]:] = torch.as_tensor(prompts[r], device=dev)
        pad_B = torch.as_tensor([P - n for n in lengths], device=dev)
        generators = [torch.Generator(dev).manual_seed(hash((seed, r)) & 0x7FFF_FFFF) for r in rows]
        dtype = next(self.model.parameters()).dtype
        cache_k = torch.zeros(cfg.n_layers, B, cfg.n_kv_heads, S, cfg.head_dim, dtype=dtype, device=dev)
        cache_v = torch.zeros_like(cache_k)
        cols, slots = torch.arange(P, device=dev), torch.arange(S, device=dev)

        t0 = time.perf_counter()
        pos_BP = (cols[None, :] - pad_B[:, None]).clamp(min=0)
        mask_BPS = (slots[None, None, :] <= cols[None, :, None]) & (
            (slots[None, None, :] >= pad_B[:, None, None]) | (slots[None, None, :] == cols[None, :, None]))
        logits_BV = self.model.forward_cached(ids_BP, pos_BP, cache_k, cache_v, 0, mask_BPS)[:, -1].float()
        next_B = sample(logits_BV, generators, temperature, top_k, top_p)
        self.stats.prompt_s += time.perf_counter() - t0
        self.stats.prompt_tokens += sum(lengths)
        live = [True] * B
        t0 = time.perf_counter()
        for step in range(max_new):
            for b, r in enumerate(rows):
                token = int(next_B[b])
                if not live[b] or token in stops:
                    live[b] = False
                    continue
                outputs[r].append(token)
                if logits is not None:
                    logits[r].append(logits_BV[b].cpu().numpy())
                if on_token is not None and on_token(r, token):
                    live[b] = False
            if not any(live) or step == max_new - 1:
                break
            t = P + step
            mask_B1S = ((slots[None, :] <= t) & (slots[None, :] >= pad_B[:, None]))[:, None, :]
            logits_BV = self.model.forward_cached(next_B[:, None], (t - pad_B)[:, None], cache_k, cache_v, t,
                                                  mask_B1S)[:, 0].float()
            next_B = sample(logits_BV, generators, temperature, top_k, top_p)
        self.stats.decode_s += time.perf_counter() - t0
        self.stats.new_tokens += sum(len(outputs[r]) for r in rows)
