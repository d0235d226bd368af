"""Benchmark: hand-picked depthwise-conv tilings of our search space, vectorized by the schedule or left to LLVM.

    python bench/depthwise_tiles.py                       # 1x64x112x112 3x3, one interleaved run
    python bench/depthwise_tiles.py --shape 1,96,56,56,3,3 --runs 2

The kernels are candidates of autotune's own space (applied with `apply_candidate`, as a tune
would), written by hand after the fastest depthwise schedule MetaSchedule found on a Zen 4 VM
(bench/RESULTS.md, 2026-12-02): channels split 2 x 32, rows 14 x 8, columns 7 x 16, the 3 x 3
window innermost, no loop vectorized by the schedule, unroll 512, the padding computed inside
the tile loops. "LLVM" kernels have innermost tiles of 1 (so the schedule vectorizes nothing:
LLVM's loop vectorizer vectorizes the 16-column loop around the unrolled rows and window);
"explicit" kernels vectorize the 16 columns in the schedule, with the 8 rows as the register
tile's other axis. "pad@L": the padded input computed after the tile structure's first L loop
levels (`tiling.unvectorized_tile_probability` and `draw_tile_level` in search_space.py).
Every kernel is checked against the untuned build, and all are timed interleaved with PyTorch
(bench/compare.py's `time_interleaved`).
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


def candidate(spatial: list[list[int]], pad_level: int, unroll: int) -> Candidate:
    """A depthwise conv tiled as `spatial` (N, C, H, W factors, outermost first), the 3 x 3 window in
    the structure's inner reduction level, the padding computed after `pad_level` levels."""
    conv = {"spatial": spatial, "reduction": [[1, 3], [1, 3]], "accumulator": "global", "write_level": 2}
    padding = {"at": pad_level, "inline": False, "parallel": 0, "vector": 1}
    return Candidate({"format": 1, "unroll": unroll, "blocks": {"DepthwiseConv2d": conv, "PaddedInput": padding}})


def tilings(c: int, h: int, w: int) -> dict[str, list[list[int]]]:
    """MetaSchedule's tiling, adapted to the shape (it needs C % 32, H % 8, W % 16 == 0)."""
    return {
        "LLVM": [[1, 1, 1, 1], [c // 32, 32, 1, 1], [1, h // 8, 8, 1], [w // 16, 16, 1, 1]],
        "explicit": [[1, 1, 1, 1], [c // 32, 32, 1, 1], [1, h // 8, 1, 8], [w // 16, 1, 1, 16]],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="1,64,112,112,3,3", help="N,C,H,W,3,3 with C % 32, H % 8, W % 16 == 0")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    n, c, h, w, r, s = (int(v) for v in args.shape.split(","))
    if (r, s) != (3, 3) or c % 32 or h % 8 or w % 16:
        parser.error("the hand-picked tilings need a 3x3 window, C % 32, H % 8 and W % 16 == 0")
    hw = autotune.resolve_target("llvm")
    workload = ops.make("depthwise_conv2d", args.shape)
    space = SearchSpace(workload, cores=hw.num_cores, registers=hw.vector_registers)
    kernels = {}
    for name, spatial in tilings(c, h, w).items():
        for level in (1, 2, 3, 4):
            for unroll in (64, 512):
                kernels[f"{name}, pad@{level}, unroll {unroll}"] = candidate(spatial, level, unroll)
    ref = compare.reference(workload, hw)
    rows = compare.hand_kernels_table({name: apply_candidate(space, k).mod for name, k in kernels.items()},
                                      "depthwise_conv2d", hw, ref, 5, args.runs)
    print(f"depthwise conv {args.shape} on {hw.fingerprint.get('model_name')} ({hw.num_cores} cores), "
          f"mcpu {hw.target.attrs.get('mcpu')}, ms (median of 5 placements):")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
