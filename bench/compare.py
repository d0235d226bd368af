"""Benchmark: autotune against TVM's MetaSchedule and PyTorch eager, same workloads, same budgets, one run.

Run from the checkout root (each real workload takes minutes per tuner and budget on 2 cores):

    python bench/compare.py --quick                                   # tiny shapes, 8 trials: a smoke run
    python bench/compare.py --workloads matmul_512 --trials 8         # one real workload, short
    python bench/compare.py --trials 64,256 --write bench/RESULTS.md  # the full comparison (hours)
    python bench/compare.py --strategies random,model                 # default: random, plus model if known
    python bench/compare.py --make-corpus corpus.db                   # records of other shapes (CORPUS), ~10 min
    python bench/compare.py --transfer corpus.db                      # adds model-guided search from that corpus

For every workload and budget N, in this process: autotune (`autotune.tune(..., trials=N,
strategy=S)`, a fresh temporary database per workload, budget and strategy), then MetaSchedule
(`tune_tir`, same tvm Target, `max_trials_global=N`, `num_trials_per_iter=min(64, N)`, its logs in
a temporary work dir). Once every tool has tuned a workload, their best schedules (`apply_best`,
`compile_tir`) are rebuilt here the same way (`autotune.vector_math.build`: vector exp, tanh, ... from
glibc's libmvec, for MetaSchedule's schedule too), checked against the untuned build on `workload.random_inputs(0)`
and re-timed together (`time_evaluator`, number=1, repeat=5, min_repeat_ms=30, median: as autotune's
runner timed until it went to 10 ms repeats, which spread the same) at each of 8 random placements of their arrays in memory, the same for
every tool, every tool in turn at each placement (these VMs change speed within seconds: the
kernels must see the same moments); the median over placements counts. The FMA peak
(bench/peak_flops.py) measured right after says how fast the machine was then.
PyTorch eager is timed in the same rotation (median of single calls at each placement of its
inputs, checked the same way).
TVM_NUM_THREADS and torch's threads are set to the cores this process may use (TVM's default on
x86 is half of them).

With `--transfer DB`, column "transfer" is model-guided search in a copy of DB, a corpus of
records of other workloads on this machine (`--make-corpus`; refused if it holds the workload
itself): the cost model starts trained on them, as it does for a user whose cache has them.

MetaSchedule's builder imports `tvm.s_tir.tensor_intrin` in the first build of each worker and
restarts its workers every iteration; that import takes 20-30 s on our 2-core machines, so with
its default 30 s build timeout most first builds failed. Here its build timeout is 120 s.

Columns, per workload and budget ("ms" = median milliseconds, GFLOPS from the workload's FLOPs):
  <S> GFLOPS / <S> ms   autotune with strategy S, best schedule re-timed here
  <S> rec. ms           the best latency autotune itself recorded while tuning
  <S> tune s            wall seconds of autotune.tune
  MS GFLOPS / MS ms / MS rec. ms / MS tune s   the same for MetaSchedule (rec.: mean of its run_secs)
  torch GFLOPS / torch ms                      PyTorch eager on the same computation
  model/random          re-timed GFLOPS ratio of strategy model to strategy random (> 1: model wins)
  transfer/random       the same for model-guided search from the corpus
  autotune/MS           re-timed GFLOPS ratio of autotune (the last column of ours: transfer when
                        given, else the last strategy listed) to MetaSchedule
  autotune/torch        the same against PyTorch eager
  tune s autotune/MS    tuning wall time of autotune over MetaSchedule's (< 1: autotune tunes faster)
  FMA peak GFLOPS       the machine's float32 FMA peak on every core, measured after the re-timing
"geomean" rows give each ratio's geometric mean over the workloads of one budget.
"""

# ruff: noqa: E402, E731
# (E402: TVM_NUM_THREADS must be set before anything imports tvm.)

from __future__ import annotations

import os
import sys

