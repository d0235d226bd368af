"""autotune: an ML-driven autotuner for tensor-operator schedules on Apache TVM.

Public API::

    result = autotune.tune([A, B, C], target="llvm", trials=64, database="cache/tuning.db")
    result.best_latency, result.mod
    mod = autotune.apply_best([A, B, C], target="llvm", database="cache/tuning.db")
    ex = autotune.compile(relax_mod, target="llvm")          # a whole model, with its tuned kernels
    session = autotune.tune_model(torch_net, example_inputs=(x,), trials=500, time_budget="2h")
    autotune.tune_model(session=session.session_id)          # resume after Ctrl-C or kill -9
    with autotune.Database() as db:
        autotune.export_log(db, "fleet.jsonl"); autotune.import_log(db, "fleet.jsonl")
    autotune.tune(..., rpc=autotune.RpcOptions("127.0.0.1:9190", "my-board"))  # measure on a TVM RPC fleet
"""

__version__ = "0.3.0"

import importlib as _importlib
from typing import TYPE_CHECKING
from typing import Any as _Any

# Public name -> the module of this package that defines it, imported on first use (PEP 562). Why:
# a measurement worker imports autotune.worker, which needs TVM but not the database, XGBoost or
# the model pipeline; importing all of them in every worker cost each of a tune's three workers
# 1 s of its 3 s start (the cores a tune's first batch is drawn and built on).
_EXPORTS: dict[str, str] = {
    "ops": "ops",
    "Database": "database", "default_database_path": "database",
    "AutotuneError": "errors", "BudgetError": "errors", "DatabaseError": "errors", "FleetError": "errors",
    "LogError": "errors", "ModelError": "errors", "SearchSpaceError": "errors", "ShapeError": "errors",
    "TargetError": "errors", "UnknownOperatorError": "errors", "WorkloadError": "errors",
    "ModelReport": "evaluate", "build_session": "evaluate", "evaluate_session": "evaluate",
    "DeviceQueue": "fleet", "RpcOptions": "fleet", "describe_device": "fleet", "fleet_status": "fleet",
    "fleet_target": "fleet",
    "MergeSummary": "logs", "export_log": "logs", "import_log": "logs",
    "MeasureOptions": "measure",
    "ModelTasks": "model", "Task": "model", "extract_tasks": "model", "load_model": "model",
    "MetaScheduleSummary": "metaschedule", "export_metaschedule": "metaschedule",
    "import_metaschedule": "metaschedule",
    "ApplyReport": "pipeline", "AutotuneDatabase": "pipeline", "apply_database": "pipeline",
    "compile": "pipeline", "prepare": "pipeline", "tunable_functions": "pipeline",
    "Status": "records", "TrialRecord": "records",
    "Candidate": "search_space", "SearchSpace": "search_space",
    "SessionProgress": "session", "TaskProgress": "session", "parse_duration": "session",
    "session_progress": "session", "tune_model": "session",
    "SpaceConfig": "space_config", "load_space_config": "space_config",
    "HardwareTarget": "target", "resolve_target": "target",
    "Progress": "tuner", "TuneResult": "tuner", "apply_best": "tuner", "tune": "tuner",
    "Workload": "workload", "as_workload": "workload",
}


if TYPE_CHECKING:  # what type checkers and editors see: the same names, imported eagerly
    from . import ops
    from .database import Database, default_database_path
    from .errors import (
        AutotuneError,
        BudgetError,
        DatabaseError,
        FleetError,
        LogError,
        ModelError,
        SearchSpaceError,
        ShapeError,
        TargetError,
        UnknownOperatorError,
        WorkloadError,
    )
    from .evaluate import ModelReport, build_session, evaluate_session
    from .fleet import DeviceQueue, RpcOptions, describe_device, fleet_status, fleet_target
    from .logs import MergeSummary, export_log, import_log
    from .measure import MeasureOptions
    from .model import ModelTasks, Task, extract_tasks, load_model
    from .metaschedule import MetaScheduleSummary, export_metaschedule, import_metaschedule
    from .pipeline import ApplyReport, AutotuneDatabase, apply_database, compile, prepare, tunable_functions
    from .records import Status, TrialRecord
    from .search_space import Candidate, SearchSpace
    from .session import SessionProgress, TaskProgress, parse_duration, session_progress, tune_model
    from .space_config import SpaceConfig, load_space_config
    from .target import HardwareTarget, resolve_target
    from .tuner import Progress, TuneResult, apply_best, tune
    from .workload import Workload, as_workload
else:  # at run time: each name imported when first asked for (misspelled names stay errors to type checkers)
    def __getattr__(name: str) -> _Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        imported = _importlib.import_module(f".{module}", __name__)
        value = imported if name == module else getattr(imported, name)
        globals()[name] = value  # later lookups do not come back here
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_EXPORTS})


__all__ = sorted(_EXPORTS)
