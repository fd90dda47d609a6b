"""PyTorch tensors to and from numpy arrays, bit for bit: what the PyTorch reference hands the framework-free
driver (its weights, for checksums and export) and takes from it (weights to start from).

numpy has no bfloat16 of its own; `ml_dtypes` provides the one JAX also uses, so a bf16 tensor crosses as the
same bits in a bfloat16 array, never through float32.
"""

import ml_dtypes
import numpy as np
import torch


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def from_numpy(a) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def numpy_state_dict(state_dict: dict) -> dict:
    """name -> numpy array; tensors that share storage (a tied head) stay one array."""
    return _convert(state_dict, to_numpy)


def torch_state_dict(arrays: dict) -> dict:
    """name -> tensor; arrays that are one object (a tied head) stay one tensor."""
    return _convert(arrays, from_numpy)


def _convert(tree: dict, fn) -> dict:
    done = {}
    for value in tree.values():
        if id(value) not in done:
            done[id(value)] = fn(value)
    return {k: done[id(v)] for k, v in tree.items()}


def default_device() -> torch.device:
    """The GPU when PyTorch can use one, else the CPU (the device check, jax_nano/core/device.py, runs first)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
