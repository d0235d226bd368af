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

`build` also gives LLVM's code generator one option (CODEGEN_OPTIONS): a smaller region in
which its instruction schedulers keep every memory access apart, so that unrolled kernels no
longer take seconds to schedule (see `codegen_target`).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import functools
import os
import threading
from typing import Any, Callable, Iterator

import tvm
from tvm import tirx

from .target import x86_features

# TIR intrinsic -> libmvec's name for float64 ("f" appended for float32). TVM vectorizes these (their
# TVectorizable attribute; sigmoid is lowered to exp), and lowers a vector call LLVM then scalarizes.
FUNCTIONS: dict[str, str] = {
    "tirx.exp": "exp", "tirx.exp2": "exp2", "tirx.log": "log", "tirx.log10": "log10", "tirx.tanh": "tanh",
    "tirx.sinh": "sinh", "tirx.cosh": "cosh", "tirx.sin": "sin", "tirx.cos": "cos", "tirx.tan": "tan",
    "tirx.pow": "pow",
}
# These TVM does not vectorize: a vectorized loop that calls one (GELU's erf) is turned back into a
# scalar loop, all of it. Within `lowering` they are marked vectorizable, and a vector call of one
# that libmvec has no variant for is split into one call per lane here.
SCALARIZED_BY_TVM: dict[str, str] = {
    "tirx.erf": "erf", "tirx.log1p": "log1p", "tirx.atan": "atan", "tirx.asin": "asin", "tirx.acos": "acos",
}
# Register bits -> (x86 vector ABI ISA letter, the LLVM feature it needs), widest first.
_ISA_BY_BITS: tuple[tuple[int, str, str], ...] = ((512, "e", "avx512f"), (256, "d", "avx2"), (256, "c", "avx"),
                                                 (128, "b", "sse2"))
# LLVM's instruction schedulers (before and after register allocation) build a dependence graph of
# each basic block, in which every load and store is checked against the earlier ones still pending,
# up to `dag-maps-huge-region` (1000) of them, before older ones are folded into one barrier. An
# unrolled tile's block holds thousands of accesses: building its graph took up to 9 s of a batch
# matmul candidate's 10 s build here, against 0.9 s with 100. Scheduling within 100 accesses left
# the kernels as fast: timed interleaved, run-time ratio geomean 1.01 over 96 random draws of 8
# workloads, 0.98-1.01 for three tunes' best kernels (bench/codegen_options.py; RESULTS.md, 2026-12-07).
CODEGEN_OPTIONS: tuple[str, ...] = ("-dag-maps-huge-region:uint=100",)
_LEVEL = 99  # above TVM's own lowerings (level 10)
_FLOAT = tvm.DataType("float32").type_code

_active_isas: contextvars.ContextVar[dict[int, str] | None] = contextvars.ContextVar("vector_math_isas", default=None)
_builds_lock = threading.Lock()  # guards _builds_within, and the first registration of the lowerings (`lowering`)
# Held while `build` compiles and `export_library` writes: both set LLVM's process-wide options
# (CODEGEN_OPTIONS) for the module at hand, and TVM does not guard that state against two threads.
_llvm_options_lock = threading.RLock()
_builds_within = 0  # threads inside `lowering` with libmvec: SCALARIZED_BY_TVM is vectorizable while > 0


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
    """`tvm.compile(mod, target=target, **kwargs)`, with libmvec for vector math on x86 and LLVM's
    CODEGEN_OPTIONS. One at a time in a process (_llvm_options_lock)."""
    with lowering(target), _llvm_options_lock:
        return tvm.compile(mod, target=codegen_target(target), **kwargs)


def codegen_target(target: tvm.target.Target) -> tvm.target.Target:
    """`target` with CODEGEN_OPTIONS among its LLVM options (`cl-opt`), for llvm targets and an llvm
    `host` (which TVM compiles CPU functions with); an option the target sets itself is left as it
    is. TVM records the options in the module it builds and sets them, while it works on that
    module's LLVM code (export, function lookups of an in-memory module), in process-wide LLVM state:
    another thread compiling with other `cl-opt` values at that moment fails TVM's check."""
    if str(target.kind.name) != "llvm":
        return target
    config = dict(target.export())
    if target.host is not None and str(target.host.kind.name) == "llvm":
        config["host"] = codegen_target(target.host).export()
    own = [str(option) for option in config.get("cl-opt", [])]
    named = {_option_name(option) for option in own}
    config["cl-opt"] = own + [option for option in CODEGEN_OPTIONS if _option_name(option) not in named]
    return tvm.target.Target(config)


