"""The tuning loop and "apply best": ask → measure → tell → commit, then replay the best record.

Every measured trial is committed to the database as soon as it finishes, so a killed session
loses nothing it measured, and a later session never measures the same candidate again.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import tvm
from tvm import s_tir

from .cost_model import CostModel, warm_start
from .database import Check, Database, open_database
from .errors import AutotuneError, BudgetError, TargetError, last_line
from .features import FEATURE_VERSION, FeatureExtractor
from .fleet import RpcOptions, fleet_target
from .measure import MeasureOptions, Measurer, WorkerPool
from .records import Status, TrialRecord, ms_text
from .search import ModelGuidedSearch, RandomSearch, SearchStrategy
from .search_space import Candidate, SearchSpace, apply_candidate
from .space_config import SpaceConfig, load_space_config
from .target import HOST_SPECS, HardwareTarget, fingerprint_differences, fingerprint_similarity, resolve_target
from .workload import Workload, as_workload

logger = logging.getLogger(__name__)

STRATEGIES = ("model", "random")
SIMILAR_SEEDS = 8  # best schedules of a similar device measured first with similar=True
TRACES_NOT_TRUSTED = ("0.1.0",)  # autotune versions whose stored traces may belong to another candidate
RECHECK_TOLERANCE = 1.5  # a best whose re-measurement is off by more than this factor is flagged "unstable"


@dataclass(frozen=True)
class Progress:
    """What a progress callback is told after each measured trial."""

    done: int
    total: int
    record: TrialRecord
    best_latency: float | None
    best_gflops: float | None


@dataclass(frozen=True, eq=False)
class TuneResult:
    """Outcome of `tune`: the best correct record for this workload and target (this session or earlier)."""

    workload: Workload
    target: HardwareTarget
    best: TrialRecord | None
    mod: tvm.IRModule | None
    trials: tuple[TrialRecord, ...] = field(default=())
    baseline_latency: float | None = None  # seconds of the reference run (Measurer.prepare)
    wall_secs: float = 0.0
    # The best measured again, freshly built, before it was reported: its finals latency, timed head to
    # head with the runners-up (TaskTuner.finals), or, without finals, its re-measurement alone.
    remeasured_latency: float | None = None

    @property
    def best_latency(self) -> float | None:
        """Median seconds of the best correct candidate."""
        return self.best.latency if self.best else None

    @property
    def best_gflops(self) -> float | None:
        return gflops(self.workload, self.best_latency)

    def counts(self) -> dict[str, int]:
        """How this session's trials ended, by status."""
        out: dict[str, int] = {}
        for record in self.trials:
            out[record.status.value] = out.get(record.status.value, 0) + 1
        return out


def tune(
    workload: Any,
    target: Any = "llvm",
    trials: int = 64,
    database: str | os.PathLike[str] | Database | None = None,
    *,
    space: str | os.PathLike[str] | SpaceConfig = "cpu",
    strategy: str = "model",
    batch_size: int = 16,
    seed: int | None = None,
    measure: MeasureOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
    name: str | None = None,
    similar: bool = False,
    rpc: RpcOptions | None = None,
) -> TuneResult:
    """Search `trials` new schedules for a workload on a target, measuring and caching each.

    With `rpc`, candidates are measured on the devices registered with a TVM RPC tracker under
    `rpc.device_key` (see fleet.py); the target is then the devices' own, and records are keyed
    by it.

    With `similar=True`, records of the closest other device of the same kind (see
    `target.fingerprint_similarity`) are starting points: that device's best schedules of this
    workload are measured here first and its records join the cost model's training set. They
    are never results by themselves: only what is measured on this target is ever "best" here.

    Example: ``autotune.tune([A, B, C], target="llvm", trials=64, database="cache/tuning.db")``.
    """
    check_budget(trials, batch_size)
    work = as_workload(workload, name=name)
    hw, measure = measurement_target(target, measure, rpc)
    config = space if isinstance(space, SpaceConfig) else load_space_config(space)
    start = time.perf_counter()
    with open_database(database) as db:
        with TaskTuner(work, hw, db, config, strategy=strategy, seed=seed, measure=measure, similar=similar) as task:
            measured: list[TrialRecord] = []
            while len(measured) < trials:
                done = task.step(min(batch_size, trials - len(measured)), progress, len(measured), trials)
                if not done:
                    logger.info("search space exhausted after %d trials", len(measured))
                    break
                measured += done
            best, remeasured = task.finish()
            baseline = task.baseline
    mod = apply_record(work, best, config) if best else None
    return TuneResult(work, hw, best, mod, tuple(measured), baseline, time.perf_counter() - start, remeasured)