NUM_CORES = len(os.sched_getaffinity(0))
os.environ["TVM_NUM_THREADS"] = str(NUM_CORES)  # TVM's pool defaults to half the cores on x86 (it assumes SMT)

import argparse
import contextlib
import datetime
import math
import shlex
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms

import autotune
from autotune import ops, vector_math
from autotune.cost_model import warm_start
from autotune.database import open_database
from autotune.features import FEATURE_VERSION
from autotune.space_config import load_space_config
from autotune.tuner import STRATEGIES
from autotune.worker import placed_copies

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak_flops import peak_gflops
from tune_suite import cpu_secs, median_secs, torch, torch_kernel

# name -> (operator, shape in ops' order (`autotune ops`), quick shape, options)
SUITE: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "matmul_512": ("matmul", "512,512,512", "64,64,64", {}),
    "matmul_1024": ("matmul", "1024,1024,1024", "32,64,128", {}),
    "dense": ("dense", "64,1024,1024", "16,64,64", {"bias": True, "epilogue": "relu"}),
    "batch_matmul": ("batch_matmul", "8,256,256,64", "2,32,32,16", {}),  # B,M,N,K: batch 8, M=N=256, K=64
    "conv2d_nchw": ("conv2d_nchw", "1,128,28,28,128,3,3", "1,8,14,14,8,3,3", {"bias": True, "relu": True}),
    "depthwise_conv2d": ("depthwise_conv2d", "1,64,112,112,3,3", "1,8,16,16,3,3", {}),
    "softmax": ("softmax", "512,256", "32,128", {}),
    "layernorm": ("layernorm", "256,1024", "32,128", {}),
}
# Variants outside the suite, run only when named in --workloads: softmax with TVM's
# polynomial exp (ops option fast_exp) against the same torch.softmax.
EXTRA: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "softmax_fast_exp": ("softmax", "512,256", "32,128", {"fast_exp": True}),
}
WORKLOADS = {**SUITE, **EXTRA}  # what --workloads may name
# Other shapes, from BERT-base, ViT-B/16, ResNet, MobileNetV2 and DenseNet (none is in SUITE): what
# a cache on this machine would already hold when a new workload arrives. `--make-corpus DB` tunes each with random
# search (diverse records, not just good ones); `--transfer DB` then tunes every suite workload
# model-guided from a copy of it, as `autotune.tune` does for a user whose cache has these records.
CORPUS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert_qkv": ("matmul", "128,2304,768", {}),
    "bert_ffn1": ("dense", "128,3072,768", {"bias": True, "epilogue": "gelu"}),
    "bert_scores": ("batch_matmul", "12,128,128,64", {}),
    "resnet_conv_56": ("conv2d_nchw", "1,64,56,56,64,3,3", {"bias": True, "relu": True}),
    "resnet_conv_14": ("conv2d_nchw", "1,256,14,14,256,3,3", {"bias": True, "relu": True}),
    "mobilenet_dw": ("depthwise_conv2d", "1,144,56,56,3,3", {}),
    "bert_softmax": ("softmax", "1536,128", {}),
    "bert_layernorm": ("layernorm", "128,768", {}),
    "resnet_pool": ("pool2d", "1,64,112,112,3,3", {"stride": 2, "padding": 1}),
    # ViT-B/16 (197 tokens: no power of two), ResNet-50's 1x1 and strided convs, MobileNetV2's
    # strided depthwise conv, an NHWC conv, DenseNet's average pooling and BERT's FFN output
    "vit_qkv": ("matmul", "197,2304,768", {}),
    "vit_mlp1": ("dense", "197,3072,768", {"bias": True, "epilogue": "gelu"}),
    "vit_scores": ("batch_matmul", "12,197,197,64", {}),
    "vit_softmax": ("softmax", "2364,197", {}),
    "vit_layernorm": ("layernorm", "197,768", {}),
    "bert_ffn2": ("dense", "128,768,3072", {"bias": True}),
    "resnet50_conv1x1": ("conv2d_nchw", "1,256,56,56,64,1,1", {"bias": True, "relu": True}),
    "resnet50_conv_s2": ("conv2d_nchw", "1,128,56,56,128,3,3", {"stride": 2, "bias": True, "relu": True}),
    "mobilenet_dw_s2": ("depthwise_conv2d", "1,96,112,112,3,3", {"stride": 2}),
    "resnet_conv_nhwc": ("conv2d_nhwc", "1,56,56,64,64,3,3", {"bias": True, "relu": True}),
    "densenet_avgpool": ("pool2d", "1,128,56,56,2,2", {"kind": "avg"}),
}
TRANSFER = "transfer"  # the tool name of model-guided search starting from the corpus
MS_BUILD_TIMEOUT_SECS = 120.0  # MetaSchedule's default is 30 s (see the docstring)
# A kernel's speed can depend on where its arrays lie (cache-set conflicts of power-of-two rows), so
# every kernel, PyTorch's included, is timed at this many placements of its arrays and the median kept.
# 24, not 8: the VM's slow spells last a timing or more and hit some kernels harder than others, so
# the median of 8 moved a depthwise ratio over 0.83-0.98 between rounds, that of 24 over 0.85-0.91
# (bench/RESULTS.md, 2026-12-08); the re-time takes at least 16 x 5 x 30 ms = 2.4 s more per kernel.
RETIME_PLACEMENTS = 24


