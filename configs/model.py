"""Model presets as frozen dataclasses (SPEC section 1)."""

import dataclasses
from dataclasses import dataclass

from configs.errors import UserError

MLP_KINDS = ("swiglu", "relu2")
DTYPES = ("float32", "bfloat16")
# What the backward pass of each block keeps (jax_nano/model.py REMAT_POLICIES): "none" recomputes no matmul,
# "dots" recomputes the attention, "full" recomputes the whole block from its input.
REMAT_POLICIES = ("none", "dots", "full")
# "auto": cuDNN's fused kernel on a GPU in half precision, on a CPU "grouped" (XLA einsums with the heads first,
# jax_nano/grouped_attention.py), jax.nn's XLA path ("xla") otherwise.
ATTENTION_KINDS = ("auto", "cudnn", "xla", "grouped")


class ConfigError(UserError, ValueError):
    """A configuration that cannot describe a model; the message is one line with the fix."""


@dataclass(frozen=True)
class ModelConfig:
    name: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    vocab_size: int
    max_seq_len: int
    mlp: str = "swiglu"
    fused_qkvo: bool = False
    rope_base: float = 10000.0
    init_std: float = 0.02
    # float32 for parity, bfloat16 for speed; parameters stay param_dtype.
    compute_dtype: str = "float32"
    param_dtype: str = "float32"
    # Cross-entropy over this many positions at a time (0: all at once). Chunks are recomputed in the backward
    # pass, so no (B, T, vocab) float32 logits tensor is ever held: a memory lever, not a change of the function.
    loss_chunk: int = 0
    remat: str = "none"
    # A Python loop over the stacked block weights instead of a scan: longer compiles, fusion across layers.
    unroll_layers: bool = False
    attention: str = "auto"
    # A variant (configs/variants.py): each of the first n_layers // 2 blocks' outputs is added, last in first out,
    # to the output of the blocks after the middle (upstream's U-Net skips); off by default.
    unet_skips: bool = False

    def __post_init__(self):
        for field in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab_size", "max_seq_len"):
            if getattr(self, field) <= 0:
                raise ConfigError(f"{field}={getattr(self, field)} must be positive")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads={self.n_heads} does not divide d_model={self.d_model}; choose a divisor of d_model"
            )
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"n_kv_heads={self.n_kv_heads} does not divide n_heads={self.n_heads}; choose a divisor for GQA"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for interleaved RoPE; change d_model or n_heads")
        if self.mlp not in MLP_KINDS:
            raise ConfigError(f"unknown mlp {self.mlp!r}; choose one of {', '.join(MLP_KINDS)}")
        if self.loss_chunk < 0:
            raise ConfigError(f"loss_chunk={self.loss_chunk} must be >= 0 (0: no chunking)")
        for field in ("compute_dtype", "param_dtype"):
            if getattr(self, field) not in DTYPES:
                raise ConfigError(f"unknown {field} {getattr(self, field)!r}; choose one of {', '.join(DTYPES)}")
        check_remat(self.remat)
        check_attention(self.attention, self.compute_dtype == "float32")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def check_remat(remat: str) -> None:
    if remat not in REMAT_POLICIES:
        raise ConfigError(f"unknown remat policy {remat!r}; choose one of {', '.join(REMAT_POLICIES)}")


def check_attention(attention: str, float32: bool) -> None:
    if attention not in ATTENTION_KINDS:
        raise ConfigError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_KINDS)}")
    if attention == "cudnn" and float32:
        raise ConfigError("attention 'cudnn' needs bf16 compute (cuDNN's fused kernel has no float32 path); "
                          "use a bf16 precision or attention auto/xla")


PRESETS = {
    "blueberry-151m": ModelConfig(
        name="blueberry-151m", d_model=512, n_layers=32, n_heads=8, n_kv_heads=4,
        d_ff=2048, vocab_size=49152, max_seq_len=2048, mlp="swiglu",
    ),
    "blueberry-88m": ModelConfig(
        name="blueberry-88m", d_model=512, n_layers=22, n_heads=8, n_kv_heads=4,
        d_ff=2048, vocab_size=49152, max_seq_len=2048, mlp="relu2",
    ),
    # CPU test model: every code path of the big ones at a size the tests run in seconds.
    "tiny": ModelConfig(
        name="tiny", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
        d_ff=256, vocab_size=512, max_seq_len=128, mlp="swiglu",
    ),
    # CPU smoke speedrun model: small, but with the real 49152-token vocabulary so it trains on real data.
    "small": ModelConfig(
        name="small", d_model=128, n_layers=4, n_heads=4, n_kv_heads=2,
        d_ff=512, vocab_size=49152, max_seq_len=2048, mlp="swiglu",
    ),
}

# Parameter-count bands that make a run eligible for a leaderboard (SPEC section 3).
ELIGIBILITY_BANDS = {
    "blueberry-151m": (143_450_000, 158_550_000),
    "blueberry-88m": (88_630_528 * 0.95, 88_630_528 * 1.05),
}


CUSTOM = "custom"  # the name of a model whose shapes no preset has (read from a file or a checkpoint)

# Model fields that change how a step is computed, not what it computes: tracks set them, a run may resume with
# other values, and a model's shapes never include them.
SPEED_LEVERS = ("loss_chunk", "remat", "unroll_layers", "attention")


def shape_changes(cfg: ModelConfig) -> tuple:
    """`cfg`'s model fields (not its speed levers) as sorted (field, value) pairs: what a track's `model_changes`
    holds for a model that is no preset."""
    return tuple(sorted((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in SPEED_LEVERS))


def get_model_config(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
