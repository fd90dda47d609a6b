"""Fixtures shared by the training tests: a small learnable token store and tracks that run in seconds."""

import numpy as np
import pytest

from jax_nano.data.token_store import write_store
from tests import toy
from tests.toy import SEQ, VOCAB


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> str:
    """Rows of arithmetic progressions mod 512 (random start and stride): a tiny model learns them in steps."""
    rng = np.random.default_rng(0)
    n_rows = 400
    start = rng.integers(0, VOCAB, (n_rows, 1))
    stride = rng.integers(1, 8, (n_rows, 1))
    rows = (start + stride * np.arange(SEQ)[None, :]) % VOCAB
    path = tmp_path_factory.mktemp("store") / "toy"
    write_store(path, rows.astype(np.uint16).reshape(-1), seq_len=SEQ, vocab_size=VOCAB, source="test",
                     tokenizer="none")
    return str(path)


@pytest.fixture
def toy_track(toy_store):
    """A float32 token track of the tiny model on the toy store; tests change what they need."""
    return lambda **changes: toy.toy_track(toy_store, **changes)
