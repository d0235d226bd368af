"""Building kernels, with glibc's vector math library (libmvec) for vectorized exp, log, tanh, ...

Why: TVM's LLVM backend turns a vectorized `exp` into `llvm.exp.v16f32`, which LLVM on x86 can
only scalarize into one libm `expf` call per lane. A softmax is then bound by those calls (4x
slower than PyTorch's on 512x256, bench/RESULTS.md). glibc ships vector versions of these functions
(`_ZGVeN16v_expf`: 16 float lanes in one AVX-512 register, within a few ulp like libm's), named
by the x86 vector function ABI. Inside `build`, a vector call of a function in `FUNCTIONS` is
lowered to the libmvec variant for its register width; wider vectors are split into register-wide
pieces. Everything else, and every build outside `build`, is lowered as TVM does it.

Every build of autotune goes through `build` and every shared library it writes through
`export_library` (which links libmvec), so the kernels a tune measures are the ones a pipeline
runs. Set AUTOTUNE_VECTOR_MATH=0 to build with TVM's own lowering everywhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import functools
import os
from typing import Any, Callable, Iterator

import tvm
from tvm import tirx

from .target import x86_features

# TIR intrinsic -> libmvec's name for float64 ("f" appended for float32). TVM vectorizes these
# (their TVectorizable attribute; sigmoid is lowered to exp). erf is not: VectorizeLoop scalarizes it.
FUNCTIONS: dict[str, str] = {
    "tirx.exp": "exp", "tirx.exp2": "exp2", "tirx.log": "log", "tirx.log10": "log10", "tirx.tanh": "tanh",
    "tirx.sinh": "sinh", "tirx.cosh": "cosh", "tirx.sin": "sin", "tirx.cos": "cos", "tirx.tan": "tan",
    "tirx.pow": "pow",
}
# Register bits -> (x86 vector ABI ISA letter, the LLVM feature it needs), widest first.
_ISA_BY_BITS: tuple[tuple[int, str, str], ...] = ((512, "e", "avx512f"), (256, "d", "avx2"), (256, "c", "avx"),
                                                 (128, "b", "sse2"))
_LEVEL = 99  # above TVM's own lowerings (level 10)
_FLOAT = tvm.DataType("float32").type_code

_active_isas: contextvars.ContextVar[dict[int, str] | None] = contextvars.ContextVar("vector_math_isas", default=None)


def enabled() -> bool:
    """Whether builds use libmvec: not when AUTOTUNE_VECTOR_MATH=0, nor where glibc has no libmvec."""
    return os.environ.get("AUTOTUNE_VECTOR_MATH", "1") != "0" and _libmvec() is not None


def register_isas(target: tvm.target.Target) -> dict[int, str]:
    """Vector register widths (bits) this target's code may call libmvec with -> the ISA letter of each."""
    features = x86_features(target)
    if features is None or not enabled():
        return {}
    isas: dict[int, str] = {}
    for bits, letter, feature in _ISA_BY_BITS:
        if feature in features and bits not in isas:
            isas[bits] = letter
    return isas


def build(mod: Any, target: tvm.target.Target, **kwargs: Any) -> Any:
    """`tvm.compile(mod, target=target, **kwargs)`, with libmvec for vector math on x86."""
    with lowering(target):
        return tvm.compile(mod, target=target, **kwargs)


def export_library(executable: Any, path: str, target: tvm.target.Target, fcompile: Any = None) -> None:
    """Write `executable` as a shared library that loads libmvec when it was built with it."""
    kwargs: dict[str, Any] = {"fcompile": fcompile} if fcompile is not None else {}
    if register_isas(target):
        kwargs["options"] = ["-lmvec"]
    executable.export_library(path, **kwargs)


@contextlib.contextmanager
def lowering(target: tvm.target.Target) -> Iterator[None]:
    """Within: TVM's intrinsic lowering calls libmvec for vector math this target can run."""
    isas = register_isas(target)
    if isas:
        _register_lowerings()
    token = _active_isas.set(isas or None)
    try:
        yield
    finally:
        _active_isas.reset(token)


def libmvec_name(base: str, dtype: tvm.DataType, isa: str, arity: int) -> str:
    """The x86 vector ABI name of `base` for `dtype`'s lanes: _ZGVeN16v_expf, _ZGVdN4vv_pow, ..."""
    suffix = "f" if dtype.bits == 32 else ""
    return f"_ZGV{isa}N{dtype.lanes}{'v' * arity}_{base}{suffix}"


# ---------------------------------------------------------------------------------------------
# private helpers


@functools.lru_cache(maxsize=None)
def _libmvec() -> ctypes.CDLL | None:
    """glibc's libmvec, loaded into the process's global symbol scope so that modules TVM's JIT
    runs in this process resolve its functions; None where there is none."""
    name = ctypes.util.find_library("mvec")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _register_lowerings() -> None:
    """Put our lowering of each function in FUNCTIONS in front of TVM's (once per process); it
    falls back to TVM's own outside `lowering` and for calls it does not handle."""
    for op_name, base in FUNCTIONS.items():
        op = tvm.ir.Op.get(op_name)
        fallback = op.get_attr("llvm.FLowerIntrinsic") or op.get_attr("default.FLowerIntrinsic")
        tirx.register_intrin_lowering(op_name, "llvm", f=_lowering_for(base, fallback), level=_LEVEL)


def _lowering_for(base: str, fallback: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    def lower(call: Any) -> Any:
        isas = _active_isas.get()
        lowered = _vector_call(call, base, isas) if isas else None
        if lowered is not None:
            return lowered
        return fallback(call) if fallback is not None else call

    return lower


def _vector_call(call: Any, base: str, isas: dict[int, str]) -> Any:
    """The call as libmvec calls on register-wide pieces, or None when libmvec has no variant for it."""
    dtype = tvm.DataType(str(call.ty))
    if dtype.type_code != _FLOAT or dtype.bits not in (32, 64) or dtype.lanes < 2:
        return None
    total_bits = dtype.bits * dtype.lanes
    if total_bits in isas:
        return _extern(base, dtype, isas[total_bits], list(call.args))
    widest = max(isas)
    if total_bits % widest:
        return None
    piece = widest // dtype.bits
    pieces = [_extern(base, tvm.DataType(f"float{dtype.bits}x{piece}"), isas[widest],
                      [_lanes(arg, start, piece) for arg in call.args])
              for start in range(0, dtype.lanes, piece)]
    if any(p is None for p in pieces):
        return None
    return tirx.Shuffle(pieces, [tirx.IntImm("int32", i) for i in range(dtype.lanes)])


def _extern(base: str, dtype: tvm.DataType, isa: str, args: list[Any]) -> Any:
    name = libmvec_name(base, dtype, isa, len(args))
    if not hasattr(_libmvec(), name):  # glibc before 2.35 has exp, log, sin, cos, pow only
        return None
    return tirx.call_pure_extern(str(dtype), name, *args)


def _lanes(vector: Any, start: int, count: int) -> Any:
    return tirx.Shuffle([vector], [tirx.IntImm("int32", i) for i in range(start, start + count)])
