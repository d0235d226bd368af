"""Benchmark: tune a suite of built-in workloads at a fixed trial budget, compare with PyTorch and NumPy.

Run from the checkout root:

    python bench/tune_suite.py --quick                          # tiny shapes, 8 trials: a smoke run
    python bench/tune_suite.py                                  # full suite, 64 trials per workload
    python bench/tune_suite.py --trials 128 --workloads matmul,dense --write bench/RESULTS.md

Each workload is tuned with `autotune.tune` (its default, model-guided search) into a fresh temporary database
(`--db PATH` to use another: earlier records there then count towards "best"). All tuning
runs first; the baselines are checked and timed afterwards, so that PyTorch's and NumPy's
thread pools never compete with a measurement. The table reports, per workload: the tuning
wall time, the untuned latency (the record of the space's default candidate), the best
latency and GFLOPS as the tuner measured them, the best kernel re-timed by the harness that
times the baselines (min over 7 interleaved rounds of the median of single calls, Python
call overhead of ~10 us included), the same computation in PyTorch eager and in NumPy where
one exists (each checked once against TVM's untuned build on the same inputs), and GFLOPS
ratios "autotune / torch" and "autotune / numpy" of the tuner's best (> 1: autotune is
faster). Every GFLOPS uses the workload's own FLOP count, so a ratio is also the inverse
latency ratio. The header says how busy other processes kept the CPUs meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shlex
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
import tvm

import autotune
from autotune import ops, vector_math

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the script still runs; the torch columns say n/a
    torch = None
try:
    import threadpoolctl
except ImportError:
    threadpoolctl = None

# name -> (full shape, quick shape, options). Baselines below compute exactly the same thing.
SUITE: dict[str, tuple[str, str, dict[str, Any]]] = {
    "matmul": ("512,512,512", "64,64,64", {}),
    "dense": ("128,768,768", "32,64,64", {"bias": True, "epilogue": "relu"}),
    "conv2d_nchw": ("1,64,56,56,64,3,3", "1,8,14,14,8,3,3", {"bias": True, "relu": True}),
    "softmax": ("256,1024", "32,128", {}),
    "layernorm": ("128,768", "32,128", {}),
}

Kernel = Callable[[], Any]


def torch_kernel(op: str, args: list[np.ndarray], epilogue: str = "relu") -> Kernel | None:
    """A no-argument function running the op in PyTorch eager on the workload's inputs (dense: with
    its bias and `epilogue`, ops' option)."""
    if torch is None:
        return None
    t = [torch.from_numpy(a) for a in args]
    if op == "matmul":  # C = A @ B
        return lambda: torch.matmul(t[0], t[1])
    if op == "dense":  # epilogue(X @ W.T + b), W laid out N x K as in nn.Linear; exact gelu, as ops'
        act = {"relu": F.relu, "gelu": F.gelu, "none": lambda x: x}[epilogue]
        return lambda: act(F.linear(t[0], t[1], t[2]))
    if op == "conv2d_nchw":  # relu(conv2d(data, weight OIHW, stride 1, padding 1) + bias); bias (K,1,1) -> (K,)
        bias = t[2].reshape(-1)
        return lambda: F.relu(F.conv2d(t[0], t[1], bias, stride=1, padding=1))
    if op == "softmax":  # softmax over the last axis
        return lambda: torch.softmax(t[0], dim=-1)
    if op == "layernorm":  # (x - mean) / sqrt(var + 1e-5) * gamma + beta over the last axis, biased variance
        return lambda: F.layer_norm(t[0], t[0].shape[-1:], t[1], t[2], eps=1e-5)
    return None