def measurement_target(target: Any, measure: MeasureOptions | None, rpc: RpcOptions | None
                       ) -> tuple[HardwareTarget, MeasureOptions | None]:
    """The hardware the trials are measured on, and the measure options that reach it.

    Without `rpc`, this machine (`resolve_target`); with it, the fleet's devices, as they
    report themselves or as `rpc.device_target` declares them (or a HardwareTarget already
    obtained from `fleet.fleet_target`).
    """
    if rpc is None:
        return resolve_target(target), measure
    measure = replace(measure or MeasureOptions(), rpc=rpc)
    if isinstance(target, HardwareTarget):  # already asked of the fleet (the CLI does, before its progress bar)
        return target, measure
    if not (target is None or isinstance(target, str) and target.strip().lower() in HOST_SPECS):
        raise TargetError("with rpc, the target is the devices' own: declare it with RpcOptions.device_target "
                          "(or --device-target) rather than target=")
    return fleet_target(rpc), measure


class TaskTuner:
    """Tunes one workload batch by batch, keeping its search and measurer between batches.

    `tune` runs one to the end; a model session (`session.tune_model`) interleaves many, giving
    them one WorkerPool and one cost model (the model is per hardware target anyway). Each
    measured trial is committed at once, tagged with the session when there is one.
    """

    def __init__(
        self,
        workload: Workload,
        target: HardwareTarget,
        db: Database,
        config: SpaceConfig,
        *,
        strategy: str = "model",
        seed: int | None = None,
        measure: MeasureOptions | None = None,
        similar: bool = False,
        pool: WorkerPool | None = None,
        model: CostModel | None = None,
        session_id: int | None = None,
    ):
        self.workload, self.target, self.db = workload, target, db
        self.session_id = session_id
        self.space = SearchSpace(workload, config, cores=target.num_cores, registers=target.vector_registers)
        db.commit_workload(workload)
        db.commit_target(target.key, target.target_json(), target.fingerprint)
        similar_key = closest_similar_target(db, target, workload.key) if similar else None
        self.search = _strategy(strategy, self.space, target, db, seed, similar_key, model)
        self.measurer = Measurer(self.space, target, measure, pool)
        self.baseline: float | None = None
        self._saved_on = 0

    def step(
        self, n: int, progress: Callable[[Progress], None] | None = None, done_before: int = 0, total: int | None = None
    ) -> list[TrialRecord]:
        """Measure up to n new candidates and commit each; an empty list means the space is exhausted."""
        batch = self._first_ask(n) if self.baseline is None else self.search.ask(n)
        best = self.db.best(self.workload.key, self.target.key)
        done: list[TrialRecord] = []
        for record in self.measurer.measure(batch, best_so_far=best.ranked_latency if best else None):
            record = replace(record, session_id=self.session_id)
            record = _with_id(record, self.db.commit_trial(record))
            done.append(record)
            if progress is not None:
                count = done_before + len(done)
                progress(_progress(self.db, self.workload, self.target, record, count, total or count))
        self.search.tell(done)
        self._saved_on = _save_model(self.db, self.target, self.search, self._saved_on)
        if isinstance(self.search, ModelGuidedSearch):  # the next warm start reads them instead of replaying
            rows = {key: row.tobytes() for key, row in self.search.told_features.items()}
            self.db.save_features(self.workload.key, self.target.key, FEATURE_VERSION, rows)
        return done

    def _first_ask(self, n: int) -> list[Candidate]:
        """The first batch, drawn while a worker computes the untuned reference (Measurer.prepare), which
        sets `baseline`. Why at once: the reference waits for the measurement workers to start (TVM's
        imports, 2-3 s here) and then runs the untuned code, while the first draw is work of this process."""
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autotune-prepare")
        preparing = pool.submit(self.measurer.prepare)
        try:
            batch = self.search.ask(n)
            self.baseline = preparing.result()
        except BaseException:  # Ctrl-C included: not waiting for the reference, whose worker close() kills
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        return batch

    def finish(self) -> tuple[TrialRecord | None, float | None]:
        """Settle the best before it is reported: finals among the leaders, or, where there are none to
        hold, the best measured again alone (verify_best). Returns the best and its new latency."""
        held = self.finals()
        return held if held is not None else self.verify_best()

    def finals(self) -> tuple[TrialRecord | None, float | None] | None:
        """Re-rank the leading trials by timing them head to head; returns the best and its finals
        latency, or None when no finals were held.

        Why: each trial was timed at its own moment, and this VM's speed drifts by up to 1.7x, so the
        recorded best is partly the trial of the luckiest moment. The top `finalists` trials (by ranking
        latency) are timed in turn, `finals_rounds` repeats each (Measurer.time_together, which reuses
        the libraries of this tune's own leaders and builds the others), in the same moments. Their
        finals latencies, divided by the median of their ratios to their ranking latencies, become their
        ranking latencies: the order among the finalists is the head-to-head one, on the scale of the
        other trials' records. The winner is then the best overall (its new ranking latency is at most
        the ranking latency of the finalist at the median ratio, which no non-finalist beats), and later
        trials compare with it as they would have with the records. A finalist that fails while another
        runs is flagged "unstable"; when none runs (the job failed as a whole), nothing is stored.
        """
        options = self.measurer.options
        if options.finalists < 2:
            return None
        top = [r for r in self.db.top_k(self.workload.key, self.target.key, options.finalists)
               if r.decisions and r.id is not None]
        if len(top) < 2:
            return None
        timed = self.measurer.time_together([Candidate(r.decisions) for r in top], options.finals_rounds)
        ratios = [again.latency / _ranked_by(r) for r, again in zip(top, timed) if again.latency]
        if not ratios:
            logger.warning("%s: no finalist ran in the finals (%s); the best is re-measured alone", self.workload.name,
                           timed[0].error or timed[0].status.value)
            return None
        scale = statistics.median(ratios)
        self.db.commit_checks([_finals_check(r, again, scale) for r, again in zip(top, timed)])
        best = self.db.best(self.workload.key, self.target.key)
        finals = {r.id: again.latency for r, again in zip(top, timed)}
        logger.info("%s finals: %s", self.workload.name, ", ".join(
            f"#{r.id} {ms_text(_ranked_by(r))} -> {ms_text(again.latency)} ms" if again.latency else f"#{r.id} {again.status.value}"
            for r, again in zip(top, timed)))
        return best, finals.get(best.id) if best else None

    def verify_best(self, attempts: int = 3) -> tuple[TrialRecord | None, float | None]:
        """Build and time the best record again before it is reported; returns it and its new latency.

        A best whose re-measurement is off by more than RECHECK_TOLERANCE (either way), or that
        no longer runs correctly, is measured once more: a burst of other load on the machine
        is not an unstable kernel. Off twice, the runner-up is re-measured as a control: when it
        is off by about as much (within RECHECK_TOLERANCE of the best's factor), the machine's
        speed changed, not the kernel, and the best stays best (on our 2-core VMs the two-core
        FMA peak alternates between about 200 and 100 GFLOPS, for seconds to minutes: see
        bench/peak_flops.py). Otherwise the best is marked "unstable" (kept, never best again)
        and the next best is checked, up to `attempts` times. Every re-measurement is stored.
        Records with only a trace (imported) are not re-run.
        """
        for _ in range(attempts):
            best = self.db.best(self.workload.key, self.target.key)
            if best is None or not best.decisions or best.latency is None or best.id is None:
                return best, None
            again, ratio = self._remeasure(best)
            if _off(ratio):
                self.db.commit_check(best.id, again, ratio, False)
                again, ratio = self._remeasure(best)
            flagged = _off(ratio) and not self._machine_changed(ratio)
            self.db.commit_check(best.id, again, ratio, flagged)
            if not flagged:
                return best, again.latency
            logger.warning("best record %d of %s re-measured %s (was %s ms): marked unstable", best.id,
                           self.workload.name, f"{ms_text(again.latency)} ms" if again.latency else again.status.value,
                           ms_text(best.latency))
        return self.db.best(self.workload.key, self.target.key), None

    def _machine_changed(self, ratio: float | None) -> bool:
        """Whether the runner-up, re-measured now, is off by about the factor `ratio` the best was (see verify_best)."""
        top = self.db.top_k(self.workload.key, self.target.key, 2)
        runner_up = top[1] if len(top) > 1 else None
        if ratio is None or runner_up is None or not runner_up.decisions or runner_up.id is None:
            return False
        again, control = self._remeasure(runner_up)
        self.db.commit_check(runner_up.id, again, control, False)
        if control is None or _off(ratio / control):
            return False
        logger.warning("%s: the best and the runner-up re-measured %.2fx and %.2fx their recorded latencies: "
                       "the machine's speed changed, not the kernel; the best stays", self.workload.name, ratio, control)
        return True

    def _remeasure(self, record: TrialRecord) -> tuple[TrialRecord, float | None]:
        """The record's candidate built and timed again, and its new latency over the recorded one."""
        again = next(iter(self.measurer.measure([Candidate(record.decisions)])))
        return again, again.latency / record.latency if again.latency and record.latency else None

    def close(self) -> None:
        self.measurer.close()

    def __enter__(self) -> "TaskTuner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def apply_best(
    workload: Any,
    target: Any = "llvm",
    database: str | os.PathLike[str] | Database | None = None,
    *,
    space: str | os.PathLike[str] | SpaceConfig = "cpu",
    strict: bool = False,
) -> tvm.IRModule | None:
    """The workload with its best cached schedule applied, or None when it was never tuned on this target.

    With `strict=True` a missing record is a TargetError instead of None, saying which other
    devices hold records and how their fingerprints differ from this one.

    Records apply only where the target key matches exactly (same canonical target and device
    fingerprint): records of other devices are never used here (`tune(..., similar=True)` may
    start from them). A module of several functions (a Relax model) is handled by
    `pipeline.apply_database`: every kernel with a record is scheduled, the rest are left as
    they were (logged), and the module is returned.
    """
    if _is_model(workload):
        from .pipeline import apply_database, prepare

        mod, report = apply_database(prepare(workload), target, database, space=space)
        logger.info("schedules applied to %s; left untuned: %s", list(report.applied), list(report.untuned))
        return mod
    work = as_workload(workload)
    hw = resolve_target(target)
    with open_database(database) as db:
        best = db.best(work.key, hw.key)
        if best is None and strict:
            raise TargetError(not_tuned_here(db, work, hw))
    if best is None:
        return None
    return apply_record(work, best, space if isinstance(space, SpaceConfig) else load_space_config(space))


