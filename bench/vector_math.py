"""Vectorized elementwise math with TVM's own lowering against glibc's vector functions.

    python bench/vector_math.py [--shape 64,256] [--dtype float32] [--repeats 7]

For each function, one kernel (rows in parallel, columns split by the SIMD width and vectorized)
built twice from the same schedule: with `tvm.compile` (TVM lowers a vector exp to LLVM's, which
x86 scalarizes into libm calls; erf makes TVM scalarize the whole loop) and with
`autotune.vector_math.build` (libmvec). Both are timed in alternation, and each output is compared
with float64 numpy (errors in units of the dtype's epsilon, relative to max(|exact|, 1)).
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform

import numpy as np
import tvm
from tvm import s_tir, te

from autotune import vector_math
from autotune.target import resolve_target, vector_registers

FUNCTIONS = {
    "exp": (lambda x: te.exp(x), np.exp, (-10, 10)),
    "log": (lambda x: te.log(x), np.log, (1e-3, 100)),
    "tanh": (lambda x: te.tanh(x), np.tanh, (-5, 5)),
    "sigmoid": (lambda x: te.sigmoid(x), lambda x: 1 / (1 + np.exp(-x)), (-10, 10)),
    "erf": (lambda x: te.erf(x), np.vectorize(math.erf), (-4, 4)),
    "gelu": (lambda x: x * 0.5 * (1 + te.erf(x * 0.7071067811865476)),
             lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x * 0.7071067811865476)), (-5, 5)),
    "sin": (lambda x: te.sin(x), np.sin, (-10, 10)),
}


def kernel(fn, shape: tuple[int, int], dtype: str, lanes: int) -> tvm.IRModule:
    x = te.placeholder(shape, dtype, name="x")
    y = te.compute(shape, lambda i, j: fn(x[i, j]), name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    i, j = sch.get_loops(sch.get_sblock("y"))
    sch.parallel(i)
    sch.vectorize(sch.split(j, factors=[None, lanes])[1])
    return sch.mod


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,256")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    hw = resolve_target("llvm")
    registers = vector_registers(hw.target)
    lanes = registers.lanes(np.dtype(args.dtype).itemsize * 8) if registers else 4
    dev = tvm.cpu()
    eps = np.finfo(args.dtype).eps
    print(f"# vector_math: {args.dtype} {shape[0]}x{shape[1]}, {lanes} lanes, mcpu {hw.target.attrs.get('mcpu')}, "
          f"{platform.processor() or platform.machine()}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; libmvec: {vector_math.enabled()}")
    print("| function | TVM's lowering us | libmvec us | speedup | TVM max err (eps) | libmvec max err (eps) |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name, (fn, exact, (lo, hi)) in FUNCTIONS.items():
        mod = kernel(fn, shape, args.dtype, lanes)
        builds = {"tvm": tvm.compile(mod, target=hw.target), "mvec": vector_math.build(mod, hw.target)}
        x = rng.uniform(lo, hi, shape).astype(args.dtype)
        want = exact(x.astype("float64"))
        xt = tvm.runtime.tensor(x, dev)
        times: dict[str, list[float]] = {k: [] for k in builds}
        errors = {}
        for key, ex in builds.items():
            out = tvm.runtime.tensor(np.zeros(shape, args.dtype), dev)
            ex.mod["main"](xt, out)
            errors[key] = float(np.max(np.abs(out.numpy() - want) / np.maximum(np.abs(want), 1)) / eps)
        for _ in range(args.repeats):  # alternate, so that both see the same machine
            for key, ex in builds.items():
                out = tvm.runtime.tensor(np.zeros(shape, args.dtype), dev)
                timer = ex.mod.time_evaluator("main", dev, number=50, repeat=1, min_repeat_ms=20)
                times[key].append(timer(xt, out).mean)
        t_tvm, t_mvec = (float(np.median(times[k])) * 1e6 for k in ("tvm", "mvec"))
        print(f"| {name} | {t_tvm:.1f} | {t_mvec:.1f} | {t_tvm / t_mvec:.1f}x | {errors['tvm']:.1f} | {errors['mvec']:.1f} |")


if __name__ == "__main__":
    main()
