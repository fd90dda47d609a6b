"""The project's default XLA settings for one GPU, applied by the command lines before JAX starts a backend.

Each entry is a lever: a benchmark switches one off by setting `XLA_FLAGS` itself (to the others, or to ""),
and `JAX_NANO_XLA_FLAGS=0` switches the whole set off. A user's own `XLA_FLAGS` is never changed. XLA parses
the GPU flags on every platform and aborts on one it does not know, so the set is checked on the CPU too
(tests/test_model_levers.py).
"""

import os

# XLA already records fusions, cuBLAS and cuDNN calls into CUDA graphs, but not while loops and conditionals, so
# the scanned layer stack (a while loop) launches its kernels one by one every layer. With these two command
# types, the loop and its body can run as one graph (needs CUDA 12.4+ conditional graph nodes; XLA falls back to
# launching the loop from the host where it cannot).
DEFAULT_XLA_FLAGS = ("--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL",)

# JAX preallocates 75% of a GPU. 0.90 gives the train step more of the card and still leaves about 2.4 GB of a
# 24 GB card to what lives outside JAX's pool (the CUDA context, cuBLAS/cuDNN workspaces, a display).
DEFAULT_ENV = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.90"}

SWITCH = "JAX_NANO_XLA_FLAGS"


def apply_default_flags(environ=None) -> dict:
    """Set the defaults in `environ` (default os.environ) where the user has not: `XLA_FLAGS` only when it is
    unset, each DEFAULT_ENV variable only when that one is unset; nothing when JAX_NANO_XLA_FLAGS=0. Returns
    what it set. Call it before JAX creates a backend (the first device query or computation)."""
    environ = os.environ if environ is None else environ
    if environ.get(SWITCH, "1").strip() == "0":
        return {}
    applied = {}
    if "XLA_FLAGS" not in environ:
        applied["XLA_FLAGS"] = " ".join(DEFAULT_XLA_FLAGS)
    applied.update({name: value for name, value in DEFAULT_ENV.items() if name not in environ})
    environ.update(applied)
    return applied