def numpy_kernel(op: str, args: list[np.ndarray]) -> Kernel | None:
    """A no-argument function running the op in NumPy; None where NumPy has no equivalent (conv2d)."""
    if op == "matmul":  # C = A @ B (OpenBLAS sgemm)
        return lambda: args[0] @ args[1]
    if op == "dense":  # relu(X @ W.T + b)
        return lambda: np.maximum(args[0] @ args[1].T + args[2], 0)
    if op == "softmax":  # exp(x - rowmax) / rowsum, as topi computes it
        def softmax() -> np.ndarray:
            e = np.exp(args[0] - args[0].max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        return softmax
    if op == "layernorm":  # (x - mean) / sqrt(var + 1e-5) * gamma + beta over the last axis
        def layernorm() -> np.ndarray:
            x = args[0]
            mean = x.mean(axis=-1, keepdims=True)
            var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
            return (x - mean) / np.sqrt(var + 1e-5) * args[1] + args[2]
        return layernorm
    return None


def median_secs(fn: Kernel, min_repeats: int = 10, budget_secs: float = 0.15) -> float:
    """Median of single-call times (time.perf_counter): at least `min_repeats` calls, about `budget_secs` in all."""
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    times = []
    for _ in range(max(min_repeats, min(5000, int(budget_secs / once)))):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_kernels(kernels: dict[str, Kernel], rounds: int = 7) -> dict[str, float]:
    """Per kernel, the smallest of `rounds` medians after warm-up. The kernels take turns round by round, so
    a burst of load from other processes (the machine may be shared) hits them alike, and the min drops it."""
    for fn in kernels.values():
        for _ in range(3):
            fn()
    best = dict.fromkeys(kernels, float("inf"))
    for _ in range(rounds):
        for name, fn in kernels.items():
            best[name] = min(best[name], median_secs(fn))
    return best


def tvm_kernel(mod: tvm.IRModule, hw: autotune.HardwareTarget, arrays: list[np.ndarray]) -> tuple[Kernel, list[Any]]:
    """Compile a module for the target; a no-argument function calling it on `arrays`, and its tensors."""
    lib = vector_math.build(mod, hw.target)
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    main = lib["main"]
    return (lambda: main(*tensors)), tensors


def tune_one(op: str, shape: str, options: dict[str, Any], hw: Any, trials: int, db: str) -> dict[str, Any]:
    workload = ops.make(op, shape, **options)
    print(f"[tune] {workload.name}: {trials} trials ...", file=sys.stderr, flush=True)

    def progress(p: autotune.Progress) -> None:
        if p.done % 16 == 0 or p.done == p.total:
            best = f"{p.best_latency * 1e3:.3f} ms" if p.best_latency else "none"
            print(f"[tune]   {p.done}/{p.total}, best {best}", file=sys.stderr, flush=True)

    result = autotune.tune(workload, hw, trials, db, progress=progress)
    default_key = autotune.SearchSpace(workload).default_candidate().key
    with autotune.Database(db) as database:
        untuned = [r.latency for r in database.trials(workload.key, hw.key) if r.candidate_key == default_key]
    return {"op": op, "shape": shape, "options": options, "workload": workload, "result": result,
            "untuned": next((x for x in untuned if x), None)}


def baselines(row: dict[str, Any], hw: autotune.HardwareTarget, notes: list[str]) -> None:
    """Check each baseline against TVM's untuned output once, then time it; adds their seconds to row."""
    workload = row["workload"]
    arrays = workload.random_inputs(0)
    inputs = [a for a, info in zip(arrays, workload.args) if not info.is_output]
    untuned, tensors = tvm_kernel(workload.mod, hw, arrays)  # the semantics every baseline is checked against
    untuned()
    (want,) = [t.numpy() for t, info in zip(tensors, workload.args) if info.is_output]
    # The tuner's best kernel, re-timed here by the same harness as the baselines.
    kernels = {"retimed": tvm_kernel(row["result"].mod, hw, arrays)[0]} if row["result"].mod else {}
    for lib, make in (("torch", torch_kernel), ("numpy", numpy_kernel)):
        fn = make(row["op"], inputs)
        if fn is None:
            continue
        got = np.asarray(fn())
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-4):
            diff = np.max(np.abs(got - want)) if got.shape == want.shape else f"shape {got.shape}"
            notes.append(f"{workload.name}: {lib} output differs from TVM's (max |diff| {diff}); not timed")
            continue
        kernels[lib] = fn
    with contextlib.ExitStack() as stack:
        if torch is not None:
            stack.enter_context(torch.inference_mode())
        if threadpoolctl is not None:
            stack.enter_context(threadpoolctl.threadpool_limits(limits=hw.num_cores, user_api="blas"))
        times = time_kernels(kernels)
    row.update({name: times.get(name) for name in ("retimed", "torch", "numpy")})


def table(rows: list[dict[str, Any]]) -> str:
    head = ["workload", "shape", "trials", "tune s", "trials/s", "statuses", "untuned ms", "best ms",
            "best GFLOPS", "vs untuned", "best re-timed ms", "torch ms", "torch GFLOPS", "numpy ms", "numpy GFLOPS",
            "autotune / torch", "autotune / numpy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        w, res = row["workload"], row["result"]
        best = res.best_latency
        gf = lambda secs: f"{w.flops / secs / 1e9:.1f}" if secs and w.flops else "n/a"  # noqa: E731
        ms = lambda secs: f"{secs * 1e3:.3f}" if secs else "n/a"  # noqa: E731
        ratio = lambda secs: f"{secs / best:.2f}" if secs and best else "n/a"  # noqa: E731 GFLOPS ratio
        opts = ",".join(k if v is True else f"{k}={v}" for k, v in row["options"].items())
        speedup = f"{row['untuned'] / best:.2f}x" if row["untuned"] and best else "n/a"
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(res.counts().items()))
        lines.append("| " + " | ".join([
            row["op"] + (f" ({opts})" if opts else ""), row["shape"].replace(",", "x"), str(len(res.trials)),
            f"{res.wall_secs:.1f}", f"{len(res.trials) / res.wall_secs:.2f}", statuses,
            ms(row["untuned"]), ms(best), gf(best), speedup, ms(row["retimed"]),
            ms(row["torch"]), gf(row["torch"]), ms(row["numpy"]), gf(row["numpy"]),
            ratio(row["torch"]), ratio(row["numpy"]),
        ]) + " |")
    return "\n".join(lines)


