"""The optional installs: which extra of pyproject.toml brings what, and one line naming it when it is missing.

The base install is the JAX stack alone; PyTorch comes with the `torch` extra (also pulled by `dev`). Whatever
needs it (the PyTorch trainer, generator or scorer, reading or writing `.pt` files) asks here first, so a machine
without it gets the install command instead of a traceback. Framework-free: it only looks the module up.
"""

import importlib.util

from configs.errors import UserError

TORCH_INSTALL = 'pip install -e ".[torch]"'


class MissingExtra(UserError):
    """An optional package a command needs is not installed; the message names the extra that brings it."""


def has_torch() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a half-removed install: its spec cannot be read
        return False


def require_torch(purpose: str) -> None:
    """Stop with one line when PyTorch is missing. `purpose`: what needs it, e.g. "--framework torch"."""
    if not has_torch():
        raise MissingExtra(f"{purpose} needs PyTorch, which is not installed: install the [torch] extra "
                           f"({TORCH_INSTALL}, or \".[dev]\", which includes it)")
