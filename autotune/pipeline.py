"""Autotune inside compilation pipelines: tune the kernels of a whole model, then build it with them.

A model imported into Relax (e.g. with `tvm.relax.frontend.torch.from_exported_program`) reaches
its kernels only after TVM legalizes its operators into TIR and fuses them. `prepare` runs those
passes of TVM's "zero" pipeline (LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR),
`tunable_functions` turns each fused PrimFunc into a `Workload` for `autotune.tune`, and
`apply_database` puts the best cached schedule of each into the module, where the zero pipeline
would run MetaSchedule's `MetaScheduleApplyDatabase`. `compile` does all three and builds.

`AutotuneDatabase` is the other road in: a MetaSchedule database that answers from our cache, so
that a pipeline built on `relax.transform.MetaScheduleApplyDatabase` picks up autotune's schedules
unchanged. MetaSchedule finds records by the structural hash of the function; we look each query up
by our own workload key (sha256 of the function's TVMScript) and by this machine's target key.

For TVM's fast approximations of softmax/exp/erf/tanh, apply `relax.transform.FastMathTransform()`
to the Relax module before passing it here, and build the same module that was tuned.

Run what `compile` returns with ``TVM_NUM_THREADS=<num-cores>`` set: autotune times kernels with
as many threads as the target's num-cores, while TVM's thread pool uses half the cores on x86.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import tvm
from tvm import relax
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord
from tvm.s_tir.meta_schedule.database import Workload as MSWorkload

from .database import Database, open_database
from .errors import AutotuneError, WorkloadError
from .records import TrialRecord
from .space_config import SpaceConfig, load_space_config
from . import vector_math
from .target import HardwareTarget, resolve_target
from .tuner import apply_record, replay_schedule
from .workload import Workload, as_workload, stored_workload

logger = logging.getLogger(__name__)

# MetaSchedule's tir::attr::kIsScheduled: TVM 0.27 spells it "tirx.is_scheduled" (was "tir.is_scheduled").
IS_SCHEDULED = "tirx.is_scheduled"
DbSpec = str | os.PathLike[str] | Database | None
SpaceSpec = str | os.PathLike[str] | SpaceConfig


@dataclass(frozen=True)
class FunctionScan:
    """The PrimFuncs of a module: those autotune can tune, and why it skips the others."""

    tunable: dict[str, Workload] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ApplyReport:
    """What `apply_database` did, by function name (GlobalVar name hint)."""

    applied: tuple[str, ...] = ()
    untuned: tuple[str, ...] = ()  # tunable, but no record for this target
    skipped: dict[str, str] = field(default_factory=dict)  # not tunable (or already scheduled): reason


def prepare(mod: tvm.IRModule) -> tvm.IRModule:
    """The Relax module lowered to fused, unscheduled PrimFuncs: TVM's zero pipeline minus its database step."""
    passes = [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    return tvm.transform.Sequential(passes)(mod)


def scan_functions(mod: tvm.IRModule) -> FunctionScan:
    """Every PrimFunc of the (prepared, when it holds Relax functions) module, as a workload or a reason."""
    if _has_relax(mod):
        mod = prepare(mod)
    scan = FunctionScan()
    for gv, func in _prim_funcs(mod):
        try:
            scan.tunable[gv.name_hint] = as_workload(func, name=gv.name_hint)
        except WorkloadError as err:
            scan.skipped[gv.name_hint] = str(err)
    return scan


def tunable_functions(mod: tvm.IRModule) -> dict[str, Workload]:
    """The PrimFuncs autotune can tune, by name; identical functions share one workload key.

    Functions it cannot tune (symbolic shapes, scalar arguments, ...) are logged; `scan_functions`
    returns them with their reasons.
    """
    scan = scan_functions(mod)
    for name, reason in scan.skipped.items():
        logger.info("not tunable: %s (%s)", name, reason)
    return scan.tunable


def apply_database(
    mod: tvm.IRModule, target: Any = "llvm", database: DbSpec = None, *, space: SpaceSpec = "cpu"
) -> tuple[tvm.IRModule, ApplyReport]:
    """Replace each PrimFunc of `mod` that has a record for this target by its best schedule.

    Only PrimFuncs change (pass a `prepare`d module for a Relax model). Each keeps its GlobalVar and
    attrs and is marked "tirx.is_scheduled", as MetaScheduleApplyDatabase does; the others stay as they were.
    """
    hw, config = resolve_target(target), _space(space)
    applied, untuned, skipped = [], [], {}
    out = mod.clone()
    with open_database(database) as db:
        for gv, func in _prim_funcs(mod):
            name = gv.name_hint
            if _is_scheduled(func):
                skipped[name] = "already scheduled"
                continue
            try:
                work = as_workload(func, name=name)
            except WorkloadError as err:
                skipped[name] = str(err)
                continue
            best = db.best(work.key, hw.key)
            if best is None:
                untuned.append(name)
                continue
            out.update_func(gv, _scheduled(func, apply_record(work, best, config)))
            applied.append(name)
    return out, ApplyReport(tuple(applied), tuple(untuned), skipped)


def compile(  # noqa: A001 - mirrors tvm.compile
    mod: tvm.IRModule | tvm.tirx.PrimFunc, target: Any = "llvm", database: DbSpec = None, *, space: SpaceSpec = "cpu"
) -> Any:
    """Build `mod` for the target with the best cached schedule of each of its kernels.

    A PrimFunc or a module of PrimFuncs gives `tvm.compile`'s runtime module; a Relax module is
    prepared, gets its schedules and is built with TVM's default Relax pipeline, giving an executable
    to run with ``tvm.relax.VirtualMachine(ex, tvm.cpu())``. Kernels without a record are built
    unscheduled. Set ``TVM_NUM_THREADS=<num-cores>`` to run at the speed autotune measured.
    """
    hw = resolve_target(target)
    if isinstance(mod, tvm.tirx.PrimFunc):
        mod = tvm.IRModule({"main": _with_symbol(mod)})
    relax_module = _has_relax(mod)
    if relax_module:
        mod = prepare(mod)
    mod, report = apply_database(mod, hw, database, space=space)
    logger.info("schedules applied: %s; untuned: %s", list(report.applied), list(report.untuned))
    if relax_module:
        return vector_math.build(mod, hw.target, relax_pipeline="default")
    return vector_math.build(mod, hw.target)


@derived_object
class AutotuneDatabase(PyDatabase):
    """A read-only MetaSchedule database backed by autotune's cache, for one hardware target.

    >>> with tvm.target.Target(hw.target), AutotuneDatabase("cache/tuning.db", hw):
    ...     mod = relax.transform.MetaScheduleApplyDatabase()(prepare(mod))

    Records come back as TuningRecords whose trace replays our best schedule. MetaSchedule's own
    tuning cannot write here (commit_tuning_record raises): every record in our cache was checked
    against the untuned reference, and MetaSchedule's measurements are not.
    """

    def __init__(self, database: DbSpec = None, target: Any = "llvm", *, space: SpaceSpec = "cpu") -> None:
        self.hw: HardwareTarget = resolve_target(target)
        self.config = _space(space)
        self.db = database if isinstance(database, Database) else Database(database)
        self._owns_db = not isinstance(database, Database)

    def close(self) -> None:
        """Close the cache when this object opened it (from a path)."""
        if self._owns_db:
            self.db.close()

    def has_workload(self, mod: tvm.IRModule) -> bool:
        work = _try_workload(mod)
        return work is not None and self.db.workload_row(work.key) is not None

    def commit_workload(self, mod: tvm.IRModule) -> MSWorkload:
        work = _try_workload(mod)
        if work is not None:
            self.db.commit_workload(work)
        return MSWorkload(mod)

    def commit_tuning_record(self, record: TuningRecord) -> None:
        raise AutotuneError(
            "AutotuneDatabase is read-only: autotune's cache is filled by autotune.tune, which checks every "
            "result; tune with MetaSchedule's own database (e.g. JSONDatabase) instead"
        )

    def get_top_k(self, workload: MSWorkload, top_k: int) -> list[TuningRecord]:
        work = _try_workload(workload.mod)
        if work is None:
            return []
        return [self._tuning_record(workload, work, r) for r in self.db.top_k(work.key, self.hw.key, top_k)]

    def get_all_tuning_records(self) -> list[TuningRecord]:
        """Every correct record of this target, its workload parsed back from the TVMScript we stored."""
        records = []
        for key in sorted({r.workload_key for r in self.db.trials(target_key=self.hw.key)}):
            row = self.db.workload_row(key)
            if row is None:  # trials merged without their workload: nothing to replay them on
                continue
            work = stored_workload(row)
            ms_workload = MSWorkload(work.mod)
            records += [self._tuning_record(ms_workload, work, r) for r in self.db.top_k(key, self.hw.key, 1 << 30)]
        return records

    def query_tuning_record(
        self, mod: tvm.IRModule, target: tvm.target.Target | None, workload_name: str | None = None
    ) -> TuningRecord | None:
        if target is not None and str(target.kind.name) != self.hw.kind:
            return None
        records = self.get_top_k(MSWorkload(mod), 1)
        return records[0] if records else None

    def __len__(self) -> int:
        return sum(r.latency is not None for r in self.db.trials(target_key=self.hw.key))

    def _tuning_record(self, ms_workload: MSWorkload, work: Workload, record: TrialRecord) -> TuningRecord:
        trace = replay_schedule(work, record, self.config).trace
        return TuningRecord(trace, ms_workload, run_secs=[float(record.latency or 0.0)], target=self.hw.target)


# ---------------------------------------------------------------------------------------------
# private helpers


def _scheduled(original: tvm.tirx.PrimFunc, scheduled: tvm.IRModule) -> tvm.tirx.PrimFunc:
    """The scheduled "main" with the original's attrs (no global_symbol unless it had one), marked scheduled."""
    func = scheduled["main"].without_attr("global_symbol")
    if original.attrs:
        func = func.with_attrs(original.attrs)
    return func.with_attr(IS_SCHEDULED, True)


def _try_workload(mod: tvm.IRModule) -> Workload | None:
    """The workload of a MetaSchedule query (a module holding one PrimFunc), or None when we cannot tune it."""
    funcs = [f for f in mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    if len(funcs) != 1 or len(mod.functions) != 1:
        return None
    try:
        return as_workload(funcs[0])
    except WorkloadError:
        return None


def _prim_funcs(mod: tvm.IRModule) -> list[tuple[tvm.ir.GlobalVar, tvm.tirx.PrimFunc]]:
    items = sorted(mod.functions.items(), key=lambda item: item[0].name_hint)
    return [(gv, f) for gv, f in items if isinstance(f, tvm.tirx.PrimFunc)]


def _has_relax(mod: tvm.IRModule) -> bool:
    return any(isinstance(f, relax.Function) for f in mod.functions.values())


def _is_scheduled(func: tvm.tirx.PrimFunc) -> bool:
    return bool(func.attrs and func.attrs.get(IS_SCHEDULED, False))


def _with_symbol(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    return func if func.attrs and "global_symbol" in func.attrs else func.with_attr("global_symbol", "main")


def _space(space: SpaceSpec) -> SpaceConfig:
    return space if isinstance(space, SpaceConfig) else load_space_config(space)
