"""PyTorch's matmul probe: the best FLOP/s of square float32 and bfloat16 matmuls on the trainer's device.

The twin of jax_nano/peak_probe.py (read that first); `python -m torch_ref.peak_probe [N ...]` prints one JSON line.
"""

import json
import sys
import time

import torch

from torch_ref.tensors import default_device

DTYPES = ("float32", "bfloat16")
CPU_SIZES, ACCELERATOR_SIZES = (512, 1024, 2048), (2048, 4096, 8192)


def probe(sizes=None, repeats: int = 5, budget_s: float = 2.0) -> dict:
    device = default_device()
    sizes = sizes or (CPU_SIZES if device.type == "cpu" else ACCELERATOR_SIZES)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # PyTorch's default float32 matmul is full precision (no TF32), as the JAX probe asks for.
    results = []
    for dtype in DTYPES:
        for n in sizes:
            gen = torch.Generator().manual_seed(0)
            a = torch.randn(n, n, generator=gen).to(device, getattr(torch, dtype))
            b = torch.randn(n, n, generator=gen).to(device, getattr(torch, dtype))
            a @ b
            sync()
            best, spent = float("inf"), 0.0
            for _ in range(repeats):
                t0 = time.perf_counter()
                a @ b
                sync()
                dt = time.perf_counter() - t0
                best, spent = min(best, dt), spent + dt
                if spent > budget_s:
                    break
            results.append({"dtype": dtype, "n": n, "flops_per_s": 2 * n**3 / best})
    return {"framework": "torch", "version": torch.__version__, "backend": device.type, "results": results}


if __name__ == "__main__":
    print(json.dumps(probe([int(n) for n in sys.argv[1:]] or None)))
