"""Features, the XGBoost cost model, and the model-guided search."""

import os
import random
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from autotune import ops
from autotune.cost_model import LOG_FLOOR, CostModel, relative_log_throughput, warm_start
from autotune.database import Database
from autotune.features import FEATURE_LENGTH, FEATURE_VERSION, FeatureExtractor
from autotune.records import Status, TrialRecord
from autotune.search import ModelGuidedSearch
from autotune.search_space import Candidate, SearchSpace, unvectorized
from autotune.target import resolve_target


@pytest.fixture(scope="module")
def hw():
    return resolve_target("llvm")


@pytest.mark.parametrize("op,shape", [("matmul", "32,48,16"), ("softmax", "8,64"), ("conv2d_nchw", "1,4,8,8,4,3,3")])
def test_features_are_fixed_length_and_deterministic(op, shape, hw):
    space = SearchSpace(ops.make(op, shape))
    candidates = [space.sample(random.Random(i)) for i in range(4)] + [space.default_candidate()]
    first = FeatureExtractor(space, hw).extract(candidates)
    again = FeatureExtractor(space, hw).extract(candidates)
    assert first.shape == (5, FEATURE_LENGTH) and first.dtype == np.float32
    assert np.array_equal(first, again) and np.isfinite(first).all()


def test_relative_log_throughput_per_workload_clipped():
    labels = relative_log_throughput(np.array([2.0, 1.0, np.nan, 1000.0, 10.0, 5.0]), ["a", "a", "a", "a", "b", "b"])
    np.testing.assert_allclose(labels, [-1.0, 0.0, -LOG_FLOOR - 1, -LOG_FLOOR, -1.0, 0.0])


def test_store_features_are_relative_to_the_workload_size(hw):
    """The same schedule of a matmul twice as large in every dimension keeps its op and byte ratios."""
    from autotune.features import _OP_COUNT_COLUMNS, _STORE_WIDTH

    small, large = (SearchSpace(ops.make("matmul", shape)) for shape in ("64,64,64", "128,128,128"))
    f_small, f_large = (FeatureExtractor(s, hw).extract([s.default_candidate()])[0] for s in (small, large))
    float_mad = _OP_COUNT_COLUMNS[0]
    assert f_small[float_mad] != 0 and abs(f_small[float_mad] - f_large[float_mad]) < 0.1
    assert np.isfinite(f_small[: 3 * _STORE_WIDTH]).all()


def _synthetic(n, rng):
    """An easy case: latency grows with the first feature, the rest is noise."""
    x = rng.random((n, FEATURE_LENGTH)).astype(np.float32)
    return x, 1e-3 * (1.0 + 10.0 * x[:, 0])


def _spearman(a, b):
    """Rank correlation of two vectors (the correlation of their ranks)."""
    ranks = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    return np.corrcoef(ranks(a), ranks(b))[0, 1]


def test_model_ranks_an_easy_case_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x, latency = _synthetic(400, rng)
    model = CostModel()
    assert not model.is_trained and (model.predict(x) == 0).all()
    model.fit(x[:350], latency[:350], ["w"] * 350)
    predicted = model.predict(x[350:])
    order_true = np.argsort(latency[350:])
    assert _spearman(predicted, -latency[350:]) > 0.8  # noise alone gives ~0
    assert set(np.argsort(-predicted)[:5]) & set(order_true[:10])
    loaded = CostModel.load(model.save(), trained_on=350)
    np.testing.assert_allclose(loaded.predict(x[350:]), predicted, rtol=1e-6)


def test_update_retrains_only_when_data_grew_enough():
    rng = np.random.default_rng(1)
    x, latency = _synthetic(100, rng)
    model = CostModel()
    assert not model.update(x[:10], latency[:10], ["w"] * 10)  # below the minimum: still untrained
    assert model.update(x[10:40], latency[10:40], ["w"] * 30) and model.trained_on == 40
    assert not model.update(x[40:45], latency[40:45], ["w"] * 5)  # +12%: not yet
    assert model.update(x[45:50], latency[45:50], ["w"] * 5) and model.trained_on == 50


