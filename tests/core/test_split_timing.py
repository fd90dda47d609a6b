"""The step split: the shared medians, and both frameworks' halves on the tiny model."""

import numpy as np
import pytest

from jax_nano.core import split_timing
from jax_nano.run.speedrun import make_trainer


def test_medians_leave_out_the_warm_batch_and_hand_the_gradients_on(monkeypatch):
    ticks = iter([0, 50, 51, 52,  # the warm batches: far slower, and left out
                  60, 80, 90, 91,
                  100, 103, 104, 110,
                  200, 201, 203, 206,
                  300, 302, 305, 309])
    monkeypatch.setattr(split_timing.time, "perf_counter", lambda: next(ticks))
    handed, stepped = [], []

    class Trainer:  # the loop's side of the trainer interface
        def step(self, ids):
            return f"step on {ids}"

        def read(self, pending):
            stepped.append(pending)

        def sync(self):
            pass

    times = split_timing.split_medians(Trainer(), ["b0", "b1", "b2", "b3", "b4"], lambda ids: f"grads of {ids}",
                                       handed.append)
    assert handed == ["grads of b0", "grads of b1", "grads of b2", "grads of b3", "grads of b4"]
    assert stepped == ["step on b0", "step on b1", "step on b2", "step on b3", "step on b4"]
    assert times == {"fwd_bwd_s": 2, "optimizer_s": 2, "step_s": 4}


@pytest.mark.long  # three JAX compiles of the tiny model; the bookkeeping above is the quick suite
@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_each_framework_times_its_halves_of_a_real_step(framework, toy_track, tmp_path):
    track = toy_track(framework=framework)
    trainer = make_trainer(track, tmp_path / framework)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, trainer.cfg.vocab_size, (track.batch_size, track.seq_len)) for _ in range(5)]
    trainer.setup(batches[:1], None)
    module = {"jax": "jax_nano.step_split", "torch": "torch_ref.step_split"}[framework]
    times = __import__(module, fromlist=["split_times"]).split_times(trainer, batches[1:])
    trainer.close()
    assert set(times) == set(split_timing.HALVES)
    assert all(0 < seconds < 60 for seconds in times.values()), times
