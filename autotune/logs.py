"""Tuning logs: a database's records as JSON lines, to ship to identical devices and merge back.

A log is what moves between machines: `export_log` writes the trials of a database (with the
workload text, the target JSON and the device fingerprint they belong to), `import_log` merges
a log into a database. Every trial carries a `uid`, so importing a log twice, or logs from
several machines that share records, adds each measurement once, and its `origin` (the host that
measured it) is kept.

A log comes from another machine or person, so importing one never runs code from it: lines
are plain JSON, checked field by field, and keys are recomputed from the content they name.
Workloads travel as TVM JSON (a data format), never parsed from TVMScript (whose parser
evaluates Python expressions); they are read, and every trace replayed on its workload, in a
worker process, so that input crafted to crash TVM crashes that worker and is reported. The
whole file is checked before anything is written; a bad line is an error naming its line number
and the database is left as it was.

Format, one JSON object per line::

    {"type": "header", "format": "autotune-log", "version": 1, ...}
    {"type": "workload", "key": ..., "name": ..., "mod_json": ..., "script": ..., "flops": ..., "args": [...]}
    {"type": "target", "key": ..., "kind": ..., "target": {...}, "fingerprint": {...}}
    {"type": "trial", "workload_key": ..., "target_key": ..., "uid": ..., "decisions": {...}, ...}

Logs may be concatenated (`cat a.jsonl b.jsonl > all.jsonl`): a header may appear again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from .database import Database
from .errors import LogError
from .measure import WorkerDied, WorkerProcess, untrusted_input_worker
from .records import Status, TrialRecord
from .target import HardwareTarget, fingerprint_differences, make_key
from .workload import stored_workload

LOG_FORMAT = "autotune-log"
# 2: workloads carry TVM JSON (mod_json); version 1 logs carried TVMScript only. Trials may carry a
# ranking_latency (finals, or a control: TrialRecord.ranking_latency); an older reader ignores it and ranks by the trials' own medians.
LOG_VERSION = 2
_MAX_ERROR_TEXT = 2000
CHECK_TIMEOUT = 120.0  # seconds for the worker to read one workload and replay its traces


@dataclass(frozen=True)
class MergeSummary:
    """What an import did: lines read, trials added, and trials already present (skipped)."""

    path: str
    lines: int
    trials: int
    added: int
    workloads: int
    targets: int

    @property
    def skipped(self) -> int:
        return self.trials - self.added


def export_log(
    database: Database,
    out: str | os.PathLike[str],
    *,
    workload: str | None = None,
    target_key: str | None = None,
) -> int:
    """Write the database's trials (optionally of one workload, by key or name, and/or one target) to `out`.

    Returns the number of trials written. The file is written whole to a temporary name and
    then renamed, so a crash never leaves half a log behind.
    """
    workload_keys = _select_workloads(database, workload)
    trials = [t for key in workload_keys for t in database.trials(key, target_key)]
    path = Path(out)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in _log_lines(database, trials):
            f.write(json.dumps(line, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return len(trials)


def import_log(
    database: Database, path: str | os.PathLike[str], *, expect_target: HardwareTarget | None = None
) -> MergeSummary:
    """Merge a log into the database; importing the same log again adds nothing.

    Raises LogError (naming the line) for a malformed line, a log from a newer format, a key
    that does not match its content, or a trial whose workload or target is in neither the log
    nor the database. With `expect_target` (exact reuse: "this log must be for this device"),
    a trial of any other target is an error that says how the fingerprints differ. Nothing is
    written unless every line is valid.
    """
    path = Path(path)
    workloads: dict[str, dict[str, Any]] = {}
    targets: dict[str, dict[str, Any]] = {}
    trials: list[tuple[int, TrialRecord]] = []
    n_lines = 0
    for n_lines, data in _read_lines(path):
        kind = data.get("type")
        where = f"{path} line {n_lines}"
        if kind == "header":
            _check_header(data, where)
        elif kind == "workload":
            row = _workload_row(data, where)
            workloads[row["key"]] = row
        elif kind == "target":
            row = _target_row(data, where)
            targets[row["key"]] = row
        elif kind == "trial":
            trials.append((n_lines, _trial(data, where)))
        else:
            raise LogError(f"{where}: unknown line type {kind!r} (expected header, workload, target or trial)")
        if n_lines == 1 and kind != "header":
            raise LogError(f"{where}: not an autotune log (the first line must be its header)")
    if n_lines == 0:
        raise LogError(f"{path} is empty: not an autotune log")
    for line, trial in trials:
        _check_known(database, trial, workloads, targets, f"{path} line {line}")
        if expect_target is not None and trial.target_key != expect_target.key:
            _refuse_other_device(database, trial, targets, expect_target, f"{path} line {line}")
    trials = _check_in_worker(database, path, workloads, trials)
    added = database.merge_trials([t for _, t in trials], workloads.values(), targets.values())
    return MergeSummary(str(path), n_lines, len(trials), added, len(workloads), len(targets))


# ---------------------------------------------------------------------------------------------
# export


def _select_workloads(database: Database, workload: str | None) -> list[str]:
    """Workload keys to export: all of them, the one with this key, or those with this name."""
    keys = [row["workload_key"] for row in database.summary()]
    keys = list(dict.fromkeys(keys))
    if workload is None:
        return keys
    if workload in keys:
        return [workload]
    named = [k for k in keys if (database.workload_row(k) or {}).get("name") == workload]
    if not named:
        raise LogError(f"no workload with key or name {workload!r} has records in {database.path}")
    return named


def _log_lines(database: Database, trials: list[TrialRecord]) -> Iterator[dict[str, Any]]:
    from . import __version__

    yield {"type": "header", "format": LOG_FORMAT, "version": LOG_VERSION, "autotune": __version__,
           "exported_at": time.time(), "source": str(database.path)}
    for key in dict.fromkeys(t.workload_key for t in trials):
        row = database.workload_row(key)
        if row is not None:
            if not row.get("mod_json"):  # a workload stored by autotune < 0.2: add its JSON now
                row["mod_json"] = stored_workload(row).mod_json
            yield {"type": "workload", **{k: row[k] for k in ("key", "name", "mod_json", "script", "flops", "args")}}
    for key in dict.fromkeys(t.target_key for t in trials):
        row = database.target_row(key)
        if row is not None:
            yield {"type": "target", **{k: row[k] for k in ("key", "kind", "target", "fingerprint")}}
    for trial in trials:
        data = trial.to_json()
        del data["id"], data["session_id"]  # row ids of the source database mean nothing elsewhere
        yield {"type": "trial", **data}


# ---------------------------------------------------------------------------------------------
# import: every value is checked before it is trusted


def _read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as err:
        raise LogError(f"cannot read the log {path}: {err.strerror or err}") from None
    with f:
        try:
            for number, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    data = json.loads(text)
                except (json.JSONDecodeError, RecursionError) as err:
                    detail = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
                    raise LogError(f"{path} line {number}: not valid JSON ({detail}); truncated or corrupted log?") from None
                if not isinstance(data, dict):
                    raise LogError(f"{path} line {number}: expected a JSON object, got {type(data).__name__}")
                yield number, data
        except UnicodeDecodeError as err:
            raise LogError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); not an autotune log") from None


def _check_header(data: dict[str, Any], where: str) -> None:
    if data.get("format") != LOG_FORMAT:
        raise LogError(f"{where}: not an autotune log header (format {data.get('format')!r})")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise LogError(f"{where}: the header's version must be an integer")
    if version > LOG_VERSION:
        raise LogError(f"{where}: log format {version} comes from a newer autotune (this one reads up to {LOG_VERSION})")
    if version < LOG_VERSION:
        raise LogError(f"{where}: log format {version} carries workloads as TVMScript only, which is not read from "
                       "untrusted files (its parser runs Python); export the log again with autotune >= 0.2")


def _workload_row(data: dict[str, Any], where: str) -> dict[str, Any]:
    fields = (("key", str), ("name", str), ("mod_json", str), ("script", str), ("args", list))
    row = {k: _field(data, k, t, where) for k, t in fields}
    row["flops"] = _number(data, "flops", where)
    if hashlib.sha256(row["script"].encode()).hexdigest()[:20] != row["key"]:
        raise LogError(f"{where}: workload key {row['key']!r} does not match its script (edited or corrupted)")
    row["line"] = int(where.rsplit(" ", 1)[-1])  # for errors found later, in the worker
    for arg in row["args"]:
        if not isinstance(arg, dict) or not {"name", "shape", "dtype", "is_output"} <= arg.keys():
            raise LogError(f"{where}: workload args must be objects with name, shape, dtype and is_output")
    row["created_at"] = time.time()
    return row


def _target_row(data: dict[str, Any], where: str) -> dict[str, Any]:
    row = {k: _field(data, k, t, where) for k, t in (("key", str), ("kind", str), ("target", dict), ("fingerprint", dict))}
    if make_key(row["target"], row["fingerprint"]) != row["key"]:
        raise LogError(f"{where}: target key {row['key']!r} does not match its target and fingerprint")
    row["created_at"] = time.time()
    return row


def _trial(data: dict[str, Any], where: str) -> TrialRecord:
    for k, t in (("workload_key", str), ("target_key", str), ("candidate_key", str), ("uid", str),
                 ("decisions", dict), ("status", str), ("latencies", list)):
        _field(data, k, t, where)
    try:
        status = Status(data["status"])
    except ValueError:
        raise LogError(f"{where}: unknown trial status {data['status']!r}") from None
    latencies = data["latencies"]
    if not all(_is_number(x) and math.isfinite(x) and x > 0 for x in latencies):
        raise LogError(f"{where}: latencies must be positive finite numbers of seconds")
    if status is Status.OK and not latencies:
        raise LogError(f"{where}: a trial with status ok needs its latencies")
    if not data["decisions"] and data.get("trace") is None:
        raise LogError(f"{where}: a trial needs decisions or a trace to be replayed")
    for k in ("build_secs", "created_at"):
        if data.get(k) is not None:
            _number(data, k, where)
    ranking = data.get("ranking_latency")
    if ranking is not None and not (_is_number(ranking) and math.isfinite(ranking) and ranking > 0):
        raise LogError(f"{where}: ranking_latency must be a positive finite number of seconds")
    for k in ("error", "origin"):
        if not isinstance(data.get(k, ""), str):
            raise LogError(f"{where}: field {k!r} must be a string")
    versions = data.get("versions") or {}
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise LogError(f"{where}: field 'versions' must map names to version strings")
    clean = {**data, "error": str(data.get("error") or "")[:_MAX_ERROR_TEXT], "id": None, "session_id": None}
    return TrialRecord.from_json(clean)


def _check_known(database: Database, trial: TrialRecord, workloads: dict[str, Any], targets: dict[str, Any],
                 where: str) -> None:
    if trial.workload_key not in workloads and database.workload_row(trial.workload_key) is None:
        raise LogError(f"{where}: the trial's workload {trial.workload_key} is neither in the log nor in the database")
    if trial.target_key not in targets and database.target_row(trial.target_key) is None:
        raise LogError(f"{where}: the trial's target {trial.target_key} is neither in the log nor in the database")


def _check_in_worker(database: Database, path: Path, workloads: dict[str, dict[str, Any]],
                     trials: list[tuple[int, TrialRecord]]) -> list[tuple[int, TrialRecord]]:
    """Read each workload's TVM JSON and replay its trials' traces in a worker; recompute keys and scripts.

    A workload that reads back as another function, or whose reading crashes the worker, is an
    error naming its line; so is a trace that crashes TVM. A trace that merely does not replay is
    dropped from a trial that has decisions (they are what the trial was built from), and is an
    error for a trial that has only its trace.
    """
    by_workload: dict[str, list[tuple[int, TrialRecord]]] = {}
    for line, trial in trials:
        by_workload.setdefault(trial.workload_key, []).append((line, trial))
    sources = dict(workloads)
    for key in by_workload.keys() - sources.keys():  # trials of workloads this database already has
        row = database.workload_row(key) or {}
        sources[key] = {**row, "mod_json": row.get("mod_json") or stored_workload(row).mod_json}
    checked: dict[int, TrialRecord] = {}
    worker = untrusted_input_worker()
    for key, row in sources.items():
        where = f"{path} line {row.pop('line')}" if "line" in row else f"{path} (workload {key})"
        group = by_workload.get(key, [])
        answer = _ask_worker(worker, row, [t.trace for _, t in group], where, group)
        if answer["key"] != key:
            raise LogError(f"{where}: the workload's TVM JSON is another function (key {answer['key']}, not {key})")
        if key in workloads:
            row["script"] = answer["script"]  # what we render, not what the log says
        for (line, trial), error in zip(group, answer["trace_errors"]):
            if error is not None and trial.trace is not None and not trial.decisions:
                raise LogError(f"{path} line {line}: the trial's trace does not replay on its workload: {error}")
            checked[line] = replace(trial, trace=None) if error is not None and trial.trace is not None else trial
    return [(line, checked.get(line, trial)) for line, trial in trials]


def _ask_worker(worker: WorkerProcess, row: dict[str, Any], traces: list[Any], where: str,
                group: list[tuple[int, TrialRecord]]) -> dict[str, Any]:
    request = {"job": "check_workload", "mod_json": row["mod_json"], "name": row["name"]}
    try:
        answer = worker.call({**request, "traces": traces}, timeout=CHECK_TIMEOUT)
    except WorkerDied as died:
        _find_crashing_trace(worker, request, group, where)
        raise LogError(f"{where}: reading the workload's TVM JSON crashed TVM ({died})") from None
    if not answer.get("ok"):
        raise LogError(f"{where}: the workload's TVM JSON cannot be read: {answer.get('error')}")
    return answer


def _find_crashing_trace(worker: WorkerProcess, request: dict[str, Any], group: list[tuple[int, TrialRecord]],
                         where: str) -> None:
    """After a crash, replay the traces one by one to name the line that crashed TVM."""
    try:
        worker.call({**request, "traces": []}, timeout=CHECK_TIMEOUT)
    except WorkerDied:
        return  # the workload itself crashes TVM: reported by the caller
    for line, trial in group:
        try:
            worker.call({**request, "traces": [trial.trace]}, timeout=CHECK_TIMEOUT)
        except WorkerDied as died:
            raise LogError(f"{where.rsplit(' line ', 1)[0]} line {line}: the trial's trace crashed TVM ({died})") from None


def _refuse_other_device(database: Database, trial: TrialRecord, targets: dict[str, Any], expected: HardwareTarget,
                         where: str) -> None:
    row = targets.get(trial.target_key) or database.target_row(trial.target_key) or {}
    differences = fingerprint_differences(expected.fingerprint, row.get("fingerprint") or {})
    if row.get("target") != expected.target_json():
        differences.insert(0, "the TVM target differs")
    raise LogError(f"{where}: the trial was measured on another device (target {trial.target_key}, this one is "
                   f"{expected.key}): " + "; ".join(differences or ["its fingerprint differs"]))


def _field(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise LogError(f"{where}: missing field {key!r}")
    if not isinstance(data[key], kind):
        raise LogError(f"{where}: field {key!r} must be a {kind.__name__}, got {type(data[key]).__name__}")
    return data[key]


def _number(data: dict[str, Any], key: str, where: str) -> float:
    value = data.get(key)
    if not _is_number(value) or not math.isfinite(value):
        raise LogError(f"{where}: field {key!r} must be a finite number")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
