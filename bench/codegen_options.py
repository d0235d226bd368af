"""Benchmark: LLVM's code generator with autotune's options (vector_math.CODEGEN_OPTIONS) against LLVM's defaults.

    python bench/codegen_options.py                                   # the suite, 12 random candidates each
    python bench/codegen_options.py --workloads batch_matmul depthwise_conv2d --candidates 24 --seed 1
    python bench/codegen_options.py --db cache.db --top 8             # also a tune's 8 best candidates

The same candidates (random draws from the default space, plus a database's best ones with --db) are
built twice, in turn: with LLVM's default scheduling region (`-dag-maps-huge-region:uint=1000`, set on
the target, which `vector_math.codegen_target` then leaves as it is) and as autotune builds them (its
CODEGEN_OPTIONS). Each build is timed in two parts: TVM's compile (lowering and LLVM's IR passes) and
the export (LLVM's code generation, where the option acts, and the link). Both libraries are then
timed interleaved at the same placements (compare.time_interleaved, medians), their outputs checked.

Columns, per workload: candidates; summed compile, export seconds for LLVM's defaults and for
autotune's; the longest build of each; the run-time ratio autotune / default (geomean, min, max;
< 1: autotune's build runs faster).
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # sets TVM_NUM_THREADS before tvm is imported

import argparse
import datetime
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import tvm

import autotune
from autotune import ops, vector_math
from autotune.search_space import Candidate, SearchSpace, apply_candidate
from autotune.space_config import load_space_config

DEFAULT_REGION = "-dag-maps-huge-region:uint=1000"  # LLVM's own default (ScheduleDAGInstrs.cpp)


@dataclass
class Arm:
    compile_secs: list[float] = field(default_factory=list)
    export_secs: list[float] = field(default_factory=list)

    def longest(self) -> float:
        return max(c + e for c, e in zip(self.compile_secs, self.export_secs))


def build_timed(mod: tvm.IRModule, target: tvm.target.Target, path: str, arm: Arm) -> object:
    """Build and export `mod` as autotune's builder does, timing both parts into `arm`; returns the loaded library."""
    start = time.perf_counter()
    executable = vector_math.build(mod, target)
    built = time.perf_counter()
    vector_math.export_library(executable, path, target)
    arm.compile_secs.append(built - start)
    arm.export_secs.append(time.perf_counter() - built)
    return tvm.runtime.load_module(path)


def candidates(space: SearchSpace, n: int, seed: int, db: str | None, top: int,
               hw: autotune.HardwareTarget) -> list[Candidate]:
    drawn = [space.sample(random.Random(seed * 1000 + i)) for i in range(n)]
    if not db or top <= 0:
        return drawn
    with autotune.Database(db) as database:
        best = database.top_k(space.workload.key, hw.key, top)
    return [Candidate(r.decisions) for r in best if r.decisions] + drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(compare.SUITE), choices=list(compare.WORKLOADS))
    parser.add_argument("--candidates", type=int, default=12, help="random candidates per workload (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", help="a database whose best candidates of each workload are added (with --top)")
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--placements", type=int, default=3, help="placements each pair is timed at (default 3)")
    args = parser.parse_args(argv)

    hw = autotune.resolve_target()
    default_target = tvm.target.Target({**hw.target_json(), "cl-opt": [DEFAULT_REGION]})
    config = load_space_config("cpu")
    print(f"autotune {autotune.__version__}, {hw.target_json().get('mcpu', '')}, {hw.num_cores} cores, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; autotune's options: "
          f"{' '.join(vector_math.CODEGEN_OPTIONS)}")
    print("| workload | candidates | default compile s | default export s | autotune compile s | autotune export s "
          "| longest build default / autotune s | run autotune/default geomean (min, max) |")
    print("|---|---|---|---|---|---|---|---|")
    totals: dict[str, list[float]] = {"default": [], "autotune": [], "ratios": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.workloads:
            op, shape, _, options = compare.WORKLOADS[name]
            workload = ops.make(op, shape, **options)
            space = SearchSpace(workload, config, cores=hw.num_cores, registers=hw.vector_registers)
            ref = compare.reference(workload, hw)
            arms = {"default": Arm(), "autotune": Arm()}
            ratios = []
            for i, candidate in enumerate(candidates(space, args.candidates, args.seed, args.db, args.top, hw)):
                mod = apply_candidate(space, candidate).mod
                timers = {}
                for arm, target in (("default", default_target), ("autotune", hw.target)):
                    lib = build_timed(mod, target, os.path.join(tmp, f"{name}_{i}_{arm}.so"), arms[arm])
                    timers[arm] = compare.module_timer(arm, lib, ref)
                secs = compare.time_interleaved(timers, ref, args.placements, seed=i)
                ratios.append(statistics.median(secs["autotune"]) / statistics.median(secs["default"]))
            d, a = arms["default"], arms["autotune"]
            print(f"| {name} | {len(ratios)} | {sum(d.compile_secs):.1f} | {sum(d.export_secs):.1f} | "
                  f"{sum(a.compile_secs):.1f} | {sum(a.export_secs):.1f} | {d.longest():.2f} / {a.longest():.2f} | "
                  f"{compare.geomean(ratios):.3f} ({min(ratios):.2f}, {max(ratios):.2f}) |", flush=True)
            totals["default"].append(sum(d.compile_secs) + sum(d.export_secs))
            totals["autotune"].append(sum(a.compile_secs) + sum(a.export_secs))
            totals["ratios"] += ratios
    print(f"all: build seconds {sum(totals['default']):.1f} -> {sum(totals['autotune']):.1f} "
          f"({sum(totals['autotune']) / sum(totals['default']):.2f}x); run time autotune/default geomean "
          f"{compare.geomean(totals['ratios']):.3f} over {len(totals['ratios'])} candidates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