def not_tuned_here(db: Database, work: Workload, hw: HardwareTarget) -> str:
    """Why a workload has no record on this target, naming how the devices that have one differ."""
    others = [k for k in db.target_keys_with_records(work.key) if k != hw.key]
    message = f"{work.name} has no record for this device (target key {hw.key})"
    if not others:
        return message + "; it was never tuned in this database"
    closest = closest_target(db, hw, others)
    row = db.target_row(closest) if closest else None
    if row is None:
        return message + f"; records exist for {len(others)} other device(s)"
    differences = fingerprint_differences(hw.fingerprint, row["fingerprint"])
    if row["target"] != hw.target_json():
        differences.insert(0, "the TVM target differs")
    return (message + f"; records exist for {len(others)} other device(s), the closest ({closest}) differs in: "
            + "; ".join(differences or ["nothing in its fingerprint"]))


def _is_model(obj: Any) -> bool:
    """An IRModule of more than one function (Relax functions and/or several PrimFuncs)."""
    return isinstance(obj, tvm.IRModule) and len(obj.functions) > 1 or (
        isinstance(obj, tvm.IRModule) and any(not isinstance(f, tvm.tirx.PrimFunc) for f in obj.functions.values())
    )


def apply_record(workload: Workload, record: TrialRecord, config: SpaceConfig) -> tvm.IRModule:
    """The workload with a record's schedule applied (see `replay_schedule`)."""
    return replay_schedule(workload, record, config).mod


