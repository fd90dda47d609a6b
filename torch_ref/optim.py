"""Muon (Polar Express or Newton-Schulz) + AdamW, the upstream PyTorch recipe (SPEC section 2).

The twin of jax_nano/optim.py, section by section. Weights are in torch layout (out, in), as upstream.
"""

import functools

import torch
from torch import nn

from configs.model import ConfigError
from configs.optim import OptimConfig, lr_factor, ortho_coefficients, ortho_dtype_for
from torch_ref.variants import muon_drop

__all__ = ["Muon", "compiled_orthogonalize", "lr_factor", "make_optimizer", "orthogonalize", "param_label", "step"]

# ---------------------------------------------------------------------------------------------------------------
# Learning-rate factor: lr_factor lives in configs.optim, shared with the JAX side; LambdaLR applies it below.

# ---------------------------------------------------------------------------------------------------------------
# Orthogonalization: the coefficients live in configs.optim, shared with the JAX side.


def orthogonalize(G: torch.Tensor, method: str = "polar-express", steps: int = 5, dtype="bfloat16") -> torch.Tensor:
    """Upstream's orthogonalize on (..., rows, cols) matrices, batched over leading axes; result in `dtype`."""
    X = G.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    safety = 1.01 if method == "polar-express" else 1.0
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * safety + 1e-7)
    for a, b, c in ortho_coefficients(method, steps):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.mT if tall else X


@functools.cache
def compiled_orthogonalize():
    """`orthogonalize` under `torch.compile`, as upstream compiles its Polar Express: on CUDA the ~47 small
    kernels per matrix of the eager version (norm, casts, 15 matmuls, the elementwise a*X + B@X ...) become the
    matmuls plus a few fused kernels; on the CPU Inductor's C++ code fuses the elementwise work the same way. One
    compiled function for the process, so the optimizers rebuilt after the warm-up steps reuse what those steps
    compiled: one static graph per matrix shape (four in the 88M model), all compiled during the warm-up, where
    dynamic shapes would compile a second, symbolic graph once a second shape appears."""
    return torch.compile(orthogonalize, dynamic=False)


# ---------------------------------------------------------------------------------------------------------------
# Muon


class Muon(torch.optim.Optimizer):
    """Upstream Muon: Nesterov momentum without bias correction, orthogonalize, p -= lr*sqrt(max(1, out/in))*O.
    `drop` > 0: the variant muon-drop, its masks from `masks` (default: drawn from `seed`,
    torch_ref/variants/muon_drop.py)."""

    def __init__(self, params, lr: float = 0.015, momentum: float = 0.95, method: str = "polar-express",
                 steps: int = 5, dtype="bfloat16", compile: bool = False, drop: float = 0.0, seed: int = 0,
                 masks=None):
        ortho_coefficients(method, steps)
        self.ortho = compiled_orthogonalize() if compile else orthogonalize
        super().__init__(params, dict(lr=lr, momentum=momentum, method=method, steps=steps, dtype=dtype, drop=drop))
        self.masks = masks or muon_drop.Masks(seed, drop)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                # Out of place (upstream lerps .grad in place) so the gradient is still there for logging.
                u = p.grad.lerp(buf, group["momentum"])
                o = self.ortho(u, group["method"], group["steps"], group["dtype"])
                if group["drop"] > 0:
                    o = muon_drop.drop(o, state, index, self.masks)
                p.add_(o, alpha=-group["lr"] * max(1, p.size(-2) / p.size(-1)) ** 0.5)
        return loss


# ---------------------------------------------------------------------------------------------------------------
# Gradient clipping: torch.nn.utils.clip_grad_norm_ is SPEC's formula, g *= min(1, max_norm / (norm + 1e-6)).

# ---------------------------------------------------------------------------------------------------------------
# Parameter groups


def param_label(name: str, p: torch.Tensor) -> str:
    """'adamw' for the embedding (= tied head) and norms; 'muon' for the 2-D block weights (upstream's rule)."""
    if "token_embedding" in name or "norm" in name:
        return "adamw"
    return "muon" if p.ndim == 2 else "adamw"


# ---------------------------------------------------------------------------------------------------------------
# The whole optimizer


def _platform(model: nn.Module) -> str:
    return "cpu" if next(model.parameters()).device.type == "cpu" else "gpu"


def make_optimizer(config: OptimConfig, model: nn.Module, total_steps: int, compile: bool = False, seed: int = 0,
                   masks=None):
    """([Muon, AdamW], [their LambdaLR schedulers]). LambdaLR sets lr = base*lr_factor(0) at construction and
    the scheduler steps after the optimizer, so optimizer step s runs with lr_factor(s), as in the JAX optimizer.
    `compile`: Muon orthogonalizes with `compiled_orthogonalize` (the eager `orthogonalize` otherwise). The
    orthogonalization dtype "auto" is resolved for the parameters' device (`ortho_dtype_for`). `seed` (the run's)
    and `masks`: the muon-drop variant's (Muon)."""
    if total_steps < 1:
        raise ConfigError(f"total_steps={total_steps} must be >= 1")
    groups = {"muon": [], "adamw": []}
    for name, p in model.named_parameters():  # yields the tied lm_head once, under token_embedding
        groups[param_label(name, p)].append(p)
    muon = Muon(groups["muon"], lr=config.muon_lr, momentum=config.muon_momentum, method=config.orthogonalizer,
                steps=config.ortho_steps, dtype=ortho_dtype_for(config.ortho_dtype, _platform(model)), compile=compile,
                drop=config.muon_drop, seed=seed, masks=masks)
    on_cuda = all(p.is_cuda for p in groups["adamw"])
    adamw = torch.optim.AdamW(groups["adamw"], lr=config.adamw_lr, betas=config.adam_betas, eps=config.adam_eps,
                              weight_decay=config.weight_decay, **({"fused": True} if on_cuda else {"foreach": True}))
    optimizers = [muon, adamw]

    def factor(s: int) -> float:
        return lr_factor(config.schedule, s, total_steps, config.warmup_ratio)

    return optimizers, [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]


def step(model: nn.Module, optimizers: list, schedulers: list, grad_clip: float) -> torch.Tensor:
    """One upstream optimizer step after backward(): clip all gradients together, step both optimizers, advance
    the schedules, drop the gradients. Returns the gradient norm before clipping."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:
        opt.step()
    for sched in schedulers:
        sched.step()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    return grad_norm
