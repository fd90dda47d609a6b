"""Fixtures shared by the training tests: a small learnable token store and tracks that run in seconds."""

import numpy as np
import pytest

from configs.optim import OptimConfig
from configs.tracks import get_track
from jax_nano import data

VOCAB, SEQ = 512, 64


@pytest.fixture(scope="session")
def toy_store(tmp_path_factory) -> str:
    """Rows of arithmetic progressions mod 512 (random start and stride): a tiny model learns them in steps."""
    rng = np.random.default_rng(0)
    n_rows = 400
    start = rng.integers(0, VOCAB, (n_rows, 1))
    stride = rng.integers(1, 8, (n_rows, 1))
    rows = (start + stride * np.arange(SEQ)[None, :]) % VOCAB
    path = tmp_path_factory.mktemp("store") / "toy"
    data.write_store(path, rows.astype(np.uint16).reshape(-1), seq_len=SEQ, vocab_size=VOCAB, source="test",
                     tokenizer="none")
    return str(path)


@pytest.fixture
def toy_track(toy_store):
    """A float32 token track of the tiny model on the toy store; tests change what they need."""

    def make(**changes):
        base = get_track("smoke").replace(
            model="tiny", data=toy_store, batch_size=8, seq_len=SEQ, target_tokens=8 * SEQ * 30, precision="float32",
            eval_every=0, eval_batches=2, warmup_steps=1, log_every=1,
            optim=OptimConfig(muon_lr=0.02, adamw_lr=0.006, ortho_dtype="float32"),
        )
        return base.replace(**changes)

    return make
