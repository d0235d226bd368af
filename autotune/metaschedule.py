"""Move tuning records between TVM MetaSchedule's JSON database and our SQLite cache.

Many TVM users already tune with MetaSchedule (`ms.tune_tir`, Relax's pipelines); its results
live in a directory holding `database_workload.json` and `database_tuning_record.json`.
`import_metaschedule` merges such a directory into our cache, so `apply_best` finds those
schedules; `export_metaschedule` writes our records in MetaSchedule's format, so its
`JSONDatabase.query_ir_module` and `MetaScheduleApplyDatabase` use ours.

An imported record keeps only MetaSchedule's trace (`decisions == {}`, replayed by
`tuner.replay_trace`) and is checked to replay on the workload before it is stored; its `uid`
hashes workload, target, trace and run times, so importing the same files again adds nothing.
Two differences in what counts as best: MetaSchedule ranks records by the mean of their run
times, we by the median, and it never picks a record with an empty trace (our untuned baseline),
so where that baseline or a near tie wins here, MetaSchedule's best is another record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import tvm
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.database import JSONDatabase, TuningRecord
from tvm.s_tir.meta_schedule.database import Workload as MSWorkload

from .database import Database, open_database
from .errors import AutotuneError, DatabaseError, WorkloadError, last_line
from .measure import WorkerDied, untrusted_input_worker
from .records import Status, TrialRecord
from .search_space import SearchSpace, trace_json
from .space_config import SpaceConfig, load_space_config
from .target import resolve_target
from .tuner import replay_schedule, replay_trace
from .workload import Workload, as_workload, stored_workload

log = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
MS_FAILED_SECS = 1e10  # MetaSchedule's run time for a candidate that failed to build or run
PARSE_TIMEOUT = 600.0  # seconds for the worker to parse a MetaSchedule database and replay its traces
DbArg = str | os.PathLike[str] | Database | None


@dataclass(frozen=True)
class MetaScheduleSummary:
    """What an import did: records read, added, already present (skipped), rejected (with why)."""

    path: str
    read: int
    added: int
    skipped: int
    rejected: tuple[str, ...] = ()
    workloads: tuple[str, ...] = ()  # keys of the workloads the records belong to


def import_metaschedule(
    workload_path: str | os.PathLike[str],
    record_path: str | os.PathLike[str],
    database: DbArg = None,
    target: Any = "llvm",
    *,
    strict: bool = False,
) -> MetaScheduleSummary:
    """Merge a MetaSchedule JSON database into ours, as records of `target` (the hardware it was tuned on).

    Missing files and malformed lines raise DatabaseError naming file and line. A record whose
    workload we cannot tune, whose trace does not replay, or that was measured for another
    target kind is rejected (listed in the summary, logged); with `strict` it raises instead.
    Nothing is written unless both files parse.
    """
    hw = resolve_target(target)
    record_path = Path(record_path)
    request = {"job": "metaschedule_import", "workload_path": str(workload_path), "record_path": str(record_path),
               "target_key": hw.key, "target_kind": hw.kind, "strict": strict}
    try:  # TVM parses MetaSchedule's JSON, and crafted JSON can crash it: that happens in a worker
        parsed = untrusted_input_worker().call(request, timeout=PARSE_TIMEOUT)
    except WorkerDied as died:
        raise DatabaseError(f"{record_path}: reading the MetaSchedule database crashed TVM ({died}); "
                            "a corrupt or crafted file?") from None
    if not parsed.get("ok"):
        raise DatabaseError(parsed.get("error") or f"{record_path}: cannot be imported")
    for reason in parsed["rejected"]:
        log.warning("not imported: %s", reason)
    records = [TrialRecord.from_json(r) for r in parsed["records"]]
    keys = tuple(dict.fromkeys(r.workload_key for r in records))
    workloads = [{**row, "created_at": time.time()} for row in parsed["workloads"] if row["key"] in keys]
    with open_database(database) as db:
        db.commit_target(hw.key, hw.target_json(), hw.fingerprint)
        added = db.merge_trials(records, workloads)
    return MetaScheduleSummary(str(record_path), parsed["read"], added, len(records) - added,
                               tuple(parsed["rejected"]), keys)


def parse_metaschedule(workload_path: str, record_path: str, target_key: str, target_kind: str,
                       strict: bool = False) -> dict[str, Any]:
    """The records of a MetaSchedule JSON database as plain data (what `import_metaschedule` merges).

    Runs in a worker process (worker job "metaschedule_import"): it parses TVM objects.
    """
    path = Path(record_path)
    ms_workloads = [_ms_workload(obj, where) for where, obj in _json_lines(Path(workload_path))]
    works: dict[int, Workload | str] = {}
    records: list[TrialRecord] = []
    rejected: list[str] = []
    read = 0
    for where, obj in _json_lines(path):
        read += 1
        index, body = _record_fields(obj, where, len(ms_workloads))
        if index not in works:
            works[index] = _our_workload(ms_workloads[index])
        try:
            records.append(_trial(works[index], ms_workloads[index], body, target_key, target_kind, path.name))
        except AutotuneError as err:
            if strict:
                raise DatabaseError(f"{where}: {err}") from err
            rejected.append(f"{where}: {err}")
    rows = [_workload_row(w) for w in {w.key: w for w in works.values() if isinstance(w, Workload)}.values()]
    return {"ok": True, "read": read, "records": [r.to_json() for r in records], "rejected": rejected,
            "workloads": rows}


def _workload_row(work: Workload) -> dict[str, Any]:
    """The workloads-table row of a workload, with JSON columns as text (as Database.merge_trials takes them)."""
    return {"key": work.key, "name": work.name, "script": work.script, "flops": float(work.flops),
            "args": [a.to_json() for a in work.args], "mod_json": work.mod_json}


def export_metaschedule(
    database: DbArg,
    out_dir: str | os.PathLike[str],
    target: Any = "llvm",
    *,
    space: str | os.PathLike[str] | SpaceConfig = "cpu",
    overwrite: bool = False,
) -> int:
    """Write the correct (status ok) records of one target as a MetaSchedule JSON database in `out_dir`.

    `target` is what `resolve_target` accepts, or the key of a target stored in the database.
    Returns how many records were written. Existing MetaSchedule files there are an error
    unless `overwrite` (MetaSchedule itself would append duplicates to them). MetaSchedule's
    records carry run times only, not the ranking our finals made (TrialRecord.ranking_latency):
    MetaSchedule, and autotune after importing them back, rank them by their recorded times.
    """
    out = Path(out_dir)
    paths = [out / WORKLOAD_FILE, out / RECORD_FILE]
    if any(p.exists() for p in paths) and not overwrite:
        raise DatabaseError(f"{out} already holds a MetaSchedule database; pass overwrite=True to replace it")
    config = space if isinstance(space, SpaceConfig) else load_space_config(space)
    with open_database(database) as db:
        target_key = _target_key(db, target)
        ms_target = tvm.target.Target(db.target_row(target_key)["target"])
        records = [r for r in db.trials(None, target_key) if r.status is Status.OK and r.latencies]
        works = {key: _stored_workload(db, key) for key in dict.fromkeys(r.workload_key for r in records)}
    out.mkdir(parents=True, exist_ok=True)
    for p in paths:
        p.unlink(missing_ok=True)
    ms_db = JSONDatabase(path_workload=str(paths[0]), path_tuning_record=str(paths[1]), allow_missing=True)
    spaces: dict[str, SearchSpace] = {}
    written = 0
    for record in records:
        work = works[record.workload_key]
        if work is None:
            continue
        try:
            if work.key not in spaces:
                spaces[work.key] = SearchSpace(work, config)
            sch = replay_schedule(work, record, config, spaces[work.key])
        except Exception as err:  # TVM's own error types: a record of ours that no longer replays
            log.warning("record %s of %s not exported: it does not replay (%s)", record.uid, work.name, last_line(err))
            continue
        args = ArgInfo.from_prim_func(work.mod["main"])
        ms_record = TuningRecord(sch.trace, ms_db.commit_workload(work.mod), list(record.latencies), ms_target, args)
        ms_db.commit_tuning_record(ms_record)
        written += 1
    return written


# ---------------------------------------------------------------------------------------------
# import


def _json_lines(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed JSON) for each non-blank line of a MetaSchedule file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        files = f"{WORKLOAD_FILE} and {RECORD_FILE}"
        raise DatabaseError(f"{path}: no such file (a MetaSchedule database has {files})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatabaseError(f"{path}: cannot read it ({err})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield f"{path} line {number}", json.loads(line)
        except json.JSONDecodeError as err:
            raise DatabaseError(f"{path} line {number}: not valid JSON ({err.msg}, column {err.colno})") from None


def _ms_workload(obj: Any, where: str) -> MSWorkload:
    try:
        return MSWorkload.from_json(obj)
    except Exception as err:  # TVM raises its own error types for a malformed workload
        raise DatabaseError(f"{where}: not a MetaSchedule workload ({last_line(err)})") from None


def _record_fields(obj: Any, where: str, n_workloads: int) -> tuple[int, list[Any]]:
    """[workload index, [trace, run_secs, target, args_info]], checked."""
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], int) and isinstance(obj[1], list)):
        raise DatabaseError(f"{where}: not a MetaSchedule tuning record ([workload index, record])")
    if not 0 <= obj[0] < n_workloads:
        raise DatabaseError(f"{where}: workload index {obj[0]} but the workload file has {n_workloads} workloads")
    if len(obj[1]) < 2:
        raise DatabaseError(f"{where}: a tuning record needs at least a trace and its run times")
    return obj[0], obj[1]


def _our_workload(ms_work: MSWorkload) -> Workload | str:
    """Our workload of MetaSchedule's module, or the reason we cannot tune it."""
    try:
        return as_workload(ms_work.mod)
    except AutotuneError as err:
        return f"workload not supported: {err}"


