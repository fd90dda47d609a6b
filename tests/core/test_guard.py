"""The divergence guard: a finite loss stuck at ln(vocab), or weights blowing up, for a streak of steps."""

import math

import pytest

from jax_nano.core import guard
from jax_nano.core.guard import Diverged, Guard

UNIFORM = math.log(512)


def feed(g: Guard, losses, norm=10.0):
    for step, loss in enumerate(losses):
        g.check(step, loss, norm)


def test_non_finite_loss_stops_at_once_even_with_the_guard_off():
    for enabled in (True, False):
        with pytest.raises(Diverged, match=r"non-finite train loss nan at step 0"):
            Guard(512, enabled).check(0, math.nan, 1.0)


def test_a_loss_at_uniform_for_a_streak_stops_the_run_after_the_grace_steps():
    after, patience = guard.GUARD_AFTER, guard.GUARD_PATIENCE
    stuck = [UNIFORM] * (after + patience - 1)
    feed(Guard(512), stuck)  # the grace steps do not count: one short of a streak
    with pytest.raises(Diverged) as info:
        feed(Guard(512), stuck + [UNIFORM])
    e = info.value
    assert e.step == after + patience - 1 and e.from_step == after
    assert "no better than uniform prediction" in str(e) and "--no-divergence-guard" in str(e)
    feed(Guard(512, enabled=False), stuck * 3)


def test_a_learning_run_is_never_stopped_and_a_streak_must_be_unbroken():
    healthy = [UNIFORM + 0.3] * 5 + [UNIFORM - 1.0 - 0.01 * i for i in range(200)]
    feed(Guard(512), healthy)
    flicker = [UNIFORM - 1.0] * guard.GUARD_AFTER + [UNIFORM, UNIFORM - 1.0] * 50
    feed(Guard(512), flicker)


def test_a_parameter_norm_past_the_bound_stops_the_run():
    g = Guard(512)
    with pytest.raises(Diverged, match=r"parameter norm 5e\+16 above") as info:
        for step in range(guard.GUARD_AFTER + guard.GUARD_PATIENCE):
            g.check(step, UNIFORM - 2.0, 5e16)
    assert info.value.step == guard.GUARD_AFTER + guard.GUARD_PATIENCE - 1
