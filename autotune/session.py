"""Model-tuning sessions that last: tune a whole model for hours, stop, resume days later.

A session is a row of the database: the model lowered to fused kernels (TVM's JSON), its tasks
with their weights, the budget (trials and/or wall time), the time spent, and a status. Every
trial it measures is committed at once, tagged with the session, so the budget spent is a
count over the trials table: after a `kill -9` at any moment, `tune_model(session=ID)` (or
`autotune resume ID`) loses no measured trial, measures none twice (the cache never re-measures
a candidate), and spends only what is left. Time spent is saved after every batch.

Tasks share one WorkerPool and one cost model (warm-started from every record of this hardware,
so tasks with good records from earlier work start from them), and a task scheduler decides
which task gets the next batch. Progress goes to a callback, never to stdout.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import tvm

from .cost_model import warm_start
from .database import Database, open_database
from .errors import BudgetError, ModelError, WorkloadError
from .fleet import RpcOptions
from .measure import MeasureOptions, WorkerPool
from .model import extract_tasks
from .records import ms_text
from .scheduler import SCHEDULERS, TaskScheduler, TaskState
from .space_config import SpaceConfig, load_space_config
from .target import HardwareTarget
from .tuner import STRATEGIES, TaskTuner, check_budget, measurement_target
from .workload import Workload, stored_workload

logger = logging.getLogger(__name__)

RUNNING, STOPPED, FINISHED = "running", "stopped", "finished"


@dataclass(frozen=True)
class TaskProgress:
    """One task of a session: its trials so far and best latency."""

    name: str
    workload_key: str
    weight: int
    flops: float
    trials: int
    best_latency: float | None

    @property
    def gflops(self) -> float | None:
        return self.flops / self.best_latency / 1e9 if self.best_latency and self.flops else None

    @property
    def contribution(self) -> float | None:
        """Seconds this task adds to one model run (weight × best latency)."""
        return self.weight * self.best_latency if self.best_latency is not None else None


@dataclass(frozen=True)
class SessionProgress:
    """Where a session stands; what the progress callback receives after each batch."""

    session_id: int
    status: str
    trials_done: int
    trials_budget: int | None
    elapsed: float
    time_budget: float | None
    tasks: tuple[TaskProgress, ...]
    last_task: str | None = None

    @property
    def estimated_latency(self) -> float | None:
        """Sum of weight × best latency over the tasks; None until every task has a correct record."""
        parts = [t.contribution for t in self.tasks]
        return sum(p for p in parts if p is not None) if parts and None not in parts else None


def tune_model(
    model: Any = None,
    *,
    example_inputs: Any = None,
    target: Any = "llvm",
    trials: int | None = None,
    time_budget: float | str | None = None,
    database: str | os.PathLike[str] | Database | None = None,
    session: int | None = None,
    scheduler: str = "gradient",
    strategy: str = "model",
    batch_size: int = 16,
    seed: int | None = None,
    name: str | None = None,
    space: str | os.PathLike[str] | SpaceConfig = "cpu",
    measure: MeasureOptions | None = None,
    progress: Callable[[SessionProgress], None] | None = None,
    rpc: RpcOptions | None = None,
    fast_math: bool = False,
) -> SessionProgress:
    """Tune a whole model within a budget of trials and/or wall time, as a resumable session.

    New session: pass the model (see `model.load_model`) and a budget. Resume: pass
    `session=ID` (the model is stored); a budget given then replaces the stored one (totals for
    the whole session). Ctrl-C stops the session cleanly (status "stopped") and re-raises.
    Returns the session's final progress.

    `fast_math=True` (new sessions) lowers the model with TVM's fast exp/erf/tanh/softmax (see
    `model.extract_tasks`); the session stores the lowered model, so its resumes, `compile-model`
    and `evaluate_session` (tuned and untuned builds) all use the same approximations.

    Example: ``autotune.tune_model(net, example_inputs=(x,), trials=500, time_budget="2h")``.
    """
    config = space if isinstance(space, SpaceConfig) else load_space_config(space)
    seconds = parse_duration(time_budget) if time_budget is not None else None
    _check_options(scheduler, strategy, batch_size, trials, seconds)
    with open_database(database) as db:
        if session is not None and rpc is None:  # a session started on a fleet resumes on it
            rpc = _stored_rpc(db, session)
        hw, measure = measurement_target(target, measure, rpc)
        if session is None:
            if trials is None and seconds is None:
                raise BudgetError("a new session needs a budget: trials=N and/or time_budget (e.g. '2h')")
            options = dict(scheduler=scheduler, strategy=strategy, batch_size=batch_size, seed=seed,
                           fast_math=fast_math)
            if rpc is not None:
                options["rpc"] = _rpc_json(rpc)
            session = _create_session(db, model, example_inputs, hw, trials, seconds, name, options)
        else:
            _check_resumable(db, session, hw, model)
            if trials is not None or seconds is not None:
                db.update_session(session, trials_budget=trials, time_budget=seconds)
        with _session_log(db, session):
            return _run(db, session, hw, config, measure, progress)


def session_progress(db: Database, session_id: int, status: str | None = None, last_task: str | None = None
                     ) -> SessionProgress:
    """A session's standing from the database alone (what `autotune sessions` and reports show)."""
    row = _row(db, session_id)
    counts = db.session_trial_counts(session_id)
    tasks = []
    for task in row["tasks"]:
        best = db.best(task["workload_key"], row["target_key"])
        tasks.append(TaskProgress(task["name"], task["workload_key"], int(task["weight"]), float(task["flops"]),
                                  counts.get(task["workload_key"], 0), best.latency if best else None))
    return SessionProgress(session_id, status or _live_status(row), sum(counts.values()), row["trials_budget"],
                           float(row["elapsed"]), row["time_budget"], tuple(tasks), last_task)