def test_updates_between_fits_learn_the_new_workload_own_rows():
    """A model fitted on workload "a" (faster with a small feature 0) ranks workload "b" (faster with
    a small feature 1) no better than chance; b's rows, too few for a refit, are learned by b's
    residual booster, and a's predictions do not change."""
    rng = np.random.default_rng(2)
    x = rng.random((300, FEATURE_LENGTH)).astype(np.float32)
    latency_a, latency_b = 1e-3 * (1 + 10 * x[:200, 0]), 1e-3 * (1 + 10 * x[200:, 1])
    model = CostModel()
    model.fit(x[:200], latency_a, ["a"] * 200)
    spearman_b = lambda: _spearman(model.predict(x[238:], "b"), -latency_b[38:])  # noqa: E731
    before, predicted_a = spearman_b(), model.predict(x[:200], "a")
    for start in (200, 219):  # 238 rows: 1 short of the refit at +20%
        assert not model.update(x[start:start + 19], latency_b[start - 200:start - 181], ["b"] * 19)
    assert model.trained_on == 200 and set(model.residuals) == {"b"}
    assert before < 0.3 and spearman_b() > before + 0.3
    np.testing.assert_array_equal(model.predict(x[:200], "a"), predicted_a)
    assert model.update(x[238:250], latency_b[38:50], ["b"] * 12) and not model.residuals  # refit: b is in the fit


def _records(space, hw, latencies):
    rng = random.Random(0)
    out = []
    for latency in latencies:
        candidate = space.sample(rng)
        status = Status.OK if latency else Status.RUN_ERROR
        out.append(TrialRecord(space.workload.key, hw.key, candidate.key, candidate.decisions, status,
                               latencies=(latency,) * 3 if latency else ()))
    return out


def test_warm_start_trains_on_every_workload_of_the_target_and_reloads(tmp_path, hw):
    with Database(tmp_path / "t.db") as db:
        for op, shape in [("matmul", "32,32,32"), ("dense", "16,32,32")]:
            space = SearchSpace(ops.make(op, shape))
            db.commit_workload(space.workload)
            for record in _records(space, hw, [1e-3 * (1 + i % 7) if i % 9 else None for i in range(24)]):
                db.commit_trial(record)
        model = warm_start(db, hw, space.config)
        assert model.is_trained and model.trained_on == 48 and len(set(model.groups)) == 2
        db.save_model(hw.key, FEATURE_VERSION, model.trained_on, model.save())
        again = warm_start(db, hw, space.config)  # same records: the saved model is loaded, not refitted
        probe = FeatureExtractor(space, hw).extract([space.sample(random.Random(9))])
        np.testing.assert_allclose(again.predict(probe), model.predict(probe), rtol=1e-6)


def test_warm_start_keeps_the_features_it_computed(tmp_path, hw, monkeypatch):
    with Database(tmp_path / "t.db") as db:
        space = SearchSpace(ops.make("matmul", "32,32,32"))
        db.commit_workload(space.workload)
        records = _records(space, hw, [1e-3 * (1 + i % 5) for i in range(20)])
        for record in records:
            db.commit_trial(record)
        first = warm_start(db, hw, space.config)
        kept = db.cached_features(space.workload.key, hw.key, FEATURE_VERSION)
        assert set(kept) == {r.candidate_key for r in records}
        assert db.cached_features(space.workload.key, hw.key, FEATURE_VERSION + 1) == {}  # per feature version

        def replay(*args, **kwargs):
            raise AssertionError("features of kept records were recomputed")
        monkeypatch.setattr(FeatureExtractor, "extract", replay)
        again = warm_start(db, hw, space.config)
        np.testing.assert_array_equal(again.features, first.features)


def test_warm_start_ignores_a_model_saved_for_older_features(tmp_path, hw):
    with Database(tmp_path / "t.db") as db:
        space = SearchSpace(ops.make("matmul", "32,32,32"))
        db.commit_workload(space.workload)
        for record in _records(space, hw, [1e-3 * (1 + i % 5) for i in range(20)]):
            db.commit_trial(record)
        stale = CostModel()
        stale.fit(np.zeros((20, FEATURE_LENGTH)), np.arange(1, 21, dtype=float), ["w"] * 20)
        db.save_model(hw.key, FEATURE_VERSION - 1, 20, stale.save())  # same record count, older features
        model = warm_start(db, hw, space.config)
        assert model.is_trained and model.save() != stale.save()


