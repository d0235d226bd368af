"""Re-time the best kernels of a kept compare run under many memory placements of their arrays.

Why: a kernel's speed can depend on where its arrays lie relative to each other (cache-set
conflicts of power-of-two rows: a matmul 1024³ kernel ran in 4.5 or 8.1 ms, same code, same
machine). compare.py re-times at RETIME_PLACEMENTS placements; this re-times a kept run at as many
as asked (or a run kept before compare did). Each kernel is timed at --placements placements of its arrays (compare.time_placements: each
array at a random 64-byte-aligned offset within a buffer of its own, median of 5 repeats of at
least 30 ms, checked against the untuned build). The table gives each tool's median over placements, with its best and worst placement, and the geomean ratios of the medians.

    python bench/compare.py ... --keep DIR      # first: a run that keeps its databases
    python bench/retime_kept.py DIR [--placements N] [--write bench/RESULTS.md]
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

import tvm
from tvm.s_tir import meta_schedule as ms

import autotune
from autotune import ops

from compare import RETIME_PLACEMENTS, WORKLOADS, reference, time_placements


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
    parser.add_argument("--placements", type=int, default=RETIME_PLACEMENTS)
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