@dataclass
class Outcome:
    """One tuner (or torch) on one workload and budget."""

    secs: float | None = None  # best kernel re-timed here
    recorded: float | None = None  # the tuner's own best latency
    wall: float | None = None  # tuning wall seconds
    error: str | None = None
    mod: tvm.IRModule | None = None  # the best schedule, until every tool's is re-timed (retime_together)


@dataclass
class Reference:
    arrays: list[np.ndarray]  # inputs, outputs zero-filled
    outputs: list[int]  # indices of the output arguments
    want: list[np.ndarray]  # the untuned build's outputs


def one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:160].replace("|", "/")  # a Markdown cell


def close(got: np.ndarray, want: np.ndarray) -> bool:
    """The tolerance autotune's worker checks every candidate with."""
    scale = float(np.max(np.abs(want))) if want.size else 1.0
    return bool(np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, scale), equal_nan=True))


def reference(workload: autotune.Workload, hw: autotune.HardwareTarget) -> Reference:
    arrays = workload.random_inputs(0)
    outputs = [i for i, info in enumerate(workload.args) if info.is_output]
    lib = vector_math.build(workload.mod, hw.target)
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    lib["main"](*tensors)
    return Reference(arrays, outputs, [tensors[i].numpy() for i in outputs])


# Seconds of one kernel on placed copies of the reference's arrays (outputs zeroed); raises ValueError,
# its message starting with the tool's name, when the kernel's outputs are wrong.
Timer = Callable[[list[np.ndarray]], float]


def time_placements(mod: tvm.IRModule, hw: autotune.HardwareTarget, ref: Reference, placements: int,
                    seed: int = 0) -> list[float]:
    """Median seconds of `mod` (5 repeats of at least 30 ms) at each of `placements` random 64-byte-aligned
    placements of its arrays (`autotune.worker.placed_copies`, as autotune's runner places each repeat); the
    same placements for every kernel of a seed. Raises if an output is wrong at any placement."""
    return time_interleaved({"kernel": tvm_timer("kernel", mod, hw, ref)}, ref, placements, seed)["kernel"]


def tvm_timer(name: str, mod: tvm.IRModule, hw: autotune.HardwareTarget, ref: Reference) -> Timer:
    """`mod` built here, timed with time_evaluator, 5 x >= 30 ms, median (autotune's runner now repeats for
    10 ms, MeasureOptions.min_repeat_ms; the longer repeats are kept here so that runs stay comparable)."""
    try:
        lib = vector_math.build(mod, hw.target)
    except Exception as exc:  # named, so that retime_together can set that tool aside
        raise ValueError(f"{name}: does not build here: {one_line(exc)}") from exc
    return module_timer(name, lib.mod, ref)