def load_session_model(db: Database, session_id: int) -> tvm.IRModule:
    """The session's model as it was tuned: the Relax module lowered to fused kernels."""
    return tvm.ir.load_json(_row(db, session_id)["model"])


def parse_duration(value: float | str) -> float:
    """Seconds from a number or a string such as '90s', '45m', '2h', '1h30m', '1d'."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([dhms]?)", text)
        if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([dhms]?)", "", text).strip():
            raise BudgetError(f"cannot read the time budget {value!r} (examples: 90s, 45m, 2h, 1h30m)")
        unit = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}
        seconds = sum(float(n) * unit[u] for n, u in parts)
    if not seconds > 0:
        raise BudgetError(f"the time budget must be positive (got {value!r})")
    return seconds


# ---------------------------------------------------------------------------------------------
# the session loop


def _run(db: Database, session_id: int, hw: HardwareTarget, config: SpaceConfig, measure: MeasureOptions | None,
         progress: Callable[[SessionProgress], None] | None) -> SessionProgress:
    row = _row(db, session_id)
    options = row["options"]
    db.update_session(session_id, status=RUNNING, options={**options, "pid": os.getpid(), "host": socket.gethostname()})
    workloads = [_stored_workload(db, t["workload_key"], t["name"]) for t in row["tasks"]]
    counts = db.session_trial_counts(session_id)
    states = [TaskState(int(t["weight"]), trials=counts.get(w.key, 0)) for t, w in zip(row["tasks"], workloads)]
    for state, work in zip(states, workloads):
        best = db.best(work.key, hw.key)
        state.best = best.latency if best else None
        if state.trials:  # resumed: what this session measured counts as the task's warm-up
            state.history.append((state.trials, state.best))
    scheduler: TaskScheduler = SCHEDULERS[options["scheduler"]]()
    elapsed, start = float(row["elapsed"]), time.perf_counter()
    tuners: dict[int, TaskTuner] = {}
    last_task = None
    logger.info("session %d: %d tasks, %d trials done, %.0f s spent", session_id, len(states), sum(counts.values()),
                elapsed)
    try:
        with WorkerPool(hw, measure) as pool:
            model = warm_start(db, hw, config) if options["strategy"] == "model" else None
            while (n := _trials_left(row, states, elapsed + time.perf_counter() - start, options["batch_size"])) > 0:
                index = scheduler.pick(states)
                if index is None:
                    logger.info("session %d: every task's space is exhausted", session_id)
                    break
                if index not in tuners:
                    tuners[index] = TaskTuner(workloads[index], hw, db, config, strategy=options["strategy"],
                                              seed=options["seed"], pool=pool, model=model, session_id=session_id)
                done = tuners[index].step(n)
                best = db.best(workloads[index].key, hw.key)
                states[index].record_batch(len(done), best.latency if best else None)
                states[index].exhausted = not done
                last_task = row["tasks"][index]["name"]
                db.update_session(session_id, elapsed=elapsed + time.perf_counter() - start)
                logger.info("session %d: %s +%d trials, best %s", session_id, last_task, len(done),
                            f"{ms_text(best.latency)} ms" if best else "none")
                if progress is not None:
                    progress(session_progress(db, session_id, RUNNING, last_task))
            for tuner in tuners.values():  # each task's best is settled (finals) before it is reported
                tuner.finish()
    except BaseException:
        db.update_session(session_id, status=STOPPED, elapsed=elapsed + time.perf_counter() - start)
        logger.info("session %d stopped", session_id)
        raise
    finally:
        for tuner in tuners.values():
            tuner.close()
    db.update_session(session_id, status=FINISHED, elapsed=elapsed + time.perf_counter() - start)
    logger.info("session %d finished", session_id)
    return session_progress(db, session_id, FINISHED, last_task)


def _trials_left(row: dict[str, Any], states: list[TaskState], elapsed: float, batch_size: int) -> int:
    """Trials the next batch may use: 0 once the trial or time budget is spent."""
    if row["time_budget"] is not None and elapsed >= row["time_budget"]:
        return 0
    if row["trials_budget"] is None:
        return batch_size
    return max(0, min(batch_size, row["trials_budget"] - sum(s.trials for s in states)))


# ---------------------------------------------------------------------------------------------
# storing and loading sessions


def _create_session(db: Database, model: Any, example_inputs: Any, hw: HardwareTarget, trials: int | None,
                    seconds: float | None, name: str | None, options: dict[str, Any]) -> int:
    if model is None:
        raise ModelError("pass a model to start a session, or session=ID to resume one")
    extracted = extract_tasks(model, example_inputs, fast_math=bool(options.get("fast_math")))
    tasks = [{"name": t.name, "workload_key": t.workload.key, "weight": t.weight, "flops": t.workload.flops,
              "functions": list(t.functions)} for t in extracted.tasks]
    for task in extracted.tasks:
        db.commit_workload(task.workload)
    db.commit_target(hw.key, hw.target_json(), hw.fingerprint)
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    row = {"name": name or Path(source).stem, "status": RUNNING, "target_key": hw.key,
           "model": tvm.ir.save_json(extracted.mod), "tasks": tasks, "options": {**options, "source": source},
           "trials_budget": trials, "time_budget": seconds, "elapsed": 0.0}
    session_id = db.create_session(row)
    logger.info("session %d created: %d tasks (%s skipped)", session_id, len(tasks), len(extracted.skipped))
    return session_id


def _check_options(scheduler: str, strategy: str, batch_size: int, trials: int | None, seconds: float | None) -> None:
    if scheduler not in SCHEDULERS:
        raise BudgetError(f"unknown task scheduler {scheduler!r} (known: {', '.join(SCHEDULERS)})")
    if strategy not in STRATEGIES:
        raise BudgetError(f"unknown search strategy {strategy!r} (known: {', '.join(STRATEGIES)})")
    check_budget(trials if trials is not None else 1, batch_size)


def _rpc_json(rpc: RpcOptions) -> dict[str, Any]:
    data = dataclasses.asdict(rpc)
    if data["device_target"] is not None and not isinstance(data["device_target"], dict):
        data["device_target"] = os.fspath(data["device_target"])
    return data


def _stored_rpc(db: Database, session_id: int) -> RpcOptions | None:
    stored = _row(db, session_id)["options"].get("rpc")
    return RpcOptions(**stored) if stored else None


def _check_resumable(db: Database, session_id: int, hw: HardwareTarget, model: Any) -> None:
    row = _row(db, session_id)
    if row["target_key"] != hw.key:
        raise ModelError(f"session {session_id} tunes for target {row['target_key']}, not this one ({hw.key}); "
                         "resume it on the device (or fleet) it was started on")
    if model is not None:
        raise ModelError("pass either a model (new session) or session=ID (resume), not both")
    if _live_status(row) == RUNNING:
        raise ModelError(f"session {session_id} is running in process {row['options'].get('pid')}; stop it first")


def _live_status(row: dict[str, Any]) -> str:
    """The stored status, except that a "running" session whose process is gone was interrupted."""
    status = row["status"]
    if status != RUNNING:
        return status
    options = row.get("options") or {}
    alive = options.get("host") == socket.gethostname() and _pid_alive(options.get("pid"))
    return RUNNING if alive else "interrupted"


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return pid == os.getpid()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _row(db: Database, session_id: int) -> dict[str, Any]:
    row = db.session(int(session_id))
    if row is None:
        raise ModelError(f"no session {session_id} in {db.path} (autotune sessions lists them)")
    return row


def _stored_workload(db: Database, key: str, name: str) -> Workload:
    row = db.workload_row(key)
    if row is None:
        raise ModelError(f"the database lost workload {key} of this session")
    try:
        return stored_workload({**row, "name": name})
    except WorkloadError as err:
        raise ModelError(f"session workload {name}: {err}") from None


class _session_log:
    """Log this session's progress to <database dir>/sessions/<id>.log while it runs."""

    def __init__(self, db: Database, session_id: int):
        self.path = None if db.path == ":memory:" else Path(db.path).parent / "sessions" / f"{session_id}.log"
        self.handler: logging.Handler | None = None
        self.level = logging.NOTSET

    def __enter__(self) -> "_session_log":
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handler = logging.FileHandler(self.path)
            self.handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
            self.handler.setLevel(logging.INFO)
            package = logging.getLogger("autotune")
            package.addHandler(self.handler)
            self.level = package.level
            if package.getEffectiveLevel() > logging.INFO:
                package.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handler is not None:
            package = logging.getLogger("autotune")
            package.removeHandler(self.handler)
            package.setLevel(self.level)
            self.handler.close()
