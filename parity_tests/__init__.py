"""Parity tests: the JAX implementation and the PyTorch reference compute the same thing."""
