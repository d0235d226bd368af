"""Whole models in: a Relax IRModule, a PyTorch module with example inputs, or an ONNX file, as tasks.

A model's kernels appear once TVM has legalized and fused it (`pipeline.prepare`); each fused
PrimFunc autotune can tune becomes a `Task`, weighted by how many times one run of the model
calls it. Identical kernels (same workload key, e.g. the repeated layers of a transformer) are
one task whose weight is the sum of their calls, so tuning one tunes them all.

PyTorch and ONNX are optional: they are imported only when such a model is given
(`pip install 'autotune[torch]'`; ONNX needs the `onnx` package).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax

from .errors import ModelError
from .pipeline import prepare, scan_functions
from .workload import Workload

_CALL_TIR = "relax.call_tir"


@dataclass(frozen=True)
class Task:
    """One tunable kernel of a model: its workload, and how many times one model run calls it."""

    name: str
    workload: Workload
    weight: int
    functions: tuple[str, ...]  # the fused functions that are this kernel


@dataclass(frozen=True)
class ModelTasks:
    """A model lowered to fused kernels (`mod`), its tasks, and the kernels autotune skips (with why)."""

    mod: tvm.IRModule
    tasks: tuple[Task, ...]
    skipped: dict[str, str] = field(default_factory=dict)


def load_model(model: Any, example_inputs: Any = None) -> tvm.IRModule:
    """A Relax IRModule from a Relax IRModule, a torch.nn.Module (with example inputs), a
    torch.export.ExportedProgram, or the path of an `.onnx` file or a `torch.export.save`d `.pt2` file."""
    if isinstance(model, tvm.IRModule):
        if not any(isinstance(f, relax.Function) for f in model.functions.values()):
            raise ModelError("this IRModule has no Relax function: tune its PrimFunc with autotune.tune instead")
        return model
    if isinstance(model, (str, os.PathLike)):
        return _load_file(Path(model))
    torch = sys.modules.get("torch")  # a torch object means torch is imported already
    if torch is not None and isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        return _from_torch(model, example_inputs)
    raise ModelError(
        f"cannot load a model from a {type(model).__name__}: pass a Relax IRModule, a torch.nn.Module with "
        "example_inputs, a torch.export.ExportedProgram, or an .onnx / .pt2 file"
    )


def extract_tasks(model: Any, example_inputs: Any = None, *, fast_math: bool = False) -> ModelTasks:
    """The model's tunable kernels as tasks, heaviest (most called) first.

    With `fast_math`, TVM's `relax.transform.FastMathTransform` first replaces softmax, exp, erf and
    tanh by TVM's fast approximations (topi.fast_*: polynomials instead of glibc's exact vector
    functions, which autotune's builds call otherwise (autotune.vector_math); float32 only). The
    tests bound fast exp within 5e-7 relative near 0 and 1e-5 near -80, and a softmax + tanh model
    within 1e-5 of PyTorch; erf is not measured.
    """
    mod = load_model(model, example_inputs)
    if fast_math:
        mod = relax.transform.FastMathTransform()(mod)
    mod = prepare(mod)
    scan = scan_functions(mod)
    calls = call_counts(mod)
    by_key: dict[str, list[str]] = {}
    for name, workload in scan.tunable.items():
        if calls.get(name, 0) > 0:  # a function nothing calls is not part of a model run
            by_key.setdefault(workload.key, []).append(name)
    tasks = [
        Task(names[0], scan.tunable[names[0]], sum(calls[n] for n in names), tuple(names))
        for names in by_key.values()
    ]
    tasks.sort(key=lambda t: (-t.weight * t.workload.flops, t.name))
    if not tasks:
        raise ModelError("the model has no kernel autotune can tune" + _why(scan.skipped))
    return ModelTasks(mod, tuple(tasks), dict(scan.skipped))


def call_counts(mod: tvm.IRModule) -> Counter[str]:
    """How many times each PrimFunc is called (call_tir) from the module's Relax functions."""
    counts: Counter[str] = Counter()
    call_tir = tvm.ir.Op.get(_CALL_TIR)

    def visit(expr: Any) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(call_tir):
            counts[expr.args[0].name_hint] += 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func.body, visit)
    return counts


def random_model_inputs(mod: tvm.IRModule, seed: int = 0) -> list[np.ndarray]:
    """Seeded random inputs for the model's `main`, from its parameters' static shapes and dtypes."""
    rng = np.random.default_rng(seed)
    arrays = []
    for param in mod["main"].params:
        info = param.ty
        if not isinstance(info, relax.TensorType) or info.shape is None:
            raise ModelError(f"model input {param.name} is not a tensor of known shape")
        try:
            shape = [int(d) for d in info.shape]
        except TypeError:
            raise ModelError(f"model input {param.name} has a symbolic shape; only static shapes are tuned") from None
        dtype = str(info.dtype)
        if dtype.startswith("float"):
            arrays.append(rng.standard_normal(shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 8, size=shape).astype(dtype))
    return arrays


# ---------------------------------------------------------------------------------------------
# private helpers


def _load_file(path: Path) -> tvm.IRModule:
    if not path.is_file():
        raise ModelError(f"no model file at {path}")
    if path.suffix == ".onnx":
        try:
            import onnx
        except ImportError:
            raise ModelError("loading .onnx models needs the onnx package (pip install onnx)") from None
        from tvm.relax.frontend.onnx import from_onnx

        try:
            proto = onnx.load(str(path))
        except Exception as err:  # onnx raises DecodeError and friends for a bad file
            raise ModelError(f"{path} is not a readable ONNX model: {err}") from None
        return from_onnx(proto, keep_params_in_input=False)
    if path.suffix == ".pt2":
        torch = _torch()
        try:
            program = torch.export.load(str(path))
        except Exception as err:  # torch raises several error types for a bad archive
            raise ModelError(f"{path} is not a torch.export archive: {err}") from None
        return _from_torch(program, None)
    raise ModelError(f"{path}: unknown model file type {path.suffix!r} (expected .onnx or .pt2)")


def _from_torch(model: Any, example_inputs: Any) -> tvm.IRModule:
    torch = _torch()
    from tvm.relax.frontend.torch import from_exported_program

    if isinstance(model, torch.export.ExportedProgram):
        program = model
    elif isinstance(model, torch.nn.Module):
        if example_inputs is None:
            raise ModelError("a torch.nn.Module needs example_inputs (a tuple of tensors) to be exported")
        inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
        with torch.no_grad():
            program = torch.export.export(model.eval(), inputs)
    else:
        raise ModelError(f"cannot load a model from a {type(model).__name__}")
    return from_exported_program(program)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ModelError("PyTorch models need torch (pip install 'autotune[torch]')") from None
    return torch


def _why(skipped: dict[str, str]) -> str:
    if not skipped:
        return ""
    name, reason = next(iter(skipped.items()))
    return f" ({len(skipped)} kernels skipped, e.g. {name}: {reason})"
