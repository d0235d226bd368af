"""Benchmark: what packing a matmul's panels (B[k, j] -> B[j // v, k, j % v]) does to random candidates.

    python bench/pack_pairs.py                                  # the four shapes below, 10 pairs each
    python bench/pack_pairs.py --shapes matmul:512,512,512 --pairs 4

For each shape, draws random candidates of the search space (the tuner's own sampler, this
machine's cores and registers) whose vector loop is the last axis, and makes a pair of each: the
candidate unpacked and the same candidate with its panels packed at a drawn pack level (1-3,
search_spaces/cpu.toml's pack_levels). Every kernel is built and checked against the untuned one,
then all of them and PyTorch are timed in one interleaved rotation (bench/compare.py's
`time_interleaved`, 5 placements, medians): the pair members see the same moments of the machine.

Columns: pairs; geomean of unpacked/packed latency (> 1: packing faster); pairs packing won;
the largest and smallest ratio; the best unpacked and the best packed latency (ms); PyTorch's;
median build seconds unpacked and packed, and the longest packed build. This is what
`tiling.panel_pack_probability` was chosen from: packing as a drawn decision, not the rule.
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # sets TVM_NUM_THREADS before tvm is imported

import argparse
import copy
import math
import random
import statistics
import time

import autotune
from autotune import ops
from autotune.search_space import Candidate, SearchSpace, apply_candidate

SHAPES = ["matmul:512,512,512", "matmul:1024,1024,1024", "matmul:128,2304,768", "batch_matmul:8,256,64,256"]
PLACEMENTS = 5


def pairs_of(space: SearchSpace, n: int, rng: random.Random) -> list[tuple[Candidate, Candidate]]:
    """n (unpacked, packed) pairs of random candidates vectorized along the last axis."""
    rule = next(r for r in space.rules if r.rule == "tile")
    pairs: list[tuple[Candidate, Candidate]] = []
    while len(pairs) < n:
        decisions = space.sample(rng).decisions
        tile = decisions["blocks"][rule.block]
        if "vector_axis" in tile or tile["spatial"][-1][-1] == 1:
            continue
        plain, packed = copy.deepcopy(decisions), copy.deepcopy(decisions)
        plain["blocks"][rule.block].pop("pack", None)
        packed["blocks"][rule.block]["pack"] = rng.choice([level for level in space.config.pack_levels if level > 0])
        pair = Candidate(space.constrain(plain)), Candidate(space.constrain(packed))
        if "pack" in pair[1].decisions["blocks"][rule.block] and all(space.is_valid(c) for c in pair):
            pairs.append(pair)
    return pairs


def measure(op: str, shape: str, n: int, seed: int) -> dict[str, float]:
    hw = autotune.resolve_target("llvm")
    workload = ops.make(op, shape)
    ref = compare.reference(workload, hw)
    space = SearchSpace(workload, cores=hw.num_cores, registers=hw.vector_registers)
    timers, builds = {}, {"plain": [], "packed": []}
    for i, pair in enumerate(pairs_of(space, n, random.Random(seed))):
        for kind, candidate in zip(("plain", "packed"), pair):
            start = time.perf_counter()
            timers[f"{kind}{i}"] = compare.tvm_timer(f"{kind}{i}", apply_candidate(space, candidate).mod, hw, ref)
            builds[kind].append(time.perf_counter() - start)
    torch_or_why = compare.torch_timer(op, ref)
    if not isinstance(torch_or_why, str):
        timers["torch"] = torch_or_why
    secs = {k: statistics.median(v) for k, v in compare.time_interleaved(timers, ref, PLACEMENTS).items()}
    ratios = [secs[f"plain{i}"] / secs[f"packed{i}"] for i in range(n)]
    return {
        "pairs": n,
        "geomean": math.exp(sum(map(math.log, ratios)) / n),
        "wins": sum(r > 1 for r in ratios),
        "max": max(ratios), "min": min(ratios),
        "best plain ms": 1e3 * min(secs[f"plain{i}"] for i in range(n)),
        "best packed ms": 1e3 * min(secs[f"packed{i}"] for i in range(n)),
        "torch ms": 1e3 * secs["torch"] if "torch" in secs else float("nan"),
        "build plain s": statistics.median(builds["plain"]),
        "build packed s": statistics.median(builds["packed"]),
        "longest packed build s": max(builds["packed"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=";".join(SHAPES),
                        help="op:shape items separated by ';' (default: %(default)s)")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = []
    for item in args.shapes.split(";"):
        op, shape = item.split(":")
        row = measure(op, shape, args.pairs, args.seed)
        rows.append((f"{op} {shape}", row))
        print(f"{op} {shape}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()), flush=True)
    keys = list(rows[0][1])
    print("\n| workload | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, row in rows:
        print(f"| {name} | " + " | ".join(f"{row[k]:.3g}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