def module_timer(name: str, module: Any, ref: Reference) -> Timer:
    """A built module's "main" timed as tvm_timer times it, its outputs checked against the reference."""
    evaluator = module.time_evaluator("main", tvm.cpu(), number=1, repeat=5, min_repeat_ms=30)

    def timed(views: list[np.ndarray]) -> float:
        for i in ref.outputs:
            views[i][...] = 0
        secs = statistics.median(evaluator(*[tvm.runtime.from_dlpack(v) for v in views]).results)
        for i, want in zip(ref.outputs, ref.want):
            if not close(views[i], want):
                raise ValueError(f"{name}: wrong result: output {i} differs by up to "
                                 f"{np.max(np.abs(views[i] - want)):.3g}")
        return secs
    return timed


def torch_timer(op: str, ref: Reference, epilogue: str = "relu") -> Timer | str:
    """PyTorch eager on the placed inputs (median of single calls; it allocates its output itself), checked
    against the untuned build; or why there is none."""
    if torch is None:
        return "torch not installed"
    probe = torch_fn(op, [a for i, a in enumerate(ref.arrays) if i not in ref.outputs], epilogue)
    if probe is None:
        return f"no torch equivalent of {op}"
    with torch.inference_mode():
        shape = tuple(probe().shape)
    if shape != ref.want[0].shape:  # torch_kernel's conv is stride 1, padding 1: a strided conv is another op
        return f"torch's {op} gives {shape}, not this workload's {ref.want[0].shape}"

    def timed(views: list[np.ndarray]) -> float:
        fn = torch_fn(op, [v for i, v in enumerate(views) if i not in ref.outputs], epilogue)
        with torch.inference_mode():
            got = np.asarray(fn())
            if got.shape != ref.want[0].shape or not close(got, ref.want[0]):
                raise ValueError("torch: output differs from TVM's untuned build")
            return median_secs(fn)
    return timed


def torch_fn(op: str, inputs: list[np.ndarray], epilogue: str = "relu") -> Callable[[], Any] | None:
    """A no-argument call of PyTorch eager computing `op` on `inputs` (views of them), or None."""
    return torch_kernel(op, inputs, epilogue) or depthwise_or_bmm(op, [torch.from_numpy(a) for a in inputs])


def time_interleaved(timers: dict[str, Timer], ref: Reference, placements: int, seed: int = 0) -> dict[str, list[float]]:
    """Each timer's seconds at each of `placements` placements: at each placement every kernel is timed in
    turn (the order rotating), so that all of them see the same moments of the machine. Why: on these
    shared VMs the machine's speed changes from one second to the next (bench/peak_flops.py, and
    RESULTS' "Why recorded latencies are lower than re-timed ones"), so kernels timed one after
    another minutes apart compare the machine's moods, not the kernels."""
    rng = np.random.default_rng(seed)
    secs: dict[str, list[float]] = {name: [] for name in timers}
    names = list(timers)
    for p in range(placements):
        views = placed_copies([np.zeros_like(a) if i in ref.outputs else a for i, a in enumerate(ref.arrays)], rng)
        for name in names[p % len(names):] + names[:p % len(names)]:
            secs[name].append(timers[name](views))
    return secs


def hand_kernels_table(kernels: dict[str, tvm.IRModule], op: str, hw: autotune.HardwareTarget, ref: Reference,
                       placements: int, runs: int) -> list[str]:
    """Markdown rows of hand-picked kernels and PyTorch (when it runs `op`), timed interleaved
    (`time_interleaved`, `runs` times with seeds 0..runs-1): per kernel, its median ms of each run.
    For the bench scripts that compare kernels of our space written by hand (gemm_tiles, depthwise_tiles)."""
    timers = {name: tvm_timer(name, mod, hw, ref) for name, mod in kernels.items()}
    torch = torch_timer(op, ref)
    if not isinstance(torch, str):
        timers["torch"] = torch
    timed = [time_interleaved(timers, ref, placements, seed=run) for run in range(runs)]
    rows = ["| kernel | " + " | ".join(f"run {r}" for r in range(runs)) + " |", "|---|" + "---|" * runs]
    for name in timers:
        rows.append(f"| {name} | " + " | ".join(f"{statistics.median(run[name]) * 1e3:.3f}" for run in timed) + " |")
    return rows


