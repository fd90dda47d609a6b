"""PyTorch's matmul probe: the best FLOP/s of square float32 and bfloat16 matmuls on the trainer's device.

The twin of jax_nano/peak_probe.py (read that first); `python -m torch_ref.peak_probe [N ...]` prints one JSON line.
"""

import json
import sys

import torch

from jax_nano.core.peak import ACCELERATOR_SIZES, CPU_SIZES, time_matmuls
from torch_ref.tensors import default_device


def probe(sizes=None, repeats: int = 5, budget_s: float = 2.0) -> dict:
    device = default_device()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # PyTorch's default float32 matmul is full precision (no TF32), as the JAX probe asks for.
    def prepare(dtype, n):
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=gen).to(device, getattr(torch, dtype))
        b = torch.randn(n, n, generator=gen).to(device, getattr(torch, dtype))

        def run():
            a @ b
            sync()
        return run

    sizes = sizes or (CPU_SIZES if device.type == "cpu" else ACCELERATOR_SIZES)
    return {"framework": "torch", "version": torch.__version__, "backend": device.type,
            "results": time_matmuls(prepare, sizes, repeats, budget_s)}


if __name__ == "__main__":
    print(json.dumps(probe([int(n) for n in sys.argv[1:]] or None)))
