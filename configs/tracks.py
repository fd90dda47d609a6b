"""Speedrun tracks as data (SPEC section 3): what to train, on what, and when to stop."""

import dataclasses
from dataclasses import dataclass

from configs.model import ConfigError, ModelConfig, check_attention, check_remat, get_model_config
from configs.optim import OptimConfig

# Precision policies. "bf16-compute": float32 parameters and optimizer state, bf16 matmuls (the loss-track
# records, PyTorch autocast). "bf16": parameters and optimizer state in bf16 too (the token-track records).
# "float32": everything float32 (parity, CPU).
PRECISIONS = ("bf16-compute", "bf16", "float32")
FRAMEWORKS = ("jax", "torch")
# PyTorch: torch.compile of the model and of Muon's orthogonalization. "auto": wherever it works (CUDA; a CPU with
# a C++ compiler for Inductor), eager otherwise with a note in the summary; "on": an error where it cannot.
TORCH_COMPILE = ("auto", "on", "off")


@dataclass(frozen=True)
class Track:
    name: str
    model: str
    batch_size: int
    seq_len: int
    optim: OptimConfig
    # Stop rule: the first step whose train loss <= target_loss, or after target_tokens tokens.
    target_loss: float | None = None
    target_tokens: int | None = None
    # A loss track gives up after this many tokens so that a run that never reaches the target ends.
    max_tokens: int | None = None
    max_steps: int | None = None
    precision: str = "bf16-compute"
    data: str = "processed_data/blueberry-20000"
    seed: int = 42
    eval_every: int = 0  # steps between milestone evaluations; 0: only at the end
    eval_batches: int = 100
    # Upstream's untimed warm-up before the clock starts (weights and optimizer are reset after it).
    warmup_steps: int = 3
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    framework: str = "jax"
    loss_chunk: int = 0  # JAX: cross-entropy over this many positions at a time (configs/model.py)
    leaderboard: bool = True  # False: a track whose rows never enter LEADERBOARD.md (smoke)
    # JAX model levers (configs/model.py): activation checkpointing, layers unrolled, attention kernel.
    remat: str = "none"
    unroll_layers: bool = False
    attention: str = "auto"
    torch_compile: str = "auto"
    # Stop a run whose loss stays no better than uniform or whose weights blow up (jax_nano/core/guard.py).
    divergence_guard: bool = True
    # A model of no preset (--init-from a file of another size, or a resumed run of one): the fields that replace
    # the preset's, as (field, value) pairs (configs.model.shape_changes), so the track stays plain data.
    model_changes: tuple = ()

    def __post_init__(self):
        if (self.target_loss is None) == (self.target_tokens is None):
            raise ConfigError(f"track {self.name!r} needs exactly one of target_loss and target_tokens")
        if self.batch_size <= 0 or self.seq_len <= 0:
            raise ConfigError(f"batch_size and seq_len must be positive, got {self.batch_size} x {self.seq_len}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.framework not in FRAMEWORKS:
            raise ConfigError(f"unknown framework {self.framework!r}; choose one of {', '.join(FRAMEWORKS)}")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"max_steps={self.max_steps} must be positive")
        if self.torch_compile not in TORCH_COMPILE:
            raise ConfigError(f"unknown --torch-compile {self.torch_compile!r}; choose one of "
                              f"{', '.join(TORCH_COMPILE)}")
        check_remat(self.remat)
        check_attention(self.attention, self.precision == "float32")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        """Steps the schedule is laid out over: ceil(tokens / (batch*seq)), or the explicit cap."""
        tokens = self.target_tokens if self.target_tokens is not None else self.max_tokens
        steps = -(-tokens // self.tokens_per_step) if tokens else None
        if self.max_steps is not None:
            steps = min(steps, self.max_steps) if steps else self.max_steps
        if not steps:
            raise ConfigError(f"track {self.name!r} has no step budget; set max_tokens or max_steps")
        return steps

    @property
    def model_config(self) -> ModelConfig:
        """The model this track trains: its preset, with `model_changes`."""
        return get_model_config(self.model).replace(**dict(self.model_changes))

    @property
    def is_loss_track(self) -> bool:
        return self.target_loss is not None

    def replace(self, **changes) -> "Track":
        return dataclasses.replace(self, **changes)


_LOSS_OPTIM = OptimConfig(muon_lr=0.015, adamw_lr=0.001, schedule="constant", warmup_ratio=0.0)
_TOKEN_OPTIM = OptimConfig(muon_lr=0.024, adamw_lr=0.006, schedule="constant", warmup_ratio=0.0)


def _loss_track(name, target, max_tokens):
    return Track(name=name, model="blueberry-151m", batch_size=4, seq_len=2048, optim=_LOSS_OPTIM,
                 target_loss=target, max_tokens=max_tokens, precision="bf16-compute")


def _token_track(name, tokens, eval_every):
    return Track(name=name, model="blueberry-88m", batch_size=8, seq_len=2048, optim=_TOKEN_OPTIM,
                 target_tokens=tokens, precision="bf16", eval_every=eval_every)


TRACKS = {
    "4.5loss": _loss_track("4.5loss", 4.5, max_tokens=50_000_000),
    "3.5loss": _loss_track("3.5loss", 3.5, max_tokens=200_000_000),
    "8M": _token_track("8M", 8_000_000, eval_every=0),
    "20M": _token_track("20M", 20_000_000, eval_every=0),
    "100M": _token_track("100M", 100_000_000, eval_every=2000),
    "1B": Track(name="1B", model="blueberry-151m", batch_size=4, seq_len=2048, optim=_LOSS_OPTIM,
                target_tokens=1_000_000_000, precision="bf16-compute", eval_every=5000,
                data="processed_data/blueberry-488000", checkpoint_every=5000),
    # CPU smoke run: a small model on the embedded sample, about a minute on two cores.
    "smoke": Track(name="smoke", model="small", batch_size=8, seq_len=128, optim=_TOKEN_OPTIM.replace(muon_lr=0.02),
                   target_tokens=8 * 128 * 60, precision="float32", data="sample", eval_every=20,
                   eval_batches=4, warmup_steps=1, leaderboard=False),
}


def get_track(name: str, **overrides) -> Track:
    if name not in TRACKS:
        raise ConfigError(f"unknown track {name!r}; choose one of {', '.join(TRACKS)}")
    return TRACKS[name].replace(**overrides) if overrides else TRACKS[name]
