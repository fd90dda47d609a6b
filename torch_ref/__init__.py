"""The PyTorch reference of jax-nano: the upstream Blueberry-Nano recipe, the yardstick for parity."""
