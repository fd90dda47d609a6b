"""The command lines of scripts/ as modules, for tests that call a script's `main` in their own process, and the
compilation cache such a call points JAX at."""

import contextlib
import importlib.util
from pathlib import Path

import jax
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """scripts/<name>.py, freshly executed as a module of its own (nothing of an earlier load is shared)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def script_cache(path):
    """A script's persistent compilation cache at `path` (it reads JAX_NANO_CACHE and sets JAX's cache options);
    the variable and JAX's options are put back afterwards."""
    before = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_NANO_CACHE", str(path))
        try:
            yield
        finally:
            jax.config.update("jax_compilation_cache_dir", before[0])
            jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
