"""The model's matmuls with a weight, over rows: every leading axis of the input merged into one first.

Over (B, T) at once, a weight's gradient is a dot that contracts two axes, and XLA's CPU backend ran it by first
writing a transposed copy of the activation gradient, then a slower dot. Over rows, the 88M model's
forward+backward at 4 x 256 took 1/1.16 of the time on a 2-core CPU, the smoke model's 1/1.11 (PERFORMANCE.md),
with the same gradients to float32 rounding.
"""

from flax import nnx


def over_rows(f, x):
    """f, a map (rows, I) -> (rows, O), applied to x (..., I) with its leading axes merged: (..., O)."""
    y = f(x.reshape(-1, x.shape[-1]))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def rows_matmul(x, w_IO):
    """x (..., I) @ w_IO (I, O) -> (..., O)."""
    return over_rows(lambda x_RI: x_RI @ w_IO, x)


class Linear(nnx.Linear):
    """nnx.Linear (the same parameters and casts) over rows."""

    def __call__(self, x):
        return over_rows(super().__call__, x)