def retime_together(outcomes: dict[str, Outcome], hw: autotune.HardwareTarget, ref: Reference, op: str) -> None:
    """Set each tuned outcome's `secs`, and PyTorch's as outcome "torch": the median over RETIME_PLACEMENTS
    placements, all of them interleaved. A kernel that does not build here, or computes a wrong result,
    becomes its tool's error, and the others are timed without it."""
    timers: dict[str, Timer] = {}
    for tool, x in outcomes.items():
        if x.mod is not None:
            try:
                timers[tool] = tvm_timer(tool, x.mod, hw, ref)
            except ValueError as exc:
                x.error, x.mod = one_line(exc), None
    torch_or_why = torch_timer(op, ref)
    outcomes["torch"] = Outcome(error=torch_or_why if isinstance(torch_or_why, str) else None)
    if not isinstance(torch_or_why, str):
        timers["torch"] = torch_or_why
    secs: dict[str, list[float]] = {}
    while timers and not secs:
        try:
            secs = time_interleaved(timers, ref, RETIME_PLACEMENTS)
        except ValueError as exc:  # a wrong result: say whose, and start again without it
            tool = next((t for t in timers if str(exc).startswith(f"{t}:")), None)
            if tool is None:
                raise
            del timers[tool]
            outcomes[tool].error, outcomes[tool].mod = one_line(exc), None
    for tool, values in secs.items():
        outcomes[tool].secs, outcomes[tool].mod = statistics.median(values), None


def run_autotune(workload: autotune.Workload, hw: Any, trials: int, tool: str, tmp: str,
                 ref: Reference, corpus: str | None = None) -> Outcome:
    """Tune with strategy `tool` into a fresh database; tool "transfer" is "model" in a copy of `corpus`."""
    db = os.path.join(tmp, f"{workload.name}-{tool}-{trials}.db")
    out = Outcome()
    try:
        if tool == TRANSFER:
            copy_corpus(corpus, db, workload)
        start = time.perf_counter()
        strategy = "model" if tool == TRANSFER else tool
        result = autotune.tune(workload, target=hw, trials=trials, database=db, strategy=strategy)
        out.wall, out.recorded = time.perf_counter() - start, result.best_latency
        out.mod = autotune.apply_best(workload, target=hw, database=db)
        if out.mod is None:
            raise RuntimeError(f"no correct candidate ({result.counts()})")
    except Exception as exc:  # a failure is a table cell, and the run goes on
        out.error = one_line(exc)
    return out


def copy_corpus(corpus: str, db: str, workload: autotune.Workload) -> None:
    """A copy of the corpus database as `db`, refused if it holds records of `workload` itself."""
    backup_database(corpus, db)
    with open_database(db) as opened:
        if opened.trials(workload_key=workload.key):
            raise ValueError(f"the corpus has records of {workload.name} itself: that is not transfer")


