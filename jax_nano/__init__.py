"""jax-nano: the Blueberry-Nano GPT speedrun in JAX/Flax NNX."""