def replay_schedule(
    workload: Workload, record: TrialRecord, config: SpaceConfig, space: SearchSpace | None = None
) -> s_tir.Schedule:
    """Replay a record on the workload, as a traced Schedule: its TVM trace, or its decisions.

    The trace is what the measured schedule recorded and replays in ~2 ms, where the decisions
    need the space's analysis first (~5-10 ms): the trace keeps lookups in compilation pipelines
    fast. The decisions are what the measured library was built from and our stable format;
    they are used when a trace does not replay (another TVM version) and for records of
    autotune 0.1.0, whose concurrent builds could store another candidate's trace. Records
    imported from MetaSchedule carry only a trace. Pass `space` to reuse one SearchSpace.
    """
    if record.trace is not None and (_trace_trusted(record) or not record.decisions):
        try:
            return replay_trace(workload, record.trace)
        except AutotuneError:
            if not record.decisions:
                raise
            logger.info("trace of record %s does not replay; applying its decisions", record.id)
    if record.decisions:
        return apply_candidate(space or SearchSpace(workload, config), Candidate(record.decisions))
    raise AutotuneError(f"record {record.id} of {workload.name} has neither decisions nor a trace to replay")


def _trace_trusted(record: TrialRecord) -> bool:
    return record.versions.get("autotune") not in TRACES_NOT_TRUSTED