def backup_database(source: str, target: str) -> None:
    """A consistent copy of an SQLite database file (SQLite's online backup)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def make_corpus(path: str, hw: autotune.HardwareTarget, trials: int, log: Callable[[str], None]) -> None:
    """Tune every CORPUS workload with random search into `path`."""
    for name, (op, shape, options) in CORPUS.items():
        workload = ops.make(op, shape, **options)
        start = time.perf_counter()
        result = autotune.tune(workload, target=hw, trials=trials, database=path, strategy="random")
        log(f"corpus {name} ({workload.name}): {len(result.trials)} trials in {time.perf_counter() - start:.0f} s,"
            f" best {result.best_gflops or 0:.1f} GFLOPS")
    log(f"corpus prepared (cost-model features kept, model fitted and saved) in {prepare_corpus(path, hw):.0f} s")


def prepare_corpus(path: str, hw: autotune.HardwareTarget) -> float:
    """Do once, in the corpus itself, what the first model-guided session on a cache does: compute
    and keep the features of its records and save a model fitted on them. Every later session
    (each workload's copy here) then starts from them, as a user's does. Returns the seconds."""
    start = time.perf_counter()
    with open_database(path) as db:
        model = warm_start(db, hw, load_space_config("cpu"))
        if model.is_trained:
            db.save_model(hw.key, FEATURE_VERSION, model.trained_on, model.save())
    return time.perf_counter() - start


@contextlib.contextmanager
def output_to(path: str):
    """Send this process's stdout and stderr (and its children's) to a file, at the descriptor level."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def run_metaschedule(workload: autotune.Workload, hw: Any, trials: int, tmp: str, ref: Reference) -> Outcome:
    work_dir = os.path.join(tmp, f"ms-{workload.name}-{trials}")
    os.makedirs(work_dir)
    out = Outcome()
    try:
        start = time.perf_counter()
        with output_to(os.path.join(work_dir, "output.log")):
            database = ms.tune_tir(
                mod=workload.mod, target=hw.target, work_dir=work_dir, max_trials_global=trials,
                num_trials_per_iter=min(64, trials),
                builder=ms.builder.LocalBuilder(timeout_sec=MS_BUILD_TIMEOUT_SECS),
            )
        out.wall = time.perf_counter() - start
        record = database.query_tuning_record(workload.mod, hw.target, "main")
        if record is not None and record.run_secs:
            out.recorded = statistics.mean(float(s) for s in record.run_secs)
        sch = ms.tir_integration.compile_tir(database, workload.mod, hw.target)
        if sch is None:
            raise RuntimeError("no valid schedule in its database")
        out.mod = sch.mod
    except Exception as exc:
        out.error = one_line(exc)
    return out


