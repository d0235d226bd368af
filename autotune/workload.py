"""Workloads: the tensor program to tune, in one canonical form.

Whatever the user passes (a PrimFunc, an IRModule holding one, or TE tensors) becomes a
`Workload`: an IRModule with a single PrimFunc named "main", its stable key, its FLOP count,
and the shapes/dtypes of its arguments (which ones are outputs), so that every later stage
(space, measurement, cache) works from the same description.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, te

from .errors import WorkloadError, last_line

_ATTRS_OUTSIDE_THE_KEY = ("op_pattern",)
SUPPORTED_DTYPES = ("float32", "float64", "float16", "int8", "uint8", "int32", "int64")


@dataclass(frozen=True)
class ArgInfo:
    """Shape, dtype and role of one argument of the workload's function."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    is_output: bool

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "is_output": self.is_output}

    @staticmethod
    def from_json(data: dict[str, Any]) -> "ArgInfo":
        return ArgInfo(data["name"], tuple(data["shape"]), data["dtype"], bool(data["is_output"]))


@dataclass(frozen=True, eq=False)
class Workload:
    """One tunable tensor program: `mod` holds a single PrimFunc called "main"."""

    name: str
    mod: tvm.IRModule
    key: str
    flops: float
    args: tuple[ArgInfo, ...]

    @property
    def script(self) -> str:
        """TVMScript text of the function: what the key hashes and what the cache stores."""
        return self.mod["main"].script()

    @property
    def inputs(self) -> tuple[ArgInfo, ...]:
        return tuple(a for a in self.args if not a.is_output)

    @property
    def outputs(self) -> tuple[ArgInfo, ...]:
        return tuple(a for a in self.args if a.is_output)

    @property
    def mod_json(self) -> str:
        """The module in TVM's JSON format: how the cache stores it, since reading it back runs no code."""
        return tvm.ir.save_json(self.mod)

    def random_inputs(self, seed: int = 0) -> list[np.ndarray]:
        """Deterministic random values for every argument (outputs zero-filled)."""
        rng = np.random.default_rng(seed)
        return [_random_array(rng, a) for a in self.args]

    def __repr__(self) -> str:
        return f"Workload({self.name!r}, key={self.key}, flops={self.flops:.3g})"


def as_workload(obj: Any, name: str | None = None) -> Workload:
    """Turn a PrimFunc, an IRModule with one PrimFunc, a list of TE tensors, or a Workload into a Workload.

    Example: ``as_workload([A, B, C], name="matmul")`` with TE placeholders A, B and output C.
    """
    if isinstance(obj, Workload):
        return obj
    func = _canonical(_to_prim_func(obj))
    _check_static(func)
    mod = tvm.IRModule({"main": func})
    script = func.script()
    key = hashlib.sha256(script.encode()).hexdigest()[:20]
    args = _arg_infos(func)
    if not any(a.is_output for a in args):
        raise WorkloadError("the function writes none of its arguments, so it has no output to tune")
    return Workload(name=name or _default_name(func), mod=mod, key=key, flops=_flops(mod), args=args)


def stored_workload(row: dict[str, Any]) -> Workload:
    """A workload row of the cache (Database.workload_row) back as a Workload, checked against its key.

    Read from TVM's JSON (a data format) when the row has it. Never from the TVMScript text of a
    row that came from elsewhere: parsing TVMScript evaluates Python expressions, so a crafted
    script would run code. Only rows written by autotune < 0.2 on this machine lack the JSON.
    """
    try:
        if row.get("mod_json"):
            mod = tvm.ir.load_json(row["mod_json"])
        else:
            mod = tvm.script.from_source(row["script"])
    except Exception as err:  # TVM's parsers raise their own error types
        raise WorkloadError(f"stored workload {row.get('key')} cannot be read: {last_line(err)}") from None
    work = as_workload(mod, name=row.get("name"))
    if work.key != row.get("key"):
        raise WorkloadError(f"stored workload {row.get('key')} reads back as another function (key {work.key})")
    return work