def replay_trace(workload: Workload, trace: Any) -> s_tir.Schedule:
    """Apply a TVM schedule trace (its JSON form) to the workload; a trace that does not fit is an AutotuneError."""
    sch = s_tir.Schedule(workload.mod, error_render_level="fast")  # "none" would say only "(not rendered)"
    try:
        s_tir.schedule.Trace.apply_json_to_schedule(trace, sch)
    except Exception as err:  # TVM raises its own error types for a trace of another program
        raise AutotuneError(f"the stored trace does not apply to {workload.name}: {last_line(err)}") from err
    return sch


def check_budget(trials: int, batch_size: int = 1) -> None:
    """Reject budgets no session can meet, before any work starts."""
    if trials < 1 or batch_size < 1:
        raise BudgetError(f"trials and batch_size must be at least 1 (got trials={trials}, batch_size={batch_size})")


def gflops(workload: Workload, latency: float | None) -> float | None:
    if not latency or not workload.flops:
        return None
    return workload.flops / latency / 1e9


def closest_similar_target(db: Database, hw: HardwareTarget, workload_key: str) -> str | None:
    """The key of the most similar other device of the same target kind with correct records of this workload."""
    key = closest_target(db, hw, [k for k in db.target_keys_with_records(workload_key) if k != hw.key])
    if key is not None:
        logger.info("similar=True: starting from the records of target %s", key)
    return key


