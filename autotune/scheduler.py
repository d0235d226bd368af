"""Task schedulers: which of a model's tasks gets the next batch of trials.

The goal is the fastest drop of the model's estimated latency, sum over tasks of
weight × best latency. `GradientScheduler` follows Ansor's (Zheng et al., OSDI 2020, §6):
after one warm-up batch per task, it gives the next batch to the task with the largest
estimated latency gain per trial, mixing the recent (backward) improvement rate with an
optimistic forward estimate, and gives up on a task whose best has not improved for a few
batches (unless every task has stalled). `RoundRobin` is the simple alternative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass
class TaskState:
    """What a scheduler knows of one task: its weight, trials so far and best latency after each batch."""

    weight: int
    trials: int = 0
    best: float | None = None  # seconds; None until a correct candidate was measured
    history: list[tuple[int, float | None]] = field(default_factory=list)  # (trials, best) after each batch
    exhausted: bool = False  # the space has no unmeasured candidate left

    def record_batch(self, trials: int, best: float | None) -> None:
        self.trials += trials
        self.best = best
        self.history.append((self.trials, best))

    @property
    def contribution(self) -> float | None:
        """This task's share of the estimated model latency (weight × best), None while unknown."""
        return self.weight * self.best if self.best is not None else None


class TaskScheduler(Protocol):
    def pick(self, states: Sequence[TaskState]) -> int | None:
        """Index of the task to tune next, or None when no task is worth more trials."""


class RoundRobin:
    """Each task in turn, skipping exhausted ones."""

    def __init__(self) -> None:
        self._next = 0

    def pick(self, states: Sequence[TaskState]) -> int | None:
        for offset in range(len(states)):
            index = (self._next + offset) % len(states)
            if not states[index].exhausted:
                self._next = index + 1
                return index
        return None


class GradientScheduler:
    """Ansor's gradient-based task scheduler.

    Gain per trial of task i: weight_i × (alpha × backward_i + (1 - alpha) × forward_i), where
    backward is the best-latency drop per trial over the last `window` batches and forward
    the optimistic best_i / trials_i (the next trials keep up the average improvement so far).
    A task whose best has not improved over its last `patience` batches is set aside while
    any other task still improves.
    """

    def __init__(self, alpha: float = 0.2, window: int = 3, patience: int = 3):
        self.alpha, self.window, self.patience = alpha, window, patience

    def pick(self, states: Sequence[TaskState]) -> int | None:
        live = [i for i, s in enumerate(states) if not s.exhausted]
        if not live:
            return None
        for i in live:  # warm-up: one batch per task, heaviest first (tasks come sorted)
            if not states[i].history:
                return i
        improving = [i for i in live if not self.stalled(states[i])] or live
        return max(improving, key=lambda i: (self.gain(states[i]), -states[i].trials))

    def gain(self, state: TaskState) -> float:
        """Estimated drop of weight × best latency per further trial (seconds per trial)."""
        if state.best is None or state.trials == 0:
            return float("inf")  # nothing correct yet: any result is a gain
        forward = state.best / state.trials
        return state.weight * (self.alpha * self._backward(state) + (1 - self.alpha) * forward)

    def stalled(self, state: TaskState) -> bool:
        recent = state.history[-(self.patience + 1):]
        if len(recent) <= self.patience or recent[0][1] is None:
            return False
        return all(best is not None and best >= recent[0][1] for _, best in recent[1:])

    def _backward(self, state: TaskState) -> float:
        past = state.history[-(self.window + 1):]
        (t0, b0), (t1, b1) = past[0], past[-1]
        if b0 is None or b1 is None or t1 <= t0:
            return 0.0
        return max(0.0, (b0 - b1) / (t1 - t0))


SCHEDULERS = {"gradient": GradientScheduler, "round-robin": RoundRobin}
