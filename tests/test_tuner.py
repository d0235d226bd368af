"""End to end: tune small workloads for a few trials, check the result numerically, reuse the cache."""

import contextlib
import dataclasses
import random

import numpy as np
import pytest
import tvm

import autotune
from autotune import ops
from autotune.database import Database
from autotune.errors import BudgetError
from autotune.features import FEATURE_VERSION
from autotune.records import Status
from autotune.search_space import SearchSpace
from autotune.target import resolve_target
from autotune.search_space import apply_candidate, trace_json
from autotune.records import TrialRecord
from autotune.space_config import load_space_config
from autotune.tuner import TaskTuner, apply_record, replay_trace

from conftest import te_matmul

TRIALS = 6


def _run(mod, workload, inputs):
    lib = tvm.compile(mod, target=resolve_target("llvm").target)
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in inputs]
    lib["main"](*tensors)
    return [t.numpy() for t, a in zip(tensors, workload.args) if a.is_output]


def test_tune_te_matmul_end_to_end(db_path):
    tensors = te_matmul(64, 64, 64)
    progress = []
    result = autotune.tune(tensors, target="llvm", trials=TRIALS, database=db_path, seed=0, progress=progress.append)
    assert len(result.trials) == TRIALS and len(progress) == TRIALS
    assert [p.done for p in progress] == list(range(1, TRIALS + 1))
    assert result.best is not None and result.best.status is Status.OK
    # The best is the finals' winner: the leaders were built again and timed head to head, each finalist
    # keeps its timings as a check, and the reported re-measurement is the winner's finals latency.
    with Database(db_path) as db:
        ranked = db.top_k(result.workload.key, result.target.key, TRIALS)
        finalists = [r for r in ranked if db.checks(r.id)]
        winner_check = db.checks(result.best.id)
    assert ranked[0].id == result.best.id and len(finalists) == min(4, len(ranked))
    assert [len(db_check["latencies"]) for db_check in winner_check] == [autotune.MeasureOptions().finals_rounds]
    assert result.remeasured_latency == pytest.approx(np.median(winner_check[0]["latencies"]))
    assert result.best_gflops > 0
    # The tuned module computes what the untuned one does.
    workload = result.workload
    inputs = workload.random_inputs(seed=7)
    np.testing.assert_allclose(_run(result.mod, workload, inputs)[0], _run(workload.mod, workload, inputs)[0], rtol=1e-4)
    # Every trial is in the database; the best is a query over them.
    with Database(db_path) as db:
        assert len(db.trials(workload.key, result.target.key)) == TRIALS
        assert db.best(workload.key, result.target.key).candidate_key == result.best.candidate_key
    # apply_best replays the same schedule in a fresh call.
    mod = autotune.apply_best(tensors, target="llvm", database=db_path)
    assert mod.script() == result.mod.script()


def test_second_session_measures_only_new_candidates(db_path):
    workload = ops.make("softmax", "16,64")
    first = autotune.tune(workload, trials=4, database=db_path, seed=1)
    second = autotune.tune(workload, trials=4, database=db_path, seed=1)  # same seed: same draws
    first_keys = {r.candidate_key for r in first.trials}
    assert not first_keys & {r.candidate_key for r in second.trials}
    with Database(db_path) as db:
        both = db.trials(workload.key, first.target.key)
        # model-guided (the default): the features of measured candidates are kept
        kept = db.cached_features(workload.key, first.target.key, FEATURE_VERSION)
    assert len(both) == 8
    # The second best is over both sessions' records: the second finals held the leaders of both.
    with Database(db_path) as db:
        assert db.best(workload.key, first.target.key).id == second.best.id
        assert second.best.id in {r.id for r in both} and db.checks(second.best.id)
    assert first_keys | {r.candidate_key for r in second.trials} <= set(kept)


def test_fused_dense_epilogue_is_checked_and_applied(db_path):
    workload = ops.make("dense", "32,64,48", bias="true", epilogue="relu")
    result = autotune.tune(workload, trials=4, database=db_path, seed=2)
    assert result.counts().get("ok", 0) >= 1
    inputs = workload.random_inputs(seed=3)
    np.testing.assert_allclose(_run(result.mod, workload, inputs)[0], _run(workload.mod, workload, inputs)[0],
                               rtol=1e-4, atol=1e-5)


def test_apply_best_is_none_when_not_tuned_here(db_path):
    tensors = te_matmul(32, 32, 32)
    assert autotune.apply_best(tensors, database=db_path) is None
    autotune.tune(tensors, trials=2, database=db_path, seed=0)
    here = resolve_target("llvm")
    other = dataclasses.replace(here, fingerprint={**here.fingerprint, "model_name": "another CPU"},
                                key="0" * 20)
    assert autotune.apply_best(tensors, target=here, database=db_path) is not None
    assert autotune.apply_best(tensors, target=other, database=db_path) is None


def test_default_candidate_is_measured_first_as_the_untuned_baseline(db_path):
    workload = ops.make("matmul", "32,32,32")
    result = autotune.tune(workload, trials=2, database=db_path, seed=0)
    assert result.trials[0].candidate_key == SearchSpace(workload).default_candidate().key