# ---------------------------------------------------------------------------------------------
# private helpers


def _to_prim_func(obj: Any) -> tvm.tirx.PrimFunc:
    if isinstance(obj, tvm.tirx.PrimFunc):
        return obj
    if isinstance(obj, tvm.IRModule):
        funcs = [f for _, f in obj.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
        if len(funcs) != 1 or len(obj.functions) != 1:
            raise WorkloadError(
                f"an IRModule workload must hold exactly one PrimFunc, this one holds {len(obj.functions)} functions"
            )
        return funcs[0]
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(t, te.Tensor) for t in obj):
        try:
            return te.create_prim_func(list(obj))
        except Exception as err:  # TVM raises a generic error; give the user one line.
            raise WorkloadError(f"cannot build a PrimFunc from these TE tensors: {last_line(err)}") from err
    raise WorkloadError(
        f"cannot tune a {type(obj).__name__}: pass a tvm PrimFunc, an IRModule with one PrimFunc, "
        "or a list of TE tensors (inputs then outputs)"
    )


def _canonical(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """The function as the key sees it: named "main", no-alias, without attrs that do not change the code.

    Same normalization as MetaSchedule's (`global_symbol` "main", `tirx.noalias` added), so one
    function has one key whichever road it comes by; `op_pattern` is dropped because Relax's
    AnnotateTIROpPattern adds it again each time a module is prepared.
    """
    for attr in _ATTRS_OUTSIDE_THE_KEY:
        if func.attrs and attr in func.attrs:
            func = func.without_attr(attr)
    if not (func.attrs and "tirx.noalias" in func.attrs):
        func = func.with_attr("tirx.noalias", True)
    return func.with_attr("global_symbol", "main")


def _check_static(func: tvm.tirx.PrimFunc) -> None:
    for buf in func.params:
        if not hasattr(buf, "shape") or buf.shape is None:
            raise WorkloadError(f"argument {buf.name} is a scalar; only tensor arguments are supported")
        for dim in buf.shape:
            if not isinstance(dim, tvm.tirx.IntImm):
                raise WorkloadError(f"argument {buf.name} has a symbolic shape ({dim}); only static shapes are tuned")
        if str(buf.dtype) not in SUPPORTED_DTYPES:
            raise WorkloadError(f"argument {buf.name} has dtype {buf.dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")


def _arg_infos(func: tvm.tirx.PrimFunc) -> tuple[ArgInfo, ...]:
    written = _written_buffer_names(func)
    infos = []
    for buf in func.params:
        shape = tuple(int(d) for d in buf.shape)
        infos.append(ArgInfo(buf.name, shape, str(buf.dtype), buf.name in written))
    return tuple(infos)


def _written_buffer_names(func: tvm.tirx.PrimFunc) -> set[str]:
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    names: set[str] = set()
    stack = list(sch.get_child_blocks(sch.get_sblock("root")))
    while stack:
        block = stack.pop()
        names.update(region.source.name for region in sch.get(block).writes)
        stack.extend(sch.get_child_blocks(block))
    return names


def _flops(mod: tvm.IRModule) -> float:
    try:
        return float(s_tir.analysis.estimate_tir_flops(mod))
    except Exception:  # estimate_tir_flops rejects some loop forms; GFLOPS is then unknown, not fatal.
        return 0.0


def _default_name(func: tvm.tirx.PrimFunc) -> str:
    out = func.params[-1].name
    return f"func_{out}"


def _random_array(rng: np.random.Generator, arg: ArgInfo) -> np.ndarray:
    if arg.is_output:
        return np.zeros(arg.shape, dtype=arg.dtype)
    if arg.dtype.startswith("float"):
        return rng.uniform(-1.0, 1.0, size=arg.shape).astype(arg.dtype)
    info = np.iinfo(arg.dtype)
    low, high = max(info.min, -8), min(info.max, 8)
    return rng.integers(low, high, size=arg.shape, endpoint=True).astype(arg.dtype)