def _trial(work: Workload | str, ms_work: MSWorkload, body: list[Any], target_key: str, target_kind: str,
           file: str) -> TrialRecord:
    if isinstance(work, str):
        raise AutotuneError(work)
    ms_target = body[2] if len(body) > 2 else None
    if isinstance(ms_target, dict) and ms_target.get("kind") not in (None, target_kind):
        raise AutotuneError(f"measured for target kind {ms_target.get('kind')}, importing as {target_kind}")
    trace = _replayed(work, _on_main(body[0], _func_name(ms_work.mod)))
    numbers = isinstance(body[1], list) and all(type(x) in (int, float) for x in body[1])
    run_secs = [float(x) for x in body[1]] if numbers else []
    ok = bool(run_secs) and all(0 < x < MS_FAILED_SECS and math.isfinite(x) for x in run_secs)
    trace_text = json.dumps(trace, sort_keys=True)
    uid_text = json.dumps([work.key, target_key, trace, run_secs], sort_keys=True)
    return TrialRecord(
        workload_key=work.key, target_key=target_key, candidate_key=_hash(trace_text, 20), decisions={},
        status=Status.OK if ok else Status.RUN_ERROR, latencies=tuple(run_secs) if ok else (), trace=trace,
        error="" if ok else f"MetaSchedule recorded no successful run (run_secs {body[1]})",
        versions={"tool": "metaschedule"}, uid=_hash(uid_text, 32), origin=f"metaschedule:{file}",
    )