def depthwise_or_bmm(op: str, t: list[Any]) -> Any:
    """PyTorch for the two suite operators tune_suite has no baseline for."""
    if op == "batch_matmul":  # C[b] = A[b] @ B[b]
        return lambda: torch.bmm(t[0], t[1])
    if op == "depthwise_conv2d":  # weight (C,1,R,S), groups=C, 'same' padding for odd kernels, no bias
        pad = ((t[1].shape[2] - 1) // 2, (t[1].shape[3] - 1) // 2)
        return lambda: torch.nn.functional.conv2d(t[0], t[1], stride=1, padding=pad, groups=t[0].shape[1])
    return None


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def table(rows: list[dict[str, Any]], ours: list[str]) -> str:
    """The Markdown table; `ours` are autotune's tools (strategies, then "transfer"), the last one primary."""
    tools = [*ours, "MS"]
    head = ["workload", "trials"]
    for tool in tools:
        head += [f"{tool} GFLOPS", f"{tool} ms", f"{tool} rec. ms", f"{tool} tune s"]
    versus_random = [f"{tool}/random" for tool in ("model", TRANSFER) if tool in ours and "random" in ours]
    ratios = versus_random + ["autotune/MS", "autotune/torch", "tune s autotune/MS"]
    head += ["torch GFLOPS", "torch ms", *ratios, "FMA peak GFLOPS"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ms_ = lambda s: f"{s * 1e3:.4g}" if s else "n/a"
    by_budget: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        w, o, primary = row["workload"], row["outcomes"], row["outcomes"][ours[-1]]
        gf = lambda s: f"{w.flops / s / 1e9:.1f}" if s and w.flops else "n/a"
        cells = [w.name, str(row["trials"])]
        for tool in tools:
            x = o[tool]
            cells += [f"failed: {x.error}", "failed", "", ""] if x.error else [
                gf(x.secs), ms_(x.secs), ms_(x.recorded), f"{x.wall:.1f}"]
        t = o["torch"]
        cells += [f"failed: {t.error}", "failed"] if t.error else [gf(t.secs), ms_(t.secs)]
        pairs = {f"{tool}/random": (o.get("random"), o.get(tool)) for tool in ("model", TRANSFER)}
        pairs |= {"autotune/MS": (o["MS"], primary), "autotune/torch": (t, primary)}
        for name in ratios:
            if name == "tune s autotune/MS":
                value = primary.wall / o["MS"].wall if primary.wall and o["MS"].wall else None
            else:  # GFLOPS ratio = inverse latency ratio
                slow, fast = pairs[name]
                value = slow.secs / fast.secs if slow and fast and slow.secs and fast.secs else None
            cells.append(f"{value:.2f}" if value else "n/a")
            if value:
                by_budget.setdefault(row["trials"], {}).setdefault(name, []).append(value)
        cells.append(f"{row['peak']:.0f}" if row.get("peak") else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    for trials, values in sorted(by_budget.items()):
        means = [geomean(values.get(name, [])) for name in ratios]
        count = sum(r["trials"] == trials for r in rows)
        cells = [f"**geomean** ({count} workloads)", str(trials)]
        cells += [""] * (len(head) - len(ratios) - 3) + [f"**{m:.2f}**" if m else "n/a" for m in means] + [""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(hw: autotune.HardwareTarget, ours: list[str], argv: list[str], total: float, others: float,
           notes: list[str]) -> str:
    torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads" if torch is not None else "no torch"
    return "\n".join([
        f"## compare: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "",
        f"- machine: {hw.fingerprint.get('model_name') or 'unknown CPU'}, {hw.num_cores} cores used;"
        f" target key `{hw.key}`, mcpu `{hw.target_json().get('mcpu')}`",
        f"- autotune {autotune.__version__} ({', '.join(ours)}; 'autotune' in ratios ="
        f" {ours[-1]}); MetaSchedule of TVM {tvm.__version__}; TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']};"
        f" {torch_info}",
        f"- command: `{' '.join(shlex.quote(a) for a in ['python', *argv])}`; total {total:.0f} s",
        f"- other processes kept {others:.0f} core-s busy during the run ({others / total:.2f} cores on average):"
        " timings compete with them when this is not ~0",
        *[f"- {note}" for note in notes],
    ])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    default_strategies = "random,model" if "model" in STRATEGIES else "random"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", help="comma-separated trial budgets (default 64, or 8 with --quick)")
    parser.add_argument("--workloads", help=f"comma-separated, of: {','.join(SUITE)} (default: all of these), "
                        f"{','.join(EXTRA)}")
    parser.add_argument("--strategies", default=default_strategies,
                        help=f"autotune strategies, comma-separated (default {default_strategies}; known: "
                             f"{','.join(STRATEGIES)}); ratios use the last")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and 8 trials: a smoke run")
    parser.add_argument("--write", metavar="PATH", help="append this run's section to a Markdown file")
    parser.add_argument("--keep", metavar="DIR", help="keep databases and MetaSchedule logs in DIR (new or empty)")
    parser.add_argument("--make-corpus", metavar="DB", help="tune the CORPUS workloads into DB with random search, "
                        "--corpus-trials each, and exit")
    parser.add_argument("--corpus-trials", type=int, default=64, help="trials per corpus workload (default 64)")
    parser.add_argument("--transfer", metavar="DB", help="also tune model-guided from a copy of this corpus "
                        "(column 'transfer', primary in the ratios)")
    args = parser.parse_args(argv[1:])
    names = args.workloads.split(",") if args.workloads else list(SUITE)
    strategies = [s for s in args.strategies.split(",") if s]
    ours = strategies + ([TRANSFER] if args.transfer else [])
    if not ours:
        parser.error("nothing of autotune to run: give --strategies or --transfer")
    if args.transfer and not os.path.isfile(args.transfer):
        parser.error(f"--transfer {args.transfer}: no such file (make one with --make-corpus)")
    if unknown := [n for n in names if n not in WORKLOADS]:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    if unknown := [s for s in strategies if s not in STRATEGIES]:
        parser.error(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}")
    if args.keep and os.path.isdir(args.keep) and os.listdir(args.keep):
        parser.error(f"--keep {args.keep}: not empty (earlier records would count)")
    try:
        budgets = [int(n) for n in (args.trials or ("8" if args.quick else "64")).split(",")]
    except ValueError:
        parser.error(f"--trials takes comma-separated integers, not {args.trials!r}")

    hw = autotune.resolve_target("llvm")
    if hw.num_cores != NUM_CORES:  # no kernel ran yet, so TVM's thread pool has not read the variable
        print(f"note: autotune uses {hw.num_cores} cores, the affinity mask allows {NUM_CORES}; using {hw.num_cores}",
              file=sys.stderr)
        os.environ["TVM_NUM_THREADS"] = str(hw.num_cores)
    if torch is not None:
        torch.set_num_threads(hw.num_cores)
    log = lambda msg: print(f"[compare] {msg}", file=sys.stderr, flush=True)
    if args.make_corpus:
        make_corpus(args.make_corpus, hw, args.corpus_trials, log)
        return 0
    start, (busy0, own0) = time.perf_counter(), cpu_secs()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="compare-") as tmp:
        tmp = args.keep or tmp
        os.makedirs(tmp, exist_ok=True)
        corpus, notes = args.transfer, []
        if corpus:
            corpus = os.path.join(tmp, "corpus-prepared.db")
            backup_database(args.transfer, corpus)
            secs = prepare_corpus(corpus, hw)
            notes.append(f"corpus prepared once in {secs:.0f} s (features of its records kept, model saved, as the "
                         "first model-guided session on a cache does); not in the transfer tune times")
            log(notes[-1])
        for name in names:
            op, shape, quick, options = WORKLOADS[name]
            workload = ops.make(op, quick if args.quick else shape, **options)
            ref = reference(workload, hw)
            for trials in budgets:
                outcomes: dict[str, Outcome] = {}
                for tool in [*ours, "MS"]:
                    log(f"{workload.name}: {tool}, {trials} trials ...")
                    if tool == "MS":
                        outcomes[tool] = run_metaschedule(workload, hw, trials, tmp, ref)
                    else:
                        outcomes[tool] = run_autotune(workload, hw, trials, tool, tmp, ref, corpus)
                    x = outcomes[tool]
                    log(f"  failed: {x.error}" if x.error else
                        f"  {x.wall:.1f} s ({x.wall / trials:.2f} s/trial), best {x.recorded * 1e3:.4g} ms recorded"
                        if x.recorded else f"  {x.wall:.1f} s ({x.wall / trials:.2f} s/trial)")
                retime_together(outcomes, hw, ref, op)
                peak = peak_gflops(hw)
                log("  re-timed, interleaved: " + ", ".join(f"{t} {x.secs * 1e3:.4g} ms" for t, x in outcomes.items()
                                                            if x.secs) + f"; FMA peak then {peak or 0:.0f} GFLOPS")
                rows.append({"name": name, "op": op, "workload": workload, "ref": ref, "trials": trials,
                             "outcomes": outcomes, "peak": peak})
    busy1, own1 = cpu_secs()
    total = time.perf_counter() - start
    text = header(hw, ours, argv, total, max(0.0, (busy1 - busy0) - (own1 - own0)), notes) + "\n\n"
    text += table(rows, ours) + "\n"
    print(text)
    if args.write:
        new = not os.path.exists(args.write)
        with open(args.write, "a", encoding="utf-8") as f:
            f.write("# Tuning benchmark results\n" if new else "")
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