def _option_name(option: str) -> str:
    """"-name:type=value" -> "name" (TVM's cl-opt syntax; type and value optional)."""
    return option.lstrip("-").split("=")[0].split(":")[0]


def export_library(executable: Any, path: str, target: tvm.target.Target, fcompile: Any = None) -> None:
    """Write `executable` as a shared library that loads libmvec when it was built with it."""
    kwargs: dict[str, Any] = {"fcompile": fcompile} if fcompile is not None else {}
    if register_isas(target):
        kwargs["options"] = ["-lmvec"]
    with _llvm_options_lock:
        executable.export_library(path, **kwargs)


@contextlib.contextmanager
def lowering(target: tvm.target.Target) -> Iterator[None]:
    """Within: TVM's intrinsic lowering calls libmvec for vector math this target can run."""
    isas = register_isas(target)
    if isas:
        with _builds_lock:  # two threads' first builds at once would each register (seen: 17 of 16)
            _register_lowerings()
        _count_build(+1)
    token = _active_isas.set(isas or None)
    try:
        yield
    finally:
        _active_isas.reset(token)
        if isas:
            _count_build(-1)


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
    """Put our lowering of each function in front of TVM's (once per process); it falls back to
    TVM's own outside `lowering` and for calls it does not handle."""
    for op_name, base in [*FUNCTIONS.items(), *SCALARIZED_BY_TVM.items()]:
        op = tvm.ir.Op.get(op_name)
        fallback = op.get_attr("llvm.FLowerIntrinsic") or op.get_attr("default.FLowerIntrinsic")
        lower = _lowering_for(base, fallback, per_lane=op_name in SCALARIZED_BY_TVM)
        tirx.register_intrin_lowering(op_name, "llvm", f=lower, level=_LEVEL)


def _count_build(step: int) -> None:
    """Mark SCALARIZED_BY_TVM vectorizable while any thread builds within `lowering`, and only then:
    outside, TVM's fallback would pass a vector to the scalar libm function."""
    global _builds_within
    with _builds_lock:
        before, _builds_within = _builds_within, _builds_within + step
        if before == 0 or _builds_within == 0:
            for op_name in SCALARIZED_BY_TVM:
                op = tvm.ir.Op.get(op_name)
                op.set_attr("TVectorizable", True) if _builds_within else op.reset_attr("TVectorizable")


def _lowering_for(base: str, fallback: Callable[[Any], Any], *, per_lane: bool) -> Callable[[Any], Any]:
    def lower(call: Any) -> Any:
        isas = _active_isas.get()
        lowered = _vector_call(call, base, isas) if isas else None
        if lowered is None and per_lane and _lanes_of(call) > 1:
            lowered = _per_lane(call, fallback)
        return lowered if lowered is not None else fallback(call)

    return lower


def _vector_call(call: Any, base: str, isas: dict[int, str]) -> Any:
    """The call as libmvec calls on register-wide pieces, or None when libmvec has no variant for it."""
    dtype = _dtype(call)
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


def _per_lane(call: Any, fallback: Callable[[Any], Any]) -> Any:
    """A vector call as one scalar call per lane (TVM's lowering of each), gathered into a vector."""
    dtype = _dtype(call)
    scalar = tvm.DataType(f"float{dtype.bits}")
    calls = [fallback(tirx.call_intrin(str(scalar), call.op.name, *(_lanes(arg, lane, 1) for arg in call.args)))
             for lane in range(dtype.lanes)]
    return tirx.Shuffle(calls, [tirx.IntImm("int32", i) for i in range(dtype.lanes)])


def _dtype(call: Any) -> tvm.DataType:
    return tvm.DataType(str(call.ty))


def _lanes_of(call: Any) -> int:
    return _dtype(call).lanes


def _lanes(vector: Any, start: int, count: int) -> Any:
    return tirx.Shuffle([vector], [tirx.IntImm("int32", i) for i in range(start, start + count)])
