"""The speedrun driver shared by both trainers: clock, stop rule, evaluation, checkpoints, logging.

A trainer (jax_nano/train.py or torch_ref/train.py) only knows how to dispatch a step and read its loss;
everything a leaderboard depends on (what is timed, which step counts as the first under the target) is
decided here once, so the two frameworks are timed by the same rules.
"""

import time
from collections import deque
from dataclasses import dataclass, field

from tqdm import tqdm

from configs.tracks import Track
from jax_nano.core.guard import Guard


class Clock:
    """Active Training Time: runs only between `resume()` and `pause()`."""

    def __init__(self, already: float = 0.0):
        self.elapsed, self._since = already, None

    def resume(self):
        self._since = time.perf_counter()

    def pause(self):
        if self._since is not None:
            self.elapsed += time.perf_counter() - self._since
            self._since = None

    def read(self) -> float:
        return self.elapsed + (time.perf_counter() - self._since if self._since is not None else 0.0)


@dataclass
class Progress:
    """What a run has done so far; it is also what a checkpoint stores beside the weights."""

    next_step: int = 0
    active_time_s: float = 0.0
    eval_time_s: float = 0.0
    losses: list = field(default_factory=list)
    evals: list = field(default_factory=list)
    reached_step: int | None = None  # the first step whose train loss <= target (loss tracks)


def run(track: Track, trainer, loader, val_NBT, *, progress: Progress, log=None, stop_after: int | None = None,
        show_bar: bool = True, stop=None) -> Progress:
    """Train from `progress.next_step` until the track's stop rule (or `stop_after` steps in this training
    session, or a stop request: `stop.received` set by a signal, jax_nano/core/preemption.py, ends the session at
    the next step).

    Every loss and parameter norm goes through the divergence guard (jax_nano/core/guard.py), which raises
    `Diverged`.

    A trainer with `lag = 1` (JAX) has its step s loss read only after step s+1 is dispatched, so the host
    never stalls the device. When step s is the first under a loss track's target, step s+1 has already run:
    the trainer's `rewind()` returns to the state before it, so the weights, steps and tokens reported are
    those of the true first step under the target.
    """
    total = track.total_steps
    target = track.target_loss
    clock = Clock(progress.active_time_s)
    pending = deque()
    guard = Guard(trainer.cfg.vocab_size, track.divergence_guard)
    session_end = total if stop_after is None else min(total, progress.next_step + stop_after)
    bar = tqdm(total=total, initial=progress.next_step, disable=not show_bar, unit="step", dynamic_ncols=True,
               desc=f"{track.name} [{trainer.framework}]")

    def read_one():
        step, handle = pending.popleft()
        loss, param_norm = trainer.read(handle)
        guard.check(step, loss, param_norm)
        progress.losses.append(loss)
        elapsed = clock.read()
        tokens = (step + 1) * track.tokens_per_step
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / max(elapsed, 1e-9):,.0f}", refresh=False)
        if log is not None:
            log.write({"step": step, "loss": loss, "tokens": tokens, "active_time_s": elapsed})
        if target is not None and loss <= target:
            progress.reached_step = step

    def drain():
        while pending and progress.reached_step is None:
            read_one()

    def milestone(step_done: int):
        """Evaluate and checkpoint with the clock stopped; the pipeline is drained first so both see the
        weights after exactly `step_done` steps."""
        drain()
        if progress.reached_step is not None:
            return
        clock.pause()
        t0 = time.perf_counter()
        if track.eval_every and step_done % track.eval_every == 0 and step_done < total:
            metrics = trainer.evaluate(val_NBT)
            progress.evals.append({"step": step_done, **metrics})
            if log is not None:
                log.write({"step": step_done - 1, **metrics})
        progress.eval_time_s += time.perf_counter() - t0
        if track.checkpoint_every and step_done % track.checkpoint_every == 0:
            progress.next_step, progress.active_time_s = step_done, clock.elapsed
            trainer.save(progress)
        clock.resume()

    clock.resume()
    step = progress.next_step
    try:
        while step < session_end and progress.reached_step is None and not (stop and stop.received):
            handle = trainer.step(next(loader))
            pending.append((step, handle))
            step += 1
            if len(pending) > trainer.lag:
                read_one()
            if (track.eval_every and step % track.eval_every == 0) or (
                track.checkpoint_every and step % track.checkpoint_every == 0
            ):
                milestone(step)
        drain()
        if progress.reached_step is not None and step > progress.reached_step + 1:
            trainer.rewind()
        trainer.sync()
    finally:
        clock.pause()
        bar.close()
    done = progress.reached_step + 1 if progress.reached_step is not None else step
    progress.next_step, progress.active_time_s = done, clock.elapsed
    return progress


def finished(track: Track, progress: Progress) -> bool:
    return progress.reached_step is not None or progress.next_step >= track.total_steps
