"""The batches both trainers read: deterministic, resumable, shared across processes, split from validation."""

from __future__ import annotations

import numpy as np
import pytest

from jax_nano.data.loader import TrainLoader, val_batches
from jax_nano.data.token_store import DataError, open_store, split_rows
from tests.data.stores import take

# --------------------------------------------------------------------------- loader determinism


def test_same_seed_gives_same_batches(store):
    a = take(TrainLoader(store, batch_size=8, seed=3), 30)
    b = take(TrainLoader(store, batch_size=8, seed=3), 30)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (8, 8) and a[0].dtype == np.int32


def test_different_seeds_give_different_order(store):
    a = take(TrainLoader(store, batch_size=8, seed=3), 5)
    b = take(TrainLoader(store, batch_size=8, seed=4), 5)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))


def test_resume_at_step_k_gives_batch_k_without_replay(store):
    full = take(TrainLoader(store, batch_size=8, seed=1), 40)  # 18 steps per epoch: crosses two epoch ends
    for k in (0, 5, 17, 18, 37):
        resumed = TrainLoader(store, batch_size=8, seed=1, start_step=k)
        assert resumed.step == k
        assert np.array_equal(take(resumed, 1)[0], full[k])
        assert np.array_equal(TrainLoader(store, batch_size=8, seed=1, prefetch=0).batch(k), full[k])


def test_prefetching_and_synchronous_loaders_agree(store):
    a = take(TrainLoader(store, batch_size=4, seed=9, prefetch=3), 12)
    b = take(TrainLoader(store, batch_size=4, seed=9, prefetch=0), 12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_every_train_window_appears_exactly_once_per_epoch(store):
    loader = TrainLoader(store, batch_size=6, seed=0, prefetch=0)
    per_epoch = loader.steps_per_epoch
    assert per_epoch == store.train_rows // 6
    for epoch in range(2):
        seen = np.concatenate([loader.batch(epoch * per_epoch + k) for k in range(per_epoch)])
        all_windows = store.rows("train", np.arange(store.train_rows))
        keys = {w.tobytes() for w in seen}
        assert len(keys) == len(seen)  # no repeats inside the epoch
        assert keys <= {w.tobytes() for w in all_windows}
        assert len(seen) == store.train_rows - store.train_rows % 6  # only the final partial batch is dropped


def test_train_and_val_windows_are_disjoint(store):
    train = {w.tobytes() for w in store.rows("train", np.arange(store.train_rows))}
    val = {w.tobytes() for w in store.rows("val", np.arange(store.val_rows))}
    assert train.isdisjoint(val)
    assert store.val_rows == 4 * 4 and store.train_rows == 36 * 4  # ceil(10% of 40 native rows), 4 windows each
    tr, va = split_rows(40)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == 40


def test_split_selects_same_rows_as_datasets_train_test_split():
    datasets = pytest.importorskip("datasets")
    for n in (40, 161, 1000):
        hf = datasets.Dataset.from_dict({"i": list(range(n))}).train_test_split(test_size=0.1, seed=42)
        train, val = split_rows(n)
        assert list(train) == hf["train"]["i"] and list(val) == hf["test"]["i"]


def test_process_shares_concatenate_to_global_batch(store):
    whole = TrainLoader(store, batch_size=8, seed=2, prefetch=0)
    parts = [TrainLoader(store, batch_size=8, seed=2, prefetch=0, process_index=p, process_count=4) for p in range(4)]
    for step in (0, 7, 20):
        shares = [p.batch(step) for p in parts]
        assert all(s.shape == (2, 8) for s in shares)
        assert np.array_equal(np.concatenate(shares), whole.batch(step))
    with pytest.raises(DataError, match="multiple of process_count"):
        TrainLoader(store, batch_size=6, seed=0, process_count=4)


def test_val_batches_are_fixed_and_capped_to_full_batches(store):
    a = val_batches(store, batch_size=4, n_batches=100)
    assert a.shape == (4, 4, 8) and a.dtype == np.int32  # 16 val windows -> 4 full batches
    assert np.array_equal(a, val_batches(store, batch_size=4, n_batches=100))
    assert np.array_equal(val_batches(store, 4, 2), a[:2])
    with pytest.raises(DataError, match="fewer than one batch"):
        val_batches(store, batch_size=17, n_batches=1)


def test_windows_are_slices_of_native_rows(store_path):
    native = open_store(store_path)
    cut = open_store(store_path, seq_len=8)
    assert np.array_equal(cut.rows("train", np.arange(4)).reshape(-1), native.rows("train", [0])[0])


# --------------------------------------------------------------------------- store writing