@pytest.mark.parametrize("trials", [0, -3])
def test_impossible_budgets_are_rejected(db_path, trials):
    with pytest.raises(BudgetError):
        autotune.tune(te_matmul(), trials=trials, database=db_path)


def test_a_record_with_only_a_trace_replays_to_the_same_schedule(db_path):
    """Records imported from MetaSchedule carry a TVM trace and no decisions of ours."""
    workload = ops.make("dense", "32,64,48", bias="true", epilogue="relu")
    result = autotune.tune(workload, trials=3, database=db_path, seed=4)
    trace_only = dataclasses.replace(result.best, decisions={})
    config = autotune.load_space_config("cpu")
    tvm.ir.assert_structural_equal(apply_record(workload, trace_only, config), result.mod)
    with pytest.raises(autotune.AutotuneError, match="does not apply"):
        apply_record(ops.make("matmul", "16,16,16"), trace_only, config)
    # The decisions win over a trace that does not replay (another TVM version) or names another schedule.
    stale = dataclasses.replace(result.best, trace=[[["NoSuchInstruction", [], [], []]], []])
    tvm.ir.assert_structural_equal(apply_record(workload, stale, config), result.mod)
    # autotune 0.1.0 could store another candidate's trace: for its records the decisions win.
    default = SearchSpace(workload).default_candidate()
    other_trace = trace_json(apply_candidate(SearchSpace(workload), default))
    old = dataclasses.replace(result.best, trace=other_trace, versions={**result.best.versions, "autotune": "0.1.0"})
    tvm.ir.assert_structural_equal(apply_record(workload, old, config), result.mod)
    new = dataclasses.replace(old, versions=result.best.versions)  # a trusted trace is what gets applied
    tvm.ir.assert_structural_equal(apply_record(workload, new, config), replay_trace(workload, other_trace).mod)


@pytest.mark.parametrize("op, shape, options", [
    ("conv2d_nchw", "1,8,10,10,8,3,3", {"bias": "true", "relu": "true"}),
    ("softmax", "8,40", {}),
    ("layernorm", "4,48", {}),
    ("pool2d", "1,4,9,9,3,3", {}),
    ("batch_matmul", "2,16,8,12", {}),
])
def test_trace_replay_gives_the_schedule_the_decisions_give(op, shape, options):
    """apply_record replays traces (fast); they must rebuild exactly what was measured."""
    import random

    from autotune.search_space import apply_candidate, trace_json
    from autotune.tuner import replay_trace

    workload = ops.make(op, shape, **options)
    space = SearchSpace(workload)
    rng = random.Random(0)
    for candidate in [space.default_candidate()] + [space.sample(rng) for _ in range(4)]:
        sch = apply_candidate(space, candidate)
        tvm.ir.assert_structural_equal(replay_trace(workload, trace_json(sch)).mod, sch.mod)


class _Rechecks:
    """Stands in for the Measurer in verify_best: each re-measurement gets the next latency."""

    def __init__(self, latencies):
        self.latencies = list(latencies)

    def measure(self, candidates, best_so_far=None):
        for candidate in candidates:
            latency = self.latencies.pop(0)
            yield TrialRecord("w", "t", candidate.key, candidate.decisions, Status.OK, latencies=(latency,) * 3)

    def close(self):
        pass


@contextlib.contextmanager
def _task_with_two_records(db_path):
    """A TaskTuner of a small matmul whose database holds two records (1 ms, then 2 ms); yields (task, db, ids)."""
    work = ops.make("matmul", "16,16,16")
    hw = resolve_target("llvm")
    with Database(db_path) as db, TaskTuner(work, hw, db, load_space_config("cpu"), strategy="random") as task:
        space = SearchSpace(work)
        fast, slower = [space.sample(random.Random(i)) for i in (1, 2)]
        ids = [db.commit_trial(TrialRecord(work.key, hw.key, c.key, c.decisions, Status.OK, latencies=(lat,) * 3))
               for c, lat in ((fast, 1e-3), (slower, 2e-3))]
        task.measurer.close()
        yield task, db, ids


def test_a_best_is_unstable_only_when_two_rechecks_disagree(db_path):
    with _task_with_two_records(db_path) as (task, db, ids):
        work, hw = task.workload, task.target
        task.measurer = _Rechecks([5e-3, 1.1e-3])  # disturbed once, then it agrees: still the best
        best, again = task.verify_best()
        assert best.id == ids[0] and again == pytest.approx(1.1e-3)
        assert [c["flagged"] for c in db.checks(ids[0])] == [0, 0]
        # off twice, while the runner-up (the control) re-measures as recorded: unstable, and the next best is checked
        task.measurer = _Rechecks([5e-3, 4e-3, 2.1e-3, 2.1e-3])
        best, again = task.verify_best()
        assert best.id == ids[1] and again == pytest.approx(2.1e-3)
        assert [c["flagged"] for c in db.checks(ids[0])] == [0, 0, 0, 1]
        assert db.best(work.key, hw.key).id == ids[1]


