"""Search strategies: which candidates to measure next.

A strategy is asked for a batch (`ask`) and told the measured records (`tell`), the shape of
MetaSchedule's generate_measure_candidates / notify_runner_results. Candidates already measured
for this workload and target (in this session or an earlier one) are never proposed again.

- RandomSearch samples the space uniformly.
- ModelGuidedSearch evolves a population (seeded with the best measured candidates) by
  mutation and crossover of decisions, scores it with the XGBoost cost model, and measures the
  top of the ranking plus a share of exploration: mostly the best-scored of the fresh random
  draws the evolution started from, and some unscored random draws.
"""

from __future__ import annotations

import copy
import random
from typing import Any, Iterable, Protocol

import numpy as np

from .cost_model import CostModel, latency_or_nan
from .features import FeatureExtractor
from .records import TrialRecord
from .search_space import (Candidate, SearchSpace, draw_tile_level, draw_unroll, largest_unroll_step,
                           leave_to_llvm_vectorizer, loop_vector_choices, redraw_micro_kernel, redraw_register_tile,
                           redraw_vector_axis, rfactor_choices, smallest_prime_factor)

# How many consecutive duplicate draws mean that the space is (nearly) exhausted.
_MAX_DUPLICATE_DRAWS = 200
# Feature rows kept between batches (about 2 KB each): each batch mutates the same best parents again,
# and the rows of what it measures are those it scored, so most are asked for more than once.
_MAX_KEPT_ROWS = 20_000


class SearchStrategy(Protocol):
    def ask(self, n: int) -> list[Candidate]: ...

    def tell(self, records: Iterable[TrialRecord]) -> None: ...


class RandomSearch:
    """Uniform random sampling of the space, without repeats; the untuned default comes first."""

    def __init__(
        self, space: SearchSpace, seed: int | None = None, measured: Iterable[str] = (), seeds: Iterable[Candidate] = ()
    ):
        self.space = space
        self.rng = random.Random(seed)
        self.seen: set[str] = set(measured)
        # Starting points to measure first (the best schedules of a similar device), when valid here.
        self.seeds: list[Candidate] = [c for c in seeds if c.key not in self.seen]

    def ask(self, n: int) -> list[Candidate]:
        batch: list[Candidate] = []
        if n > 0 and self.space.default_candidate().key not in self.seen:
            batch.append(self._take(self.space.default_candidate()))
        while self.seeds and len(batch) < n:
            seed = self.seeds.pop(0)
            if seed.key not in self.seen and self.space.is_valid(seed):
                batch.append(self._take(seed))
        duplicates = 0
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


