"""JAX's matmul probe: the best FLOP/s of square float32 and bfloat16 matmuls on this process's default device.

The measured limit of jax_nano/core/peak.py, where no published peak is known. Run as a module it prints one JSON
line (`python -m jax_nano.peak_probe [N ...]`); torch_ref/peak_probe.py is its twin.
"""

import json
import sys

import jax
import jax.numpy as jnp

from jax_nano.core.peak import ACCELERATOR_SIZES, CPU_SIZES, time_matmuls


def probe(sizes=None, repeats: int = 5, budget_s: float = 2.0) -> dict:
    """{"framework", "version", "backend", "results": [{"dtype", "n", "flops_per_s"}]}: each the best of
    `repeats` timed calls (or as many as fit in `budget_s` per case) after one untimed call that compiles it
    (jax_nano/core/peak.py `time_matmuls`)."""
    backend = jax.default_backend()
    # HIGHEST: a float32 matmul on a GPU must not run as TF32 (that is a different, faster operation).
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))

    def prepare(dtype, n):
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        b = jax.random.normal(jax.random.key(1), (n, n), dtype)
        return lambda: matmul(a, b).block_until_ready()

    sizes = sizes or (CPU_SIZES if backend == "cpu" else ACCELERATOR_SIZES)
    return {"framework": "jax", "version": jax.__version__, "backend": backend,
            "results": time_matmuls(prepare, sizes, repeats, budget_s)}


if __name__ == "__main__":
    print(json.dumps(probe([int(n) for n in sys.argv[1:]] or None)))