def test_a_best_and_its_runner_up_both_slower_mean_the_machine_slowed_not_an_unstable_kernel(db_path):
    with _task_with_two_records(db_path) as (task, db, ids):
        work, hw = task.workload, task.target
        task.measurer = _Rechecks([1.8e-3, 1.9e-3, 3.7e-3])  # best 1.8x and 1.9x, runner-up 1.85x its record
        best, again = task.verify_best()
        assert best.id == ids[0] and again == pytest.approx(1.9e-3)
        assert [c["flagged"] for c in db.checks(ids[0])] == [0, 0]
        assert [c["flagged"] for c in db.checks(ids[1])] == [0]  # the control is stored too
        assert db.best(work.key, hw.key).id == ids[0]


class _Finals:
    """Stands in for the Measurer in finals: each finalist (in ranking order) gets the next (status, latency)."""

    def __init__(self, outcomes, finalists=3):
        self.outcomes = list(outcomes)
        self.options = autotune.MeasureOptions(finalists=finalists)
        self.alone = 0  # re-measurements outside finals (verify_best)

    def time_together(self, candidates, rounds):
        return [TrialRecord("w", "t", c.key, c.decisions, status, latencies=(latency,) * rounds if latency else ())
                for c, (status, latency) in zip(candidates, [self.outcomes.pop(0) for _ in candidates])]

    def measure(self, candidates, best_so_far=None):
        self.alone += 1
        for c in candidates:
            yield TrialRecord("w", "t", c.key, c.decisions, Status.OK, latencies=(1e-3,) * 3)

    def close(self):
        pass


@contextlib.contextmanager
def _task_with_records(db_path, latencies):
    """A TaskTuner of a small matmul whose database holds one record per latency; yields (task, db, ids)."""
    work = ops.make("matmul", "16,16,16")
    hw = resolve_target("llvm")
    with Database(db_path) as db, TaskTuner(work, hw, db, load_space_config("cpu"), strategy="random") as task:
        space = SearchSpace(work)
        candidates = list({c.key: c for c in (space.sample(random.Random(i)) for i in range(40))}.values())
        ids = [db.commit_trial(TrialRecord(work.key, hw.key, c.key, c.decisions, Status.OK, latencies=(lat,) * 3))
               for c, lat in zip(candidates, latencies)]
        task.measurer.close()
        yield task, db, ids


def test_finals_rerank_the_leaders_head_to_head_on_the_records_scale(db_path):
    ms = 1e-3
    with _task_with_records(db_path, [1.0 * ms, 1.2 * ms, 1.3 * ms, 1.4 * ms]) as (task, db, ids):
        # the finals ran in a phase twice as slow, and the recorded best was a lucky moment (3.0 against 2.4)
        task.measurer = _Finals([(Status.OK, 3.0 * ms), (Status.OK, 2.4 * ms), (Status.OK, 2.6 * ms)])
        best, again = task.finish()
        assert best.id == ids[1] and again == pytest.approx(2.4 * ms) and task.measurer.alone == 0
        ranked = db.top_k(task.workload.key, task.target.key, 4)
        # scale: the median ratio (2.0) puts the finalists back on the records' scale; the others keep theirs
        assert [r.id for r in ranked] == [ids[1], ids[2], ids[3], ids[0]]
        assert [r.ranking_latency or r.latency for r in ranked] == pytest.approx([1.2 * ms, 1.3 * ms, 1.4 * ms, 1.5 * ms])
        assert ranked[3].ranking_latency == pytest.approx(1.5 * ms)  # None where it is the record's own median
        assert [r.latency for r in ranked] == pytest.approx([1.2 * ms, 1.3 * ms, 1.4 * ms, 1.0 * ms])
        assert [len(db.checks(i)) for i in ids] == [1, 1, 1, 0]
        assert db.checks(ids[0])[0]["ratio"] == pytest.approx(3.0)


def test_a_finalist_that_fails_is_unstable_one_that_does_not_build_keeps_its_rank(db_path):
    ms = 1e-3
    with _task_with_records(db_path, [1.0 * ms, 1.1 * ms, 1.2 * ms]) as (task, db, ids):
        task.measurer = _Finals([(Status.WRONG_RESULT, None), (Status.BUILD_ERROR, None), (Status.OK, 1.2 * ms)])
        best, again = task.finals()
        assert best.id == ids[1] and again is None  # unchecked, it keeps its rank
        assert db.trials(task.workload.key, task.target.key)[0].status is Status.UNSTABLE
        assert [c["flagged"] for i in ids for c in db.checks(i)] == [1, 0, 0]


def test_without_finals_the_best_is_re_measured_alone(db_path):
    with _task_with_records(db_path, [1e-3, 2e-3]) as (task, db, ids):
        task.measurer = _Finals([(Status.RUN_ERROR, None)] * 2, finalists=2)  # the job failed as a whole
        best, again = task.finish()
        assert best.id == ids[0] and task.measurer.alone == 1
        assert [c["ratio"] for c in db.checks(ids[0])] == [pytest.approx(1.0)]  # verify_best's, not the finals'
        task.measurer = _Finals([], finalists=0)  # finals turned off
        task.finish()
        assert task.measurer.alone == 1