def cpu_secs() -> tuple[float, float]:
    """(core-seconds all processes kept the CPUs busy, core-seconds this process and its reaped children used)."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    own = os.times()
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system


def header(hw: autotune.HardwareTarget, argv: list[str], total_secs: float, others: float) -> str:
    model = hw.fingerprint.get("model_name") or "unknown CPU"
    if torch is not None:
        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads, inference_mode"
    else:
        torch_info = "torch not installed (n/a)"
    if threadpoolctl is not None:
        blas = ", ".join(f"{p['internal_api']} {p.get('version')}" for p in threadpoolctl.threadpool_info()
                         if p["user_api"] == "blas")
        blas_info = f"{blas or 'BLAS'} limited to {hw.num_cores} threads (threadpoolctl)"
    else:
        threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
        blas_info = f"default BLAS threads (threadpoolctl not installed; OPENBLAS_NUM_THREADS={threads})"
    tvm_threads = os.environ.get("TVM_NUM_THREADS")
    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"))
    return "\n".join([
        f"## {datetime.datetime.now(datetime.timezone.utc):%a %b %d %H:%M:%S UTC %Y}",
        "",
        f"- machine: {model}, {hw.num_cores} cores used; target key `{hw.key}`, mcpu `{hw.target_json().get('mcpu')}`",
        f"- autotune {autotune.__version__}, default (model-guided) search; TVM {tvm.__version__}, {tvm_threads} threads; {torch_info}",
        f"- numpy {np.__version__}: {blas_info}; {env}",
        f"- command: `{' '.join(shlex.quote(a) for a in ['python', *argv])}`; total {total_secs:.0f} s",
        f"- other processes kept {others:.0f} core-s busy during the run ({others / total_secs:.2f} cores on average;"
        f" load average at the end {os.getloadavg()[0]:.2f}): timings compete with them when this is not ~0",
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, help="trials per workload (default 64, or 8 with --quick)")
    parser.add_argument("--workloads", help=f"comma-separated subset of: {','.join(SUITE)}")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 8 trials: a smoke run")
    parser.add_argument("--db", help="tuning database (default: a fresh temporary one)")
    parser.add_argument("--write", metavar="PATH", help="append this run's section to a Markdown file")
    args = parser.parse_args(argv[1:])
    names = args.workloads.split(",") if args.workloads else list(SUITE)
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(SUITE)}")
    trials = args.trials or (8 if args.quick else 64)
    hw = autotune.resolve_target("llvm")
    # TVM's runtime defaults to half the hardware threads on x86 (it assumes SMT): give the re-timed kernels the
    # cores the tuner's runner uses. Read when TVM's thread pool starts, i.e. at the first kernel run, not at import.
    os.environ["TVM_NUM_THREADS"] = str(hw.num_cores)
    if torch is not None:
        torch.set_num_threads(hw.num_cores)
    start, (busy0, own0) = time.perf_counter(), cpu_secs()
    with tempfile.TemporaryDirectory(prefix="tune_suite-") as tmp:
        db = args.db or os.path.join(tmp, "tuning.db")
        rows = [tune_one(n, SUITE[n][1 if args.quick else 0], SUITE[n][2], hw, trials, db) for n in names]
    notes: list[str] = []
    for row in rows:
        print(f"[baselines] {row['workload'].name}", file=sys.stderr, flush=True)
        baselines(row, hw, notes)
    busy1, own1 = cpu_secs()
    others = max(0.0, (busy1 - busy0) - (own1 - own0))
    text = header(hw, argv, time.perf_counter() - start, others) + "\n\n" + table(rows) + "\n"
    text += "".join(f"\n- note: {n}" for n in notes) + ("\n" if notes else "")
    print(text)
    if args.write:
        new = not os.path.exists(args.write)
        with open(args.write, "a", encoding="utf-8") as f:
            if new:
                f.write("# Tuning benchmark results\n\nSections appended by `bench/tune_suite.py --write`"
                        " (see its docstring): autotune at a fixed trial budget vs PyTorch eager and NumPy.\n")
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
