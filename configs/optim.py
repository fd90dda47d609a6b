"""Optimizer settings shared by the JAX optimizer and its PyTorch twin (SPEC section 2)."""

import dataclasses
import math
from dataclasses import dataclass

from configs.model import ConfigError

SCHEDULES = ("constant", "cosine", "linear")
ORTHOGONALIZERS = ("polar-express", "newton-schulz")
# float16 is what the classic Newton-Schulz records used; float32 is for exact parity tests. "auto": bfloat16 on
# accelerators (the records' choice), float32 on a CPU, where XLA runs a bfloat16 matmul as converts around a
# float32 one (and a CPU without bf16 units has nothing faster to offer): both frameworks resolve it alike
# (`ortho_dtype_for`), so their runs on one machine still compute the same thing.
ORTHO_DTYPES = ("auto", "bfloat16", "float32", "float16")


@dataclass(frozen=True)
class OptimConfig:
    muon_lr: float = 0.015
    adamw_lr: float = 0.001
    muon_momentum: float = 0.95
    weight_decay: float = 0.2
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    schedule: str = "constant"
    warmup_ratio: float = 0.0
    orthogonalizer: str = "polar-express"
    ortho_steps: int = 5
    ortho_dtype: str = "auto"
    # A variant (configs/variants.py): each entry of Muon's orthogonalized update is kept with probability
    # 1 - muon_drop and zeroed otherwise, without rescaling (upstream's Drop-Muon); 0 is off.
    muon_drop: float = 0.0

    def __post_init__(self):
        for field in ("muon_lr", "adamw_lr", "weight_decay", "adam_eps"):
            if getattr(self, field) < 0:
                raise ConfigError(f"{field}={getattr(self, field)} is negative; use a value >= 0")
        if not 0 <= self.muon_momentum < 1:
            raise ConfigError(f"muon_momentum={self.muon_momentum} is outside [0, 1); upstream uses 0.95")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas={self.adam_betas} must be two values in [0, 1); upstream uses (0.9, 0.999)")
        if not self.grad_clip > 0:
            raise ConfigError(f"grad_clip={self.grad_clip} must be positive; upstream uses 1.0")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup_ratio <= 1:
            raise ConfigError(f"warmup_ratio={self.warmup_ratio} is outside [0, 1]; it is a fraction of total steps")
        if self.orthogonalizer not in ORTHOGONALIZERS:
            raise ConfigError(
                f"unknown orthogonalizer {self.orthogonalizer!r}; choose one of {', '.join(ORTHOGONALIZERS)}"
            )
        if self.ortho_steps < 1:
            raise ConfigError(f"ortho_steps={self.ortho_steps} must be >= 1; upstream uses 5")
        if not 0 <= self.muon_drop < 1:
            raise ConfigError(f"muon_drop={self.muon_drop} is outside [0, 1); it is the probability of zeroing an "
                              "entry of Muon's update (0: off)")
        if self.ortho_dtype not in ORTHO_DTYPES:
            raise ConfigError(f"unknown ortho_dtype {self.ortho_dtype!r}; choose one of {', '.join(ORTHO_DTYPES)}")

    def replace(self, **changes) -> "OptimConfig":
        return dataclasses.replace(self, **changes)


def ortho_dtype_for(dtype: str, platform: str) -> str:
    """The orthogonalization dtype a run on `platform` ("cpu", "gpu", "tpu") uses for the setting `dtype`."""
    if dtype != "auto":
        return dtype
    return "float32" if platform == "cpu" else "bfloat16"


def lr_factor(kind: str, step: int, total_steps: int, warmup_ratio: float) -> float:
    """SPEC factor at optimizer step `step` (0-based), the one formula both frameworks use. The constant
    schedule with warmup_ratio 0 still has warmup = 1, so step 0 has factor 0: an upstream quirk, kept, whose
    first step only fills the momenta and Adam moments and moves no weight."""
    warmup = max(1, int(total_steps * warmup_ratio))
    if step < warmup:
        return step / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total_steps - warmup)
    if kind == "cosine":
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "linear":
        return max(0.1, 1 - progress)
    raise ConfigError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")


# Muon's orthogonalization, the same numbers for both frameworks (SPEC section 2).
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
NEWTON_SCHULZ_COEFFS = (3.4445, -4.7750, 2.0315)


def ortho_coefficients(method: str, steps: int) -> list:
    """(a, b, c) of each step: X <- a*X + (b*A + c*A@A) @ X with A = X @ X^T."""
    if method == "polar-express":
        # The list is tuned for 5 steps; past that the last (most conservative) step repeats, as modded-nanogpt does.
        return list(POLAR_EXPRESS_COEFFS[:steps]) + [POLAR_EXPRESS_COEFFS[-1]] * max(0, steps - 5)
    if method == "newton-schulz":
        return [NEWTON_SCHULZ_COEFFS] * steps
    raise ConfigError(f"unknown orthogonalizer {method!r}; choose one of polar-express, newton-schulz")
