"""Benchmark scores through lm-evaluation-harness: the registered lm-eval model and the task reports."""
