"""Token stores: written atomically from streamed chunks, refused when damaged or mismatched, one line each."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jax_nano.data import tokenizer
from jax_nano.data.loader import TrainLoader
from jax_nano.data.token_store import FORMAT, SAMPLE, SAMPLE_DIR, DataError, open_store, require_tokens, write_store
from tests.data.stores import VOCAB, make_store, snapshot, take


def test_write_store_streams_chunks_and_drops_partial_tail(tmp_path):
    stream = np.arange(1000) % VOCAB
    header = write_store(
        tmp_path / "s",
        (stream[i : i + 37] for i in range(0, 1000, 37)),
        seq_len=64,
        vocab_size=VOCAB,
        source="t",
        tokenizer="none",
    )
    assert header["n_rows"] == 15 and header["dropped_tail_tokens"] == 1000 - 15 * 64
    s = open_store(tmp_path / "s")
    both = np.concatenate([s.rows("train", np.arange(s.train_rows)), s.rows("val", np.arange(s.val_rows))])
    assert sorted(map(tuple, both)) == sorted(map(tuple, stream[: 15 * 64].reshape(15, 64)))


def test_write_store_refuses_to_overwrite_existing_store(store_path):
    before = snapshot(store_path)
    with pytest.raises(DataError, match="already exists"):
        make_store(store_path, n_rows=10)
    assert snapshot(store_path) == before
    make_store(store_path, n_rows=10, overwrite=True)
    assert open_store(store_path).header["n_rows"] == 10
    assert not [p for p in store_path.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left
    (store_path.parent / "notes").mkdir()
    (store_path.parent / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not a token store"):
        make_store(store_path.parent / "notes", overwrite=True)
    assert (store_path.parent / "notes" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("tokens", "match"),
    [
        (np.array([[1, 2, VOCAB]]), "outside the vocabulary"),
        (np.array([[-1, 2, 3]]), "outside the vocabulary"),
        (np.zeros((0,), np.int64), "no complete row"),
        (np.array([1.5, 2.0]), "must be integers"),
    ],
)
def test_bad_tokens_raise_and_leave_existing_store_intact(store_path, tokens, match):
    before = snapshot(store_path)
    with pytest.raises(DataError, match=match):
        write_store(store_path, tokens, seq_len=3, vocab_size=VOCAB, source="t", tokenizer="none", overwrite=True)
    assert snapshot(store_path) == before
    open_store(store_path)


# --------------------------------------------------------------------------- opening bad stores


def test_missing_store_path_raises_with_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist.*prepare_data"):
        open_store(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a token store"):
        open_store(tmp_path / "empty")


def test_header_vocab_mismatch_raises(store_path):
    with pytest.raises(DataError, match=f"vocab {VOCAB}.*model has vocab 49152"):
        open_store(store_path, vocab_size=49152)


@pytest.mark.parametrize("seq_len", [5, 64, 0])
def test_seq_len_that_does_not_divide_rows_raises(store_path, seq_len):
    with pytest.raises(DataError, match="must divide"):
        open_store(store_path, seq_len=seq_len)


def test_truncated_token_file_raises(store_path):
    tokens = store_path / "tokens.bin"
    tokens.write_bytes(tokens.read_bytes()[:-2])
    with pytest.raises(DataError, match="truncated"):
        open_store(store_path)


def test_checksum_mismatch_raises(store_path):
    tokens = store_path / "tokens.bin"
    raw = bytearray(tokens.read_bytes())
    raw[100] ^= 1
    tokens.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupted"):
        open_store(store_path)
    open_store(store_path, verify=False)  # an explicit opt-out still opens it


def test_bad_header_raises(store_path):
    (store_path / "header.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        open_store(store_path)
    (store_path / "header.json").write_text(json.dumps({"format": FORMAT}))
    with pytest.raises(DataError, match="lacks"):
        open_store(store_path)


def test_too_few_tokens_names_have_and_need(store):
    require_tokens(store, store.train_rows * store.seq_len, "ok")
    with pytest.raises(DataError, match=r"has 1,152 train tokens, track 'speedrun' needs 41,000,000"):
        require_tokens(store, 41_000_000, "speedrun")
    with pytest.raises(DataError, match="fewer than one batch"):
        TrainLoader(store, batch_size=10_000, seed=0)


# --------------------------------------------------------------------------- ingestion (Hub code path on local data)



def test_embedded_sample_opens_and_verifies_checksum():
    s = open_store(SAMPLE, vocab_size=49152, seq_len=128, verify=True)
    assert s.header["tokenizer"] == tokenizer.NAME and s.n_tokens >= 200_000
    assert sum(f.stat().st_size for f in SAMPLE_DIR.iterdir()) < 1_000_000
    assert s.train_rows > 0 and s.val_rows > 0
    batch = take(TrainLoader(s, batch_size=8, seed=0), 1)[0]
    assert batch.shape == (8, 128) and batch.max() < 49152
