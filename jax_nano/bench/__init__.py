"""Measuring tools: the JAX vs PyTorch comparison, the benchmark suite, their reports, worker processes,
the profile breakdown, the memory analysis and the statistics."""
