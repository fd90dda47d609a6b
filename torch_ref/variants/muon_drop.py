"""Drop-Muon (variant `muon-drop`), as upstream's commit 5842eb1 has it; the twin of jax_nano/variants/muon_drop.py.

After Muon orthogonalizes a matrix's update, each entry is kept with probability 1 - p and zeroed otherwise (a
product with a 0/1 mask, as upstream's `g * torch.bernoulli(...)`); the kept entries are not rescaled. Momentum is
untouched.

Upstream draws from PyTorch's global generator, so its masks depend on everything else that drew before. Here each
mask comes from a generator of its own, seeded from (the run's seed, the parameter's Muon step, its index among
Muon's parameters): a run on one device is reproducible, and a resumed run draws the masks the uninterrupted one
drew (the step count is in the optimizer state a checkpoint keeps). PyTorch's CPU and CUDA generators are
different algorithms, so a mask drawn on a GPU is not the CPU's, and none is JAX's (threefry): the two
frameworks draw masks alike, not the same entries. Given the same masks (`Masks` replaced by a function that
returns them), both give the same update (parity_tests/test_variant_parity.py).
"""

import hashlib

import torch


def stream_seed(seed: int, step: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{step}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class Masks:
    """`masks(step, index, like)`: a 0/1 tensor shaped and typed like `like`, 1 (kept) with probability 1 - p."""

    def __init__(self, seed: int, p: float):
        self.seed, self.p = seed, p

    def __call__(self, step: int, index: int, like: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=like.device).manual_seed(stream_seed(self.seed, step, index))
        keep = torch.full(like.shape, 1.0 - self.p, device=like.device, dtype=torch.float32)
        return torch.bernoulli(keep, generator=generator).to(like.dtype)


def drop(update: torch.Tensor, state: dict, index: int, masks) -> torch.Tensor:
    """One parameter's orthogonalized update, masked; counts the parameter's Muon steps in its `state`."""
    step = state.get("drop_step", 0)
    state["drop_step"] = step + 1
    return update * masks(step, index, update)
