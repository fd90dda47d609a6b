"""Batches of a token store for both trainers: the shuffled, prefetched train batches and the fixed validation ones.

Batch k depends only on (store, batch_size, seed, k), so a resumed run and the other framework see the same
tokens at the same step.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from jax_nano.data.token_store import DataError, TokenStore


class TrainLoader:
    """Shuffled global batches of train windows: batch k depends only on (store, batch_size, seed, k).

    Epoch e visits the windows in `default_rng((seed, e)).permutation(train_rows)` order in chunks
    of `batch_size`, dropping the last partial batch. Process p of P gets rows
    [p*B/P, (p+1)*B/P) of each global batch. A background thread keeps `prefetch` batches ready.
    """

    def __init__(
        self,
        store: TokenStore,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        prefetch: int = 2,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size <= 0 or batch_size % process_count:
            raise DataError(f"batch_size {batch_size} must be a positive multiple of process_count {process_count}")
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} is outside [0, {process_count})")
        self.steps_per_epoch = store.train_rows // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"store {store.path} has {store.train_rows} train windows of {store.seq_len} tokens, "
                f"fewer than one batch of {batch_size}; lower the batch size or prepare more data"
            )
        self.store, self.batch_size, self.seed = store, batch_size, int(seed)
        self.local_batch = batch_size // process_count
        self._lo = process_index * self.local_batch
        self.step = int(start_step)
        self._perm_lock = threading.Lock()
        self._perm_epoch, self._perm = -1, None
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._thread = None
        if prefetch > 0:
            self._queue = queue.Queue(maxsize=prefetch)
            self._thread = threading.Thread(target=self._fill, args=(self.step,), daemon=True, name="TrainLoader")
            self._thread.start()

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._perm_lock:
            if epoch != self._perm_epoch:
                self._perm = np.random.default_rng((self.seed, epoch)).permutation(self.store.train_rows)
                self._perm_epoch = epoch
            return self._perm

    def batch(self, step: int) -> np.ndarray:
        """This process's share of global batch `step` (random access; nothing is replayed)."""
        epoch, k = divmod(int(step), self.steps_per_epoch)
        start = k * self.batch_size + self._lo
        return self.store.rows("train", self._permutation(epoch)[start : start + self.local_batch])

    def _fill(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                item = (step, self.batch(step))
            except Exception as e:  # noqa: BLE001 - re-raised in the consumer's thread by __next__
                item = (step, e)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item[1], Exception):
                return
            step += 1

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        if self._queue is None:
            out = self.batch(self.step)
        else:
            if self._stop.is_set():
                raise StopIteration
            _, out = self._queue.get()
            if isinstance(out, Exception):
                raise out
        self.step += 1
        return out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def val_batches(store: TokenStore, batch_size: int, n_batches: int) -> np.ndarray:
    """The first `n_batches` (or as many full ones as exist) batches of validation windows, in order."""
    available = store.val_rows // batch_size
    if available == 0:
        raise DataError(
            f"store {store.path} has {store.val_rows} validation windows, fewer than one batch of {batch_size}; "
            "lower the eval batch size or prepare more data"
        )
    n = min(int(n_batches), available)
    return store.rows("val", np.arange(n * batch_size)).reshape(n, batch_size, store.seq_len)