def closest_target(db: Database, hw: HardwareTarget, keys: list[str]) -> str | None:
    """Among stored targets `keys`, the one of the same kind whose fingerprint is most like this device's."""
    best: tuple[float, str] | None = None
    for key in keys:
        row = db.target_row(key)
        if row is None or row["target"].get("kind") != hw.kind:
            continue
        score = fingerprint_similarity(hw.fingerprint, row["fingerprint"])
        if score > 0 and (best is None or score > best[0]):
            best = (score, key)
    return best[1] if best else None


def _strategy(
    name: str,
    space: SearchSpace,
    hw: HardwareTarget,
    db: Database,
    seed: int | None,
    similar_key: str | None,
    model: CostModel | None = None,
) -> SearchStrategy:
    seeds = _similar_seeds(db, space.workload.key, similar_key, SIMILAR_SEEDS) if similar_key else []
    if name == "random":
        measured = db.measured_candidate_keys(space.workload.key, hw.key)
        return RandomSearch(space, seed=seed, measured=measured, seeds=seeds)
    if name == "model":
        if model is None:
            model = warm_start(db, hw, space.config, [similar_key] if similar_key else [])
        measured = db.trials(space.workload.key, hw.key)
        return ModelGuidedSearch(space, FeatureExtractor(space, hw), model, seed=seed, measured=measured, seeds=seeds)
    raise AutotuneError(f"unknown search strategy {name!r} (known: {', '.join(STRATEGIES)})")


def _similar_seeds(db: Database, workload_key: str, target_key: str, k: int) -> list[Candidate]:
    return [Candidate(r.decisions) for r in db.top_k(workload_key, target_key, k) if r.decisions]


def _save_model(db: Database, hw: HardwareTarget, search: SearchStrategy, saved_on: int) -> int:
    """Keep the latest fitted model with the cache, so the next session starts from it.

    Returns the row count of the model now saved (`saved_on` when nothing new was fitted).
    """
    if not isinstance(search, ModelGuidedSearch) or not search.model.is_trained:
        return saved_on
    if search.model.trained_on != saved_on:
        db.save_model(hw.key, FEATURE_VERSION, search.model.trained_on, search.model.save())
    return search.model.trained_on


def _progress(db: Database, work: Workload, hw: HardwareTarget, record: TrialRecord, done: int, total: int) -> Progress:
    best = db.best(work.key, hw.key)
    latency = best.latency if best else None
    return Progress(done, total, record, latency, gflops(work, latency))


def _ranked_by(record: TrialRecord) -> float:
    """The seconds a correct trial is ranked by (see TrialRecord.ranking_latency)."""
    ranking = record.ranked_latency
    assert ranking is not None, "only correct trials are ranked"
    return ranking


def _finals_check(record: TrialRecord, again: TrialRecord, scale: float) -> Check:
    """What the finals store for a finalist: its timings, its new ranking latency (its finals latency
    over the finals' `scale`), or the "unstable" flag when it ran and failed. A finalist that did not
    build keeps its rank (it built before; this says nothing about its kernel)."""
    ratio = again.latency / record.latency if again.latency and record.latency else None
    ranking = again.latency / scale if again.latency else None
    return Check(record.id or 0, again, ratio, flagged=ranking is None and again.status is not Status.BUILD_ERROR,
                 ranking_latency=ranking)


def _off(ratio: float | None) -> bool:
    """A re-measurement that failed, or is off by more than RECHECK_TOLERANCE either way."""
    return ratio is None or not (1 / RECHECK_TOLERANCE <= ratio <= RECHECK_TOLERANCE)


def _with_id(record: TrialRecord, row_id: int) -> TrialRecord:
    return replace(record, id=row_id)
