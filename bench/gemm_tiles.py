"""Benchmark: hand-picked GEMM register tiles of our search space on a square matmul, against PyTorch.

    python bench/gemm_tiles.py              # matmul 512^3, two interleaved runs
    python bench/gemm_tiles.py --n 1024 --runs 3

The kernels are candidates of autotune's own space (applied with `apply_candidate`, as a tune
would), written by hand to compare register tiles in one loop structure: i split 2 x (rest) x 1 x
rows, j 1 x 4 x (rest) x 16 (the vector loop), full K, write-back after S1, unroll 64. A 6-row
tile does not divide a power-of-two n: the last tile's rows past n are skipped (a predicate), as
draws with `tiling.padded_tile_probability` produce. Variants: local or global accumulator, K in
two blocks, B's panels packed at level 1. Every kernel is checked against the untuned build and
all are timed interleaved with PyTorch (bench/compare.py's `time_interleaved`, 7 placements).
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # sets TVM_NUM_THREADS before tvm is imported

import argparse

import autotune
from autotune import ops
from autotune.search_space import Candidate, SearchSpace, apply_candidate


def candidate(n: int, rows: int, k_blocks: int = 1, accumulator: str = "local", pack: int = 0) -> Candidate:
    """The hand-picked tiling of matmul n^3 with a rows x 16 register tile (see the module docstring)."""
    row_tiles = -(-n // rows)
    tile = {"spatial": [[2, row_tiles // 2, 1, rows], [1, 4, n // 64, 16]], "reduction": [[k_blocks, n // k_blocks]],
            "accumulator": accumulator, "write_level": 2}
    if pack:
        tile["pack"] = pack
    return Candidate({"format": 1, "unroll": 64, "blocks": {"C": tile}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=512, help="matmul size (a multiple of 128)")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    n = args.n
    hw = autotune.resolve_target("llvm")
    workload = ops.make("matmul", f"{n},{n},{n}")
    space = SearchSpace(workload, cores=hw.num_cores, registers=hw.vector_registers)
    kernels = {
        "4x16 local": candidate(n, 4), "4x16 global": candidate(n, 4, accumulator="global"),
        "6x16 local": candidate(n, 6), "6x16 global": candidate(n, 6, accumulator="global"),
        "6x16 local, K in 2": candidate(n, 6, k_blocks=2),
        "4x16 local, packed": candidate(n, 4, pack=1), "6x16 local, packed": candidate(n, 6, pack=1),
    }
    ref = compare.reference(workload, hw)
    rows = compare.hand_kernels_table({name: apply_candidate(space, c).mod for name, c in kernels.items()},
                                      "matmul", hw, ref, 7, args.runs)
    print(f"matmul {n}^3 on {hw.fingerprint.get('model_name')} ({hw.num_cores} cores), ms (median of 7 placements):")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
