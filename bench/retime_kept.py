"""Re-time the best kernels of a kept compare run under many memory placements of their arrays.

Why: a kernel's speed can depend on where its arrays lie relative to each other (cache-set
conflicts of power-of-two rows: a matmul 1024³ kernel ran in 4.5 or 8.1 ms, same code, same
machine), and compare.py's re-timing, like each tuner's own measurement, sees one placement.
Here each array is a view at a random 64-byte-aligned offset within a 64 KiB window of a buffer
of its own, PLACEMENTS times per kernel, every placement timed as compare.py times (median of 5
repeats of at least 30 ms) and checked against the untuned build. The table gives each tool's
median over placements, with its best and worst placement, and the geomean ratios of the medians.

    python bench/compare.py ... --keep DIR      # first: a run that keeps its databases
    python bench/retime_kept.py DIR [--placements 12] [--write bench/RESULTS.md]
"""

# ruff: noqa: E402

from __future__ import annotations

import os
import sys

os.environ["TVM_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))  # before tvm is imported

import argparse
import datetime
import glob
import math
import re
import statistics

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms

import autotune
from autotune import ops

from compare import WORKLOADS, close, reference

WINDOW_BYTES = 64 * 1024  # offsets are drawn within this window: wider than the L1 and L2 set strides
ALIGN = 64  # TVM's kernels assume 64-byte-aligned data


def placed(arrays: list[np.ndarray], rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Copies of `arrays` at random 64-byte-aligned offsets: (the views, their owning buffers)."""
    views, owners = [], []
    for a in arrays:
        raw = np.empty(a.nbytes + WINDOW_BYTES + ALIGN, dtype=np.uint8)
        start = (-raw.ctypes.data) % ALIGN + int(rng.integers(0, WINDOW_BYTES // ALIGN)) * ALIGN
        view = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        views.append(view)
        owners.append(raw)
    return views, owners


def time_placements(mod: tvm.IRModule, hw: autotune.HardwareTarget, ref, placements: int, seed: int) -> list[float]:
    """Median seconds of `mod` under each placement; raises if an output is wrong."""
    lib = tvm.compile(mod, target=hw.target)
    evaluator = lib.mod.time_evaluator("main", tvm.cpu(), number=1, repeat=5, min_repeat_ms=30)
    rng = np.random.default_rng(seed)
    secs = []
    for _ in range(placements):
        inputs = [np.zeros_like(a) if i in ref.outputs else a for i, a in enumerate(ref.arrays)]
        views, owners = placed(inputs, rng)
        tensors = [tvm.runtime.from_dlpack(v) for v in views]
        secs.append(statistics.median(evaluator(*tensors).results))
        for i, want in zip(ref.outputs, ref.want):
            if not close(views[i], want):
                raise ValueError(f"wrong result: output {i}")
        del tensors, owners
    return secs


def kept_kernels(keep: str, workload: autotune.Workload, hw: autotune.HardwareTarget) -> dict[str, tvm.IRModule]:
    """Each tool's best kernel of `workload` in the kept directory, by tool name."""
    kernels = {}
    for path in sorted(glob.glob(os.path.join(keep, f"{workload.name}-*-*.db"))):
        tool = re.fullmatch(rf"{re.escape(workload.name)}-(\w+)-\d+\.db", os.path.basename(path)).group(1)
        mod = autotune.apply_best(workload, target=hw, database=path)
        if mod is not None:
            kernels[tool] = mod
    for work_dir in sorted(glob.glob(os.path.join(keep, f"ms-{workload.name}-*"))):
        database = ms.database.JSONDatabase(work_dir=work_dir)
        sch = ms.tir_integration.compile_tir(database, workload.mod, hw.target)
        if sch is not None:
            kernels["MS"] = sch.mod
    return kernels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("keep", help="a directory written by compare.py --keep")
    parser.add_argument("--placements", type=int, default=12)
    parser.add_argument("--write", metavar="PATH", help="append the table to a Markdown file")
    args = parser.parse_args()
    hw = autotune.resolve_target("llvm")
    rows, medians = [], {}
    for name, (op, shape, _quick, options) in WORKLOADS.items():
        workload = ops.make(op, shape, **options)
        kernels = kept_kernels(args.keep, workload, hw)
        if not kernels:
            continue
        ref = reference(workload, hw)
        for tool, mod in kernels.items():
            secs = time_placements(mod, hw, ref, args.placements, seed=0)  # the same placements for every tool
            medians.setdefault(tool, {})[name] = statistics.median(secs)
            rows.append(f"| {workload.name} | {tool} | {statistics.median(secs) * 1e3:.4g} | {min(secs) * 1e3:.4g}"
                        f" | {max(secs) * 1e3:.4g} |")
            print(rows[-1], file=sys.stderr, flush=True)
    ours = [t for t in medians if t != "MS"]
    lines = [f"## retime_kept: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}", "",
             f"- `{args.keep}`, {args.placements} placements per kernel (the same for every tool), TVM_NUM_THREADS="
             f"{os.environ['TVM_NUM_THREADS']}", "",
             "| workload | tool | median ms over placements | best placement | worst placement |",
             "|---|---|---|---|---|", *rows, ""]
    for tool, other in [*[(t, "MS") for t in ours], *[(t, "random") for t in ours if t != "random"]]:
        common = [n for n in medians[tool] if n in medians.get(other, {})]
        if common:
            ratio = math.exp(statistics.mean(math.log(medians[other][n] / medians[tool][n]) for n in common))
            lines.append(f"- {tool}/{other} (speed, geomean of the medians over placements, {len(common)} "
                         f"workloads): **{ratio:.2f}**")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
