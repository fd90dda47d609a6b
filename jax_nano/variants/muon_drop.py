"""Drop-Muon (variant `muon-drop`), as upstream's commit 5842eb1 has it; the twin of torch_ref/variants/muon_drop.py.

After Muon orthogonalizes a matrix's update, each entry is kept with probability 1 - p and zeroed otherwise. The
kept entries are not rescaled by 1/(1-p) (upstream does not), so the expected step shrinks by the factor 1 - p.
Momentum is untouched: only the applied update is masked.

The mask of a matrix is a pure function of (the run's seed, the optimizer step, the parameter's path): a threefry
key folded with the step and with a CRC-32 of the path. A run is therefore reproducible, a resumed run draws
the masks the uninterrupted one drew, and the masks do not depend on the device or on how the matrix is sharded
(threefry is computed the same everywhere). They are not PyTorch's masks: the two frameworks draw alike, not
the same entries (torch_ref/variants/muon_drop.py).
"""

import zlib

import jax


def leaf_name(path) -> str:
    """'transformer_blocks/attention/q_proj/kernel': a parameter's path in the parameter tree."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def keep_mask(seed: int, count, name: str, shape, p: float):
    """Booleans of `shape`: True (kept) with probability 1 - p, for step `count` of the parameter `name`."""
    key = jax.random.key(seed, impl="threefry2x32")
    key = jax.random.fold_in(jax.random.fold_in(key, count), zlib.crc32(name.encode()))
    return jax.random.bernoulli(key, 1.0 - p, shape)


def apply(update, keep):
    """`update` with the dropped entries zeroed (a product, as upstream: exact in any dtype, so masking before or
    after the learning-rate scaling gives the same numbers)."""
    return update * keep.astype(update.dtype)


def drop(update, seed: int, count, path, p: float):
    """One parameter's Muon update at optimizer step `count`, masked (unchanged when p is 0)."""
    return update if p == 0 else apply(update, keep_mask(seed, count, leaf_name(path), update.shape, p))