def _replayed(work: Workload, trace: Any) -> Any:
    """The trace as TVM re-serializes it after replaying it on our workload: checked, and in one canonical form."""
    return trace_json(replay_trace(work, trace))


def _func_name(mod: tvm.IRModule) -> str:
    names = [gv.name_hint for gv in mod.get_global_vars()]
    return names[0] if len(names) == 1 else "main"


def _on_main(trace: Any, func_name: str) -> Any:
    """The trace with its block lookups in `func_name` moved to "main", the name our workloads use."""
    if func_name == "main" or not (isinstance(trace, list) and trace and isinstance(trace[0], list)):
        return trace
    insts = [_get_block_in_main(inst, func_name) for inst in trace[0]]
    return [insts, *trace[1:]]


def _get_block_in_main(inst: Any, func_name: str) -> Any:
    """GetSBlock's attrs are [block name, function name]; every other instruction stays as it is."""
    if not (isinstance(inst, list) and len(inst) == 4 and inst[0] == "GetSBlock" and isinstance(inst[2], list)):
        return inst
    if inst[2][1:2] != [func_name]:
        return inst
    return [inst[0], inst[1], [inst[2][0], "main", *inst[2][2:]], inst[3]]


def _hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# ---------------------------------------------------------------------------------------------
# export


def _target_key(db: Database, target: Any) -> str:
    if isinstance(target, str) and db.target_row(target) is not None:
        return target
    key = resolve_target(target).key
    if db.target_row(key) is None:
        raise DatabaseError(f"{db.path} holds no records of target {key} ({target!r})")
    return key


def _stored_workload(db: Database, key: str) -> Workload | None:
    """The stored workload (see workload.stored_workload); None (logged) when it cannot be read back."""
    row = db.workload_row(key)
    if row is None:
        return None
    try:
        return stored_workload(row)
    except WorkloadError as err:
        log.warning("workload %s not exported: %s", key, err)
        return None
