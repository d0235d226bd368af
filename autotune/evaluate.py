"""Model out: build a session's model with its best schedules and show what tuning bought.

The tuned model is built (`pipeline.apply_database` + TVM's default Relax pipeline), run on
seeded random inputs next to the untuned build, and both are timed end to end in a worker
process with as many TVM threads as the target's cores (the way autotune times kernels). Its
outputs are checked against the untuned build's, and against PyTorch eager when the model came
from PyTorch (a torch module passed in, or the session's `.pt2` file), which is timed too.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from .database import Database, open_database
from .errors import ModelError
from .measure import WorkerDied, WorkerProcess
from .model import random_model_inputs
from .pipeline import apply_database
from .session import load_session_model
from . import vector_math
from .target import HardwareTarget, resolve_target

RTOL, ATOL = 1e-3, 1e-4


@dataclass(frozen=True)
class ModelReport:
    """End-to-end latencies (median seconds) of the untuned and tuned builds and of PyTorch eager."""

    session_id: int
    untuned_latency: float
    tuned_latency: float
    torch_latency: float | None
    max_error_vs_untuned: float
    max_error_vs_torch: float | None
    applied: tuple[str, ...]
    untuned_kernels: tuple[str, ...]
    fast_math: bool = False  # the session lowered the model with TVM's fast exp/erf/tanh/softmax

    @property
    def speedup(self) -> float:
        return self.untuned_latency / self.tuned_latency

    @property
    def correct(self) -> bool:
        """The tuned outputs match the untuned build's (and PyTorch's, when compared)."""
        return bool(self.max_error_vs_untuned <= ATOL * 10 and
                    (self.max_error_vs_torch is None or self.max_error_vs_torch <= ATOL * 10))


def build_session(session: int, database: str | os.PathLike[str] | Database | None = None, target: Any = "llvm",
                  *, tuned: bool = True) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
    """The session's model built for the target: (executable, kernels scheduled, kernels left untuned)."""
    hw = resolve_target(target)
    with open_database(database) as db:
        return _build(load_session_model(db, session), hw, db if tuned else None)


def _build(mod: tvm.IRModule, hw: HardwareTarget, db: Database | None) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
    """Build a lowered model, with the best kernels of `db` applied (none when db is None)."""
    applied: tuple[str, ...] = ()
    untuned: tuple[str, ...] = ()
    if db is not None:
        mod, report = apply_database(mod, hw, db)
        applied, untuned = report.applied, report.untuned
    return vector_math.build(mod, hw.target, relax_pipeline="default"), applied, untuned


def evaluate_session(
    session: int,
    database: str | os.PathLike[str] | Database | None = None,
    target: Any = "llvm",
    *,
    reference: Any = None,
    seed: int = 0,
    repeat: int = 10,
) -> ModelReport:
    """Build the session's model tuned and untuned, time both end to end, and check the outputs.

    `reference` is a torch.nn.Module or torch.export.ExportedProgram (or a `.pt2` path) to compare
    with, run eagerly in a worker process; by default the session's source when it was a `.pt2` file.
    """
    hw = resolve_target(target)
    with open_database(database) as db:
        mod = load_session_model(db, session)
        options = (db.session(session) or {}).get("options", {})
        source = options.get("source", "")
        tuned_ex, applied, untuned_kernels = _build(mod, hw, db)  # the model is read once, built twice
        untuned_ex, _, _ = _build(mod, hw, None)
    inputs = random_model_inputs(mod, seed)
    reference = reference if reference is not None else _pt2_reference(source)
    with tempfile.TemporaryDirectory(prefix="autotune-model-") as tmp:
        untuned_out, untuned_secs = _run_in_worker(untuned_ex, inputs, Path(tmp), "untuned", hw, repeat)
        tuned_out, tuned_secs = _run_in_worker(tuned_ex, inputs, Path(tmp), "tuned", hw, repeat)
        torch_out, torch_secs = (_run_torch(reference, inputs, Path(tmp), hw, repeat) if reference is not None
                                 else (None, None))
    return ModelReport(
        session, untuned_secs, tuned_secs, torch_secs, _max_error(tuned_out, untuned_out),
        _max_error(tuned_out, torch_out) if torch_out is not None else None, applied, untuned_kernels,
        bool(options.get("fast_math")),
    )


# ---------------------------------------------------------------------------------------------
# private helpers


def _run_in_worker(ex: Any, inputs: list[np.ndarray], tmp: Path, label: str, hw: HardwareTarget, repeat: int
                   ) -> tuple[list[np.ndarray], float]:
    lib = tmp / f"{label}.so"
    vector_math.export_library(ex, str(lib), hw.target)
    return _worker_job({"job": "model", "lib_path": str(lib)}, inputs, tmp, label, hw, repeat)


def _run_torch(reference: Any, inputs: list[np.ndarray], tmp: Path, hw: HardwareTarget, repeat: int
               ) -> tuple[list[np.ndarray], float]:
    """PyTorch eager on the same inputs, in a worker: the reference exported (torch.export) and run there."""
    import torch

    program_path = tmp / "reference.pt2"
    if isinstance(reference, (str, os.PathLike)):
        program_path = Path(reference)
    else:
        args = tuple(torch.from_numpy(a) for a in inputs)
        program = reference if isinstance(reference, torch.export.ExportedProgram) else torch.export.export(
            reference.eval(), args)
        torch.export.save(program, str(program_path))
    return _worker_job({"job": "torch_model", "program_path": str(program_path), "threads": hw.num_cores},
                       inputs, tmp, "pytorch", hw, repeat)


def _worker_job(request: dict[str, Any], inputs: list[np.ndarray], tmp: Path, label: str, hw: HardwareTarget,
                repeat: int) -> tuple[list[np.ndarray], float]:
    inputs_path, out_path = tmp / "inputs.npz", tmp / f"{label}-out.npz"
    np.savez(inputs_path, **{f"arg{i}": a for i, a in enumerate(inputs)})
    worker = WorkerProcess(f"model-{label}", threads=hw.num_cores, torch=request["job"] == "torch_model")
    try:
        answer = worker.call({**request, "inputs_path": str(inputs_path), "out_path": str(out_path),
                              "repeat": repeat, "min_repeat_ms": 50}, timeout=600)
    except WorkerDied as died:
        raise ModelError(f"the {label} model crashed or hung when run: {died}") from None
    finally:
        worker.kill()
    if not answer.get("ok"):
        raise ModelError(f"the {label} model failed to run: {answer.get('error')}")
    with np.load(out_path) as data:
        outputs = [data[f"out{i}"] for i in range(len(data.files))]
    return outputs, statistics.median(answer["latencies"])


def _pt2_reference(source: str) -> Any:
    return source if source.endswith(".pt2") and Path(source).is_file() else None


def _max_error(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Largest absolute difference, scaled by the output's magnitude; inf when the outputs disagree in form."""
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return float("inf")
    worst = 0.0
    for g, w in zip(got, want):
        scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
        worst = max(worst, float(np.max(np.abs(g.astype("float64") - w.astype("float64")))) / scale if w.size else 0.0)
    return worst
