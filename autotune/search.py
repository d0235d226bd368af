"""Search strategies: which candidates to measure next.

A strategy is asked for a batch (`ask`) and told the measured records (`tell`), the shape of
MetaSchedule's generate_measure_candidates / notify_runner_results, so that a model-guided
strategy plugs into the same tuning loop. Candidates already measured for this workload and
target (in this session or any earlier one) are never proposed again.
"""

from __future__ import annotations

import random
from typing import Iterable, Protocol

from .records import TrialRecord
from .search_space import Candidate, SearchSpace

# How many consecutive duplicate draws mean that the space is (nearly) exhausted.
_MAX_DUPLICATE_DRAWS = 200


class SearchStrategy(Protocol):
    def ask(self, n: int) -> list[Candidate]: ...

    def tell(self, records: Iterable[TrialRecord]) -> None: ...


class RandomSearch:
    """Uniform random sampling of the space, without repeats."""

    def __init__(self, space: SearchSpace, seed: int | None = None, measured: Iterable[str] = ()):
        self.space = space
        self.rng = random.Random(seed)
        self.seen: set[str] = set(measured)

    def ask(self, n: int) -> list[Candidate]:
        batch: list[Candidate] = []
        duplicates = 0
        if self.space.default_candidate().key not in self.seen:
            batch.append(self._take(self.space.default_candidate()))
        while len(batch) < n and duplicates < _MAX_DUPLICATE_DRAWS:
            candidate = self.space.sample(self.rng)
            if candidate.key in self.seen:
                duplicates += 1
                continue
            duplicates = 0
            batch.append(self._take(candidate))
        return batch

    def tell(self, records: Iterable[TrialRecord]) -> None:
        for record in records:
            self.seen.add(record.candidate_key)

    def _take(self, candidate: Candidate) -> Candidate:
        self.seen.add(candidate.key)
        return candidate