def test_guided_search_never_repeats_and_follows_the_model(hw):
    space = SearchSpace(ops.make("matmul", "64,64,64"))
    extractor = FeatureExtractor(space, hw)
    measured = _records(space, hw, [1e-3] * 8)
    model = CostModel()
    search = ModelGuidedSearch(space, extractor, model, seed=0, measured=measured, population=16, generations=1)
    untrained = search.ask(4)  # untrained: random exploration, default first
    assert untrained[0].key == space.default_candidate().key
    # Train a model that loves large vector widths, then check that the search follows it.
    pool = [space.sample(random.Random(i)) for i in range(60)]
    features = extractor.extract(pool)
    vector = np.array([c.decisions["blocks"]["C"]["spatial"][-1][-1] for c in pool], dtype=float)
    model.fit(features, 1e-3 / vector, ["w"] * len(pool))
    batch = search.ask(10)
    keys = [c.key for c in batch]
    assert len(set(keys)) == len(keys)
    assert not set(keys) & {r.candidate_key for r in measured} and not set(keys) & {c.key for c in untrained}
    guided = [c.decisions["blocks"]["C"]["spatial"][-1][-1] for c in batch[: 8]]
    assert np.mean(guided) > np.mean(vector)


def _small_trained_search(hw) -> ModelGuidedSearch:
    """Model-guided search of a 64^3 matmul whose model is fitted on 40 sampled candidates."""
    space = SearchSpace(ops.make("matmul", "64,64,64"))
    extractor = FeatureExtractor(space, hw)
    pool = [space.sample(random.Random(i)) for i in range(40)]
    model = CostModel()
    model.fit(extractor.extract(pool), [1e-3 * (1 + i % 7) for i in range(40)], ["w"] * 40)
    return ModelGuidedSearch(space, extractor, model, seed=0, population=16, generations=2)


def test_guided_search_computes_each_candidates_features_once(hw):
    """Batches mutate the same best parents again, and what is measured was scored: features are kept."""
    search = _small_trained_search(hw)
    space, extractor = search.space, search.extractor
    fresh_extract, extracted = extractor.extract, []

    def counting(candidates, schedules=None):
        extracted.extend(c.key for c in candidates)
        return fresh_extract(candidates, schedules)

    extractor.extract = counting
    for latency in (1e-3, 2e-3, 3e-3):
        batch = search.ask(4)
        search.tell([TrialRecord(space.workload.key, hw.key, c.key, c.decisions, Status.OK, latencies=(latency,) * 3)
                     for c in batch])
    assert len(extracted) == len(set(extracted)), "a candidate's features were computed twice"
    told = np.stack([search.told_features[c.key] for c in batch])
    np.testing.assert_array_equal(told, fresh_extract(batch))  # kept rows are what a fresh extraction gives


def test_guided_search_applies_each_candidate_once_per_ranking(hw, monkeypatch):
    """Sampling the initial population validates each draw by applying it; the features reuse that schedule."""
    search = _small_trained_search(hw)
    space = search.space
    applied, try_apply = [], space.try_apply

    def counting(candidate):
        applied.append(candidate.key)
        return try_apply(candidate)

    monkeypatch.setattr(space, "try_apply", counting)
    assert len(search._ranked_unmeasured(4)) == 4
    assert len(applied) == len(set(applied)), "a candidate was applied twice"


def test_guided_search_mutates_tiles_to_llvm_vectorized_ones_only_when_the_space_draws_them(hw):
    """A mutation that leaves a whole register tile to LLVM (one element, largest unroll), at the
    space's unvectorized_tile_probability; at 0 no mutation makes such a tile from a vectorized one."""
    search = _small_trained_search(hw)
    parents = [c for c in (search.space.sample(random.Random(i)) for i in range(20))
               if not unvectorized(c.decisions["blocks"]["C"])]

    def mutated_to_one_element(probability: float) -> list[dict]:
        search.space.config = replace(search.space.config, unvectorized_tile_probability=probability)
        children = [search._mutate(p).decisions for p in parents for _ in range(10)]
        return [c for c in children if unvectorized(c["blocks"]["C"])]

    assert not mutated_to_one_element(0.0)
    left_to_llvm = mutated_to_one_element(0.5)
    assert len(left_to_llvm) > len(parents)  # about 4 of 10 per parent: 0.85 not an unroll mutation, then 0.5
    assert all(c["unroll"] == 512 and "vector_axis" not in c["blocks"]["C"] for c in left_to_llvm)
    assert all(search.space.try_apply(Candidate(c)) is not None for c in left_to_llvm[:5])


