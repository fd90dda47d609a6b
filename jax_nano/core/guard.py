"""Stopping a run that has diverged: a non-finite loss at once, and a finite divergence after a streak of steps.

A run at a learning rate far too high can stay finite: its loss sits at ln(vocab), the loss of a uniform
prediction, while its weights grow without bound; every checkpoint it keeps after that is a dead model. The guard
reads the loss and the global parameter norm that the trainer already returns for each step (read one step late
with the loss, so it adds no host sync) and stops the run like a non-finite loss does.

The rule, with a track's `divergence_guard` on (the default): from step GUARD_AFTER on, a loss at or above
ln(vocab) - GUARD_MARGIN, or a parameter norm above GUARD_MAX_NORM, for GUARD_PATIENCE steps in a row.
"""

import math

from configs.errors import UserError

GUARD_AFTER = 50  # steps before the guard looks: a fresh model starts near ln(vocab)
GUARD_PATIENCE = 10  # consecutive steps a sign of divergence must last
GUARD_MARGIN = 0.1  # nats below ln(vocab) that still count as "no better than uniform"
# Freshly initialized (torch_ref), the 151M model's parameters have a global L2 norm of 313 and the 88M's 248: the
# bound leaves a run a factor of 300 above where it starts.
GUARD_MAX_NORM = 1e5


class Diverged(UserError):
    """The run diverged; `from_step` is the first step whose weights are suspect (checkpoints from there on are
    dropped). The message names the step, the reason and, once the driver has looked, the checkpoint kept."""

    def __init__(self, step: int, reason: str, from_step: int | None = None, kept: str | None = None):
        super().__init__(f"{reason} at step {step}; stopping" + (f" ({kept})" if kept else ""))
        self.step, self.reason = step, reason
        self.from_step = step if from_step is None else from_step


class Guard:
    """Fed every step's (loss, parameter norm) in order; raises Diverged when the rule above is met."""

    def __init__(self, vocab_size: int, enabled: bool = True):
        self.uniform = math.log(vocab_size)
        self.enabled, self.after, self.patience, self.max_norm = enabled, GUARD_AFTER, GUARD_PATIENCE, GUARD_MAX_NORM
        self.streak = 0

    def check(self, step: int, loss: float, param_norm: float) -> None:
        if not math.isfinite(loss):
            raise Diverged(step, f"non-finite train loss {loss}")
        if not self.enabled or step < self.after:
            return
        flat = loss >= self.uniform - GUARD_MARGIN
        huge = not math.isfinite(param_norm) or param_norm > self.max_norm
        self.streak = self.streak + 1 if flat or huge else 0
        if self.streak >= self.patience:
            reason = (f"train loss {loss:.4f}, no better than uniform prediction (ln {math.exp(self.uniform):.0f} = "
                      f"{self.uniform:.4f})" if flat else
                      f"parameter norm {param_norm:.3g} above {self.max_norm:g}")
            raise Diverged(step, f"diverged: {reason} for {self.patience} steps in a row (--no-divergence-guard "
                                 "turns this check off)", step - self.patience + 1)