class ModelGuidedSearch(RandomSearch):
    """Evolutionary search scored by the cost model, with epsilon-greedy exploration."""

    def __init__(
        self,
        space: SearchSpace,
        extractor: FeatureExtractor,
        model: CostModel,
        *,
        seed: int | None = None,
        measured: Iterable[TrialRecord] = (),
        seeds: Iterable[Candidate] = (),
        epsilon: float = 0.2,
        population: int = 64,
        generations: int = 3,
        scored_exploration: float = 0.67,
        carry: int = 48,
    ):
        measured = list(measured)
        super().__init__(space, seed, (r.candidate_key for r in measured), seeds)
        self.extractor = extractor
        self.model = model
        self.epsilon = epsilon
        # The share of the exploration slots given to the best-scored of this batch's fresh random draws
        # (new ground, but not what the model scores worst), the rest to unscored random draws, which
        # keep some data the model did not choose. 0.67 (2 of a batch of 16's 3 slots): 0.975x the
        # bests' time over 28 paired tunes (bench/RESULTS.md, 2026-12-06).
        self.scored_exploration = scored_exploration
        self.population = population
        self.generations = generations
        # How many unmeasured candidates of the last batch's final population join the next batch's
        # first one (re-scored by the updated model), so evolution goes on across batches instead of
        # restarting from the measured best and fresh draws. 48 at 256 trials: 0.95x the bests' time
        # over 16 paired tunes (depthwise 0.82, the tiled contractions 1.00; two other depthwise
        # shapes 0.72), 0.96x the wall time; neutral at 64 trials (1.02 +- 0.04, 20 pairs;
        # bench/RESULTS.md, 2026-12-07). 0: no carry.
        self.carry = carry
        self._carried: list[Candidate] = []  # the last evolution's final population
        self.measured: list[tuple[float, Candidate]] = [
            (latency_or_nan(r), Candidate(r.decisions)) for r in measured if r.decisions  # trace-only: not ours to mutate
        ]
        self.told_features: dict[str, np.ndarray] = {}
        self._rows: dict[str, np.ndarray | None] = {}  # features by candidate key; None: TVM rejects it
        self._applied: dict[str, Any] = {}  # schedules of sampled candidates whose rows are not computed yet

    def ask(self, n: int) -> list[Candidate]:
        if not self.model.is_trained or self.seeds:
            return super().ask(n)
        n_explore = int(round(self.epsilon * n)) if n > 1 else 0
        scored, drawn = self._evolve()
        batch = [self._take(c) for c in self._best_unseen(scored.values(), n - n_explore)]
        fresh = [scored[c.key] for c in drawn if c.key in scored]
        batch += [self._take(c) for c in self._best_unseen(fresh, int(round(self.scored_exploration * n_explore)))]
        return batch + super().ask(n - len(batch))

    def tell(self, records: Iterable[TrialRecord]) -> None:
        records = list(records)
        super().tell(records)
        candidates = [Candidate(r.decisions) for r in records]
        self.measured += [(latency_or_nan(r), c) for r, c in zip(records, candidates)]
        rows = self._features(candidates)  # those it chose by score were scored with these rows
        features = np.stack(rows) if rows and all(r is not None for r in rows) else self.extractor.extract(candidates)
        self.model.update(features, [latency_or_nan(r) for r in records], [r.workload_key for r in records])
        self.told_features = {r.candidate_key: row for r, row in zip(records, features)}  # for the database's cache

    # -- evolution ------------------------------------------------------------------------

    def _ranked_unmeasured(self, n: int) -> list[Candidate]:
        """The n unmeasured candidates with the best predicted scores after a few generations."""
        return self._best_unseen(self._evolve()[0].values(), n)

    def _best_unseen(self, scored: Iterable[tuple[float, Candidate]], n: int) -> list[Candidate]:
        """The n best-scored of `scored` not measured nor taken yet."""
        ranked = sorted(scored, key=lambda sc: -sc[0])
        return [c for _, c in ranked if c.key not in self.seen][:n]

    def _evolve(self) -> tuple[dict[str, tuple[float, Candidate]], list[Candidate]]:
        """Every candidate scored in a few generations of evolution (by key: score, candidate), and
        the fresh random draws its first population started with. The first population also holds
        up to `carry` unmeasured candidates of the last evolution's final population."""
        scored: dict[str, tuple[float, Candidate]] = {}
        parents, drawn = self._initial_population()
        carried = [c for c in self._carried if c.key not in self.seen][: self.carry]
        population = self._score(parents + carried + drawn, scored)
        for _ in range(self.generations):
            children = [self._mutate(self.rng.choice(population)) for _ in range(self.population)]
            children += [self._crossover(*self.rng.sample(population, 2)) for _ in range(self.population // 4)
                         if len(population) > 1]
            population = self._score(population + children, scored)
        self._carried = population
        return scored, drawn

    def _initial_population(self) -> tuple[list[Candidate], list[Candidate]]:
        """The best measured candidates (a quarter of the population) and fresh random draws for the rest."""
        best = sorted(((lat, c) for lat, c in self.measured if np.isfinite(lat)), key=lambda lc: lc[0])
        parents = [c for _, c in best[: self.population // 4]]
        drawn = []
        for candidate, sch in self.space.sample_applied_many(self.rng, self.population - len(parents)):
            self._applied[candidate.key] = sch  # for _features, which would apply it again
            drawn.append(candidate)
        return parents, drawn

    def _score(self, candidates: list[Candidate], scored: dict[str, tuple[float, Candidate]]) -> list[Candidate]:
        """Score new candidates (valid ones only) and keep the best `population` of them."""
        fresh = list({c.key: c for c in candidates if c.key not in scored}.values())
        rows = self._features(fresh)
        valid = [(c, row) for c, row in zip(fresh, rows) if row is not None]
        if valid:
            predictions = self.model.predict(np.stack([row for _, row in valid]), group=self.space.workload.key)
            for (candidate, _), score in zip(valid, predictions):
                scored[candidate.key] = (float(score), candidate)
        keys = dict.fromkeys(c.key for c in candidates if c.key in scored)  # in order: ties keep it, whatever the hash seed
        top = sorted((scored[k] for k in keys), key=lambda sc: -sc[0])
        return [c for _, c in top[: self.population]]

    def _features(self, candidates: list[Candidate]) -> list[np.ndarray | None]:
        """Feature rows of the candidates (None for one TVM rejects), computed once per candidate and
        kept between batches."""
        new = [c for c in {c.key: c for c in candidates}.values() if c.key not in self._rows]
        unapplied = [c for c in new if c.key not in self._applied]
        schedules = {**dict(zip((c.key for c in unapplied), self.space.try_apply_all(unapplied))), **self._applied}
        applied = [(c, schedules[c.key]) for c in new]
        self._applied.clear()  # those not asked for now were already scored (or are duplicates)
        valid = [(c, s) for c, s in applied if s is not None]
        self._rows.update({c.key: None for c in new})
        if valid:
            extracted = self.extractor.extract([c for c, _ in valid], [s for _, s in valid])
            self._rows.update({c.key: row for (c, _), row in zip(valid, extracted)})
        rows = [self._rows[c.key] for c in candidates]
        for key in list(self._rows)[: max(0, len(self._rows) - _MAX_KEPT_ROWS)]:  # the first computed go first
            del self._rows[key]
        return rows

    def _mutate(self, parent: Candidate) -> Candidate:
        decisions = copy.deepcopy(parent.decisions)
        blocks = decisions.get("blocks", {})
        if not blocks or self.rng.random() < 0.15:
            decisions["unroll"] = draw_unroll(self.space.config, self.rng)
            return Candidate(decisions)
        name = self.rng.choice(sorted(blocks))
        rule = next(r for r in self.space.rules if r.block == name)
        config = self.space.config
        if rule.rule == "tile" and self._chance(config.unvectorized_tile_probability):
            leave_to_llvm_vectorizer(blocks[name]["spatial"])
            decisions["unroll"] = largest_unroll_step(config)  # as SearchSpace._draw gives such tiles
        elif rule.rule == "tile" and self._chance(config.micro_kernel_probability):
            redraw_micro_kernel(rule, blocks[name], config, self.rng, self.space.registers)
            decisions["unroll"] = draw_unroll(config, self.rng)
        else:
            _mutate_block(blocks[name], rule, self.space, self.rng)
        return Candidate(self.space.constrain(decisions))

    def _chance(self, probability: float) -> bool:
        """Whether a mutation of its own happens, at `probability`: a tile for LLVM's loop vectorizer
        (search_space.leave_to_llvm_vectorizer), as often as the space draws such tiles, or a register
        kernel redrawn whole (search_space.redraw_micro_kernel). Why mutations of their own: moving one
        factor at a time, evolution would need several steps to reach either, and the steps between
        score badly. At probability 0 (the rule off) no random number is drawn, so searches are as before."""
        return probability > 0 and self.rng.random() < probability

    def _crossover(self, a: Candidate, b: Candidate) -> Candidate:
        blocks_a, blocks_b = a.decisions.get("blocks", {}), b.decisions.get("blocks", {})
        if set(blocks_a) != set(blocks_b):
            return a
        blocks = {name: copy.deepcopy(self.rng.choice([blocks_a[name], blocks_b[name]])) for name in blocks_a}
        unroll = self.rng.choice([a.decisions.get("unroll", 0), b.decisions.get("unroll", 0)])
        return Candidate(self.space.constrain({**a.decisions, "blocks": blocks, "unroll": unroll}))


def _mutate_block(block: dict[str, Any], rule: Any, space: SearchSpace, rng: random.Random) -> None:
    """Change one decision of a block in place: move a factor between tile levels, or redraw a choice."""
    config = space.config
    if "spatial" in block:
        choice = rng.choice(["tile", "tile", "tile", "register_tile", "write_level", "accumulator", "vector_axis", "pack"])
        if choice == "tile":
            _move_factor(block, rng)
        elif choice == "register_tile":
            redraw_register_tile(rule, block, config, rng, space.registers)
        elif choice == "write_level":
            block["write_level"] = rng.choice(config.write_levels)
        elif choice == "accumulator":
            block["accumulator"] = rng.choice(config.accumulator_scopes)
        elif choice == "vector_axis":
            redraw_vector_axis(rule, block, config, rng)
        else:
            block["pack"] = rng.choice(config.pack_levels)
        return
    keys = [k for k in ("depth", "parallel", "vector", "inline", "rfactor") if k in block]
    if rule.rule == "loops" and rule.consumer:  # a tiled block's producer: where in its tiles
        keys.append("at")
    key = rng.choice(keys)
    if key == "at":
        block["at"] = draw_tile_level(config, rng)
        if not block["at"]:
            block.pop("at")
    elif key == "inline":
        block["inline"] = not block["inline"]
    elif key == "rfactor":
        block["rfactor"] = rng.choice(rfactor_choices(rule, config))
    elif key == "depth":
        block["depth"] = rng.choice(rule.depths)
    elif key == "parallel":
        block["parallel"] = rng.randint(0, len(rule.spatial))
    else:
        block["vector"] = rng.choice(loop_vector_choices(rule, config, block["parallel"]))


def _move_factor(block: dict[str, Any], rng: random.Random) -> None:
    """Move a prime factor of one tile level to another level of the same loop (product unchanged)."""
    loops = [f for f in block["spatial"] + block["reduction"] if max(f) > 1]
    if not loops:
        return
    factors = rng.choice(loops)
    source = rng.choice([i for i, f in enumerate(factors) if f > 1])
    dest = rng.choice([i for i in range(len(factors)) if i != source])
    prime = smallest_prime_factor(factors[source]) if rng.random() < 0.5 else _random_prime_factor(factors[source], rng)
    factors[source] //= prime
    factors[dest] *= prime


def _random_prime_factor(n: int, rng: random.Random) -> int:
    primes, m, p = [], n, 2
    while m > 1:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    return rng.choice(primes)