def test_guided_search_redraws_register_kernels_whole_at_the_space_s_probability(hw, monkeypatch):
    """search_space.redraw_micro_kernel, with a redrawn unroll, as often as micro_kernel_probability
    says of the mutations of a tiled block; at 0 never (and no random number is drawn for it)."""
    from autotune import search as search_module

    search = _small_trained_search(hw)
    calls = []
    redraw = search_module.redraw_micro_kernel
    monkeypatch.setattr(search_module, "redraw_micro_kernel", lambda *args: calls.append(1) or redraw(*args))
    parents = [search.space.sample(random.Random(i)) for i in range(20)]
    for probability, fewest, most in ((0.0, 0, 0), (1.0, 120, 200)):
        calls.clear()
        search.space.config = replace(search.space.config, micro_kernel_probability=probability,
                                      unvectorized_tile_probability=0.0)
        children = [search._mutate(p) for p in parents for _ in range(10)]
        assert fewest <= len(calls) <= most  # 0.85 of 200 mutations are of the tiled block
        assert all(search.space.try_apply(c) is not None for c in children[:10])


def test_guided_search_explores_with_the_best_scored_fresh_draws_at_scored_exploration(hw):
    """Exploration slots go to the best-scored of the fresh random draws the evolution started from
    (new ground, not what the model scores worst), at the share scored_exploration; the rest of the
    batch is the model's best after evolution, as without it."""
    search = _small_trained_search(hw)
    search.epsilon, search.scored_exploration = 0.5, 1.0
    evolved = []
    evolve = search._evolve
    search._evolve = lambda: evolved.append(evolve()) or evolved[-1]
    batch = search.ask(8)
    scored, drawn = evolved[0]
    best = [c.key for _, c in sorted(scored.values(), key=lambda sc: -sc[0])][:4]
    fresh = [c.key for _, c in sorted((scored[c.key] for c in drawn if c.key in scored), key=lambda sc: -sc[0])
             if c.key not in best][:4]
    assert [c.key for c in batch] == best + fresh
    assert len(set(c.key for c in batch)) == 8


def test_guided_search_carries_its_evolved_population_to_the_next_batch(hw):
    """With carry, the next batch's evolution starts from the last one's final population (its
    unmeasured part, re-scored by the updated model) besides the measured parents and fresh draws,
    so evolution goes on across batches; with carry=0 each batch starts afresh."""
    for carry in (8, 0):
        search = _small_trained_search(hw)
        search.carry = carry
        search.ask(4)
        left = [c.key for c in search._carried if c.key not in search.seen]
        assert len(left) >= 8
        first_populations, score = [], search._score

        def recording(candidates, scored):
            if not scored:  # an evolution's first population is scored into an empty dict
                first_populations.append([c.key for c in candidates])
            return score(candidates, scored)

        search._score = recording
        search.ask(4)
        assert len(set(left[:8]) & set(first_populations[0])) == (8 if carry else 0)


def test_guided_search_picks_the_same_batch_whatever_the_hash_seed():
    """Candidates with equal scores keep their order: a set's order (it changes with PYTHONHASHSEED)
    once decided which of them stayed in the population, so one seed gave two different tunes."""
    script = textwrap.dedent("""
        import hashlib, random
        import autotune
        from autotune import ops
        from autotune.cost_model import CostModel
        from autotune.features import FeatureExtractor
        from autotune.search import ModelGuidedSearch
        from autotune.search_space import SearchSpace
        hw = autotune.resolve_target("llvm")
        space = SearchSpace(ops.make("matmul", "512,512,512"), cores=2, registers=hw.vector_registers)
        extractor = FeatureExtractor(space, hw)
        pool = [space.sample(random.Random(0)) for _ in range(32)]
        latencies = [1 + int(hashlib.sha1(c.key.encode()).hexdigest(), 16) % 100 / 10 for c in pool]
        model = CostModel()
        model.fit(extractor.extract(pool), latencies, ["w"] * len(pool))
        print(" ".join(c.key for c in ModelGuidedSearch(space, extractor, model, seed=1).ask(16)))
    """)
    batches = {subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONHASHSEED": seed},
                              capture_output=True, text=True, check=True).stdout
               for seed in ("1", "3")}
    assert len(batches) == 1


def test_features_do_not_import_tensor_intrin():
    """MetaSchedule's TuneContext imports tvm.s_tir.tensor_intrin (~20 s); our feature path must not."""
    import subprocess
    import sys

    code = ("import sys; from autotune import ops; from autotune.features import FeatureExtractor; "
            "from autotune.search_space import SearchSpace; from autotune.target import resolve_target; "
            "s = SearchSpace(ops.make('matmul', '16,16,16')); "
            "FeatureExtractor(s, resolve_target('llvm')).extract([s.default_candidate()]); "
            "print(any(m.startswith('tvm.s_tir.tensor_intrin') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
