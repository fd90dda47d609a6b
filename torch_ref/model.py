"""The Blueberry-Nano decoder in PyTorch with upstream's parameter names (SPEC section 1).

Mirrors `jax_nano/model.py` class by class; a `state_dict` saved by the upstream project loads with
`strict=True`. Linear weights are (out_features, in_features), the transpose of a Flax kernel.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from configs.model import ModelConfig
from torch_ref.variants.unet_skips import Skips


def _linear(d_in: int, d_out: int) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=False)


def rope_tables(seq_len: int, head_dim: int, base: float, device=None):
    """cos/sin of shape (T, head_dim/2): pair i of every head turns by pos * base**(-2i/head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles_TP = torch.arange(seq_len, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
    return torch.cos(angles_TP), torch.sin(angles_TP)


def rope_at(pos_BT, head_dim: int, base: float):
    """`rope_tables` at arbitrary positions (B, T): cos/sin of shape (B, T, head_dim/2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=pos_BT.device) / head_dim)
    angles_BTP = pos_BT.float()[..., None] * inv_freq
    return torch.cos(angles_BTP), torch.sin(angles_BTP)


def apply_rope(x_BNTH, cos_TP, sin_TP):
    """Interleaved RoPE: dims (0,1), (2,3), ... rotate together (not the rotate-half layout)."""
    x = x_BNTH.float().reshape(*x_BNTH.shape[:-1], -1, 2)
    x0, x1 = x[..., 0], x[..., 1]
    out = torch.stack([x0 * cos_TP - x1 * sin_TP, x0 * sin_TP + x1 * cos_TP], dim=-1)
    return out.reshape(x_BNTH.shape).type_as(x_BNTH)


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d, kv = cfg.d_model, cfg.kv_dim
        if cfg.fused_qkvo:
            self.qkvo_proj = nn.Parameter(torch.empty(2 * d + 2 * kv, d))
        else:
            self.q_proj = _linear(d, d)
            self.k_proj = _linear(d, kv)
            self.v_proj = _linear(d, kv)
            self.w_o = _linear(d, d)
        self.q_norm = nn.RMSNorm(cfg.head_dim)
        self.k_norm = nn.RMSNorm(cfg.head_dim)

    def _project(self, x_BTD):
        cfg = self.cfg
        if not cfg.fused_qkvo:
            return self.q_proj(x_BTD), self.k_proj(x_BTD), self.v_proj(x_BTD), self.w_o
        n_qkv = cfg.d_model + 2 * cfg.kv_dim
        q, k, v = F.linear(x_BTD, self.qkvo_proj[:n_qkv]).split([cfg.d_model, cfg.kv_dim, cfg.kv_dim], dim=-1)
        return q, k, v, lambda a: F.linear(a, self.qkvo_proj[n_qkv:])

    def forward(self, x_BTD, cos_TP, sin_TP):
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        q, k, v, out_proj = self._project(x_BTD)
        q_BNTH = apply_rope(self.q_norm(q.view(B, T, cfg.n_heads, cfg.head_dim)).transpose(1, 2), cos_TP, sin_TP)
        k_BKTH = apply_rope(self.k_norm(k.view(B, T, cfg.n_kv_heads, cfg.head_dim)).transpose(1, 2), cos_TP, sin_TP)
        v_BKTH = v.view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        a_BNTH = F.scaled_dot_product_attention(
            q_BNTH, k_BKTH, v_BKTH, is_causal=True, scale=1.0 / math.sqrt(cfg.head_dim), enable_gqa=True
        )
        return out_proj(a_BNTH.transpose(1, 2).reshape(B, T, cfg.d_model))

    def cached(self, x_BTD, cos_B1TP, sin_B1TP, k_BKSH, v_BKSH, start: int, mask_BTS):
        """Attention of T new positions written, in place, at slots [start, start+T) of this layer's cache
        (k_BKSH, v_BKSH), over the slots `mask_BTS` allows."""
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        q, k, v, out_proj = self._project(x_BTD)
        q_BNTH = apply_rope(self.q_norm(q.view(B, T, cfg.n_heads, cfg.head_dim)).transpose(1, 2), cos_B1TP, sin_B1TP)
        k_BKTH = apply_rope(self.k_norm(k.view(B, T, cfg.n_kv_heads, cfg.head_dim)).transpose(1, 2), cos_B1TP,
                            sin_B1TP)
        k_BKSH[:, :, start:start + T] = k_BKTH
        v_BKSH[:, :, start:start + T] = v.view(B, T, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        a_BNTH = F.scaled_dot_product_attention(
            q_BNTH, k_BKSH.type_as(q_BNTH), v_BKSH.type_as(q_BNTH), attn_mask=mask_BTS[:, None],
            scale=1.0 / math.sqrt(cfg.head_dim), enable_gqa=True,
        )
        return out_proj(a_BNTH.transpose(1, 2).reshape(B, T, cfg.d_model))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.gate_proj = _linear(cfg.d_model, cfg.d_ff)
        self.up_proj = _linear(cfg.d_model, cfg.d_ff)
        self.down_proj = _linear(cfg.d_ff, cfg.d_model)

    def forward(self, x_BTD):
        if self.swiglu:
            h_BTF = F.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD)
        else:
            h_BTF = F.relu(self.up_proj(x_BTD)).square()
        return self.down_proj(h_BTF)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = MultiHeadAttention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.norm1 = nn.RMSNorm(cfg.d_model)
        self.norm2 = nn.RMSNorm(cfg.d_model)

    def forward(self, x_BTD, cos_TP, sin_TP):
        x_BTD = x_BTD + self.attention(self.norm1(x_BTD), cos_TP, sin_TP)
        return x_BTD + self.feed_forward(self.norm2(x_BTD))

    def cached(self, x_BTD, cos_B1TP, sin_B1TP, k_BKSH, v_BKSH, start: int, mask_BTS):
        x_BTD = x_BTD + self.attention.cached(self.norm1(x_BTD), cos_B1TP, sin_B1TP, k_BKSH, v_BKSH, start, mask_BTS)
        return x_BTD + self.feed_forward(self.norm2(x_BTD))


class MinimalLLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.norm = nn.RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.token_embedding.weight
        self.reset_parameters()

    def reset_parameters(self):
        for name, p in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=self.cfg.init_std)

    def forward(self, ids_BT):
        cfg = self.cfg
        cos_TP, sin_TP = rope_tables(ids_BT.shape[1], cfg.head_dim, cfg.rope_base, ids_BT.device)
        x_BTD = self.token_embedding(ids_BT) * math.sqrt(cfg.d_model)
        skips = Skips(cfg)
        for i, block in enumerate(self.transformer_blocks):
            x_BTD = skips.after(i, block(x_BTD, cos_TP, sin_TP))
        return self.lm_head(self.norm(x_BTD))

    def forward_cached(self, ids_BT, pos_BT, cache_k, cache_v, start: int, mask_BTS):
        """Logits (B, T, V) of T new tokens at per-row positions `pos_BT`, with a KV cache of every layer
        (cache_k, cache_v: (L, B, n_kv_heads, S, head_dim)) written in place at slots [start, start+T) and
        read where `mask_BTS` allows."""
        cfg = self.cfg
        cos_BTP, sin_BTP = rope_at(pos_BT, cfg.head_dim, cfg.rope_base)
        x_BTD = self.token_embedding(ids_BT) * math.sqrt(cfg.d_model)
        skips = Skips(cfg)
        for layer, block in enumerate(self.transformer_blocks):
            x_BTD = skips.after(layer, block.cached(x_BTD, cos_BTP[:, None], sin_BTP[:, None], cache_k[layer],
                                                    cache_v[layer], start, mask_BTS))
        return self.lm_head(self.norm(x_BTD))


def loss_fn(model: MinimalLLM, ids_BT):
    """Mean next-token cross-entropy over all B*(T-1) positions; labels are the inputs shifted by one."""
    logits_BTV = model(ids_BT)[:, :-1]
    return F.cross_entropy(logits_BTV.float().reshape(-1, logits_BTV.shape[-1]), ids_BT[:, 1:].reshape(-1))


def count_params(cfg: ModelConfig) -> int:
    """Parameter count on the meta device: nothing is allocated; the tied head is counted once."""
    with torch.device("meta"):
        model = MinimalLLM(cfg)
    return sum(p.numel() for p in model.parameters())
