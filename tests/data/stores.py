"""Small token stores for the data tests, built from arithmetic so every window is known."""

from pathlib import Path

import numpy as np

from jax_nano.data.token_store import write_store

VOCAB = 1000


def make_store(path, n_rows=40, seq_len=32, vocab=VOCAB, **kw):
    """A store whose windows are all distinct: token i of the stream is i % vocab, rows offset by row number."""
    rows = (np.arange(n_rows)[:, None] * 7 + np.arange(seq_len)[None, :]) % vocab
    write_store(path, rows, seq_len=seq_len, vocab_size=vocab, source="test", tokenizer="none", **kw)
    return rows


def snapshot(path: Path) -> dict:
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


def take(loader, n):
    with loader:
        return [next(loader) for _ in range(n)]
