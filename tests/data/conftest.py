"""Fixtures of the data tests: a store of 40 rows of 32 tokens, and the same opened as windows of 8."""

import pytest

from jax_nano.data.token_store import open_store
from tests.data.stores import VOCAB, make_store


@pytest.fixture
def store_path(tmp_path):
    make_store(tmp_path / "store", n_rows=40, seq_len=32)
    return tmp_path / "store"


@pytest.fixture
def store(store_path):
    return open_store(store_path, vocab_size=VOCAB, seq_len=8)  # 4 windows per native row
