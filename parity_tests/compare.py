"""Tensor-by-tensor comparison whose failure names the worst tensor and its error."""

import numpy as np
import torch


def as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def max_abs_error(a, b) -> float:
    return float(np.max(np.abs(as_numpy(a) - as_numpy(b))))


def rel_error(a, b) -> float:
    """||a - b|| / ||b||: b is the reference."""
    a, b = as_numpy(a), as_numpy(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def rel_errors(actual: dict, expected: dict, metric=rel_error) -> dict:
    return {name: metric(actual[name], expected[name]) for name in expected}


def assert_all_close(actual: dict, expected: dict, bound: float, metric=rel_error, what: str = "tensor"):
    """Every tensor of `actual` within `bound` of `expected` by `metric`; the message names the worst."""
    assert actual.keys() == expected.keys(), f"{what} names differ: {sorted(set(actual) ^ set(expected))[:5]}"
    errors = rel_errors(actual, expected, metric)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= bound, (
        f"worst {what} {worst}: {metric.__name__} {errors[worst]:.3e} > bound {bound:.1e} "
        f"({sum(e > bound for e in errors.values())} of {len(errors)} over)"
    )
    return errors
