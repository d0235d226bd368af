"""Benchmark: does the finals round of a tune pick a faster best than the lowest recorded latency?

    python bench/finals_pick.py                                   # 3 workloads x seeds 0-2, 64 trials, random
    python bench/finals_pick.py --workloads matmul_512 --seeds 0 --trials 32 --strategy model

For each workload (bench/compare.py's suite names) and seed: `autotune.tune` into a fresh database,
finals on (the default). Then two picks of that one tune: the finals' winner (`db.best`, what
autotune applies) and the trial with the lowest recorded latency (what was picked before finals
existed). When they differ, both are built and timed head to head with PyTorch
(compare.time_interleaved at compare.RETIME_PLACEMENTS placements, medians): the same moments of the machine for both.

Columns: the recorded pick and the winner re-timed (ms), recorded/winner (> 1: the finals picked
the faster kernel; 1.00 exactly when both picks are the same trial), PyTorch (ms), the seconds the
finals took and the whole tune's. The last line is the geomean over all runs.
"""

# ruff: noqa: E402
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # sets TVM_NUM_THREADS before tvm is imported

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator

import autotune
from autotune import ops
from autotune.database import Database
from autotune.records import Status
from autotune.space_config import load_space_config
from autotune.tuner import TaskTuner, apply_record

WORKLOADS = ["matmul_512", "dense", "conv2d_nchw"]


@contextlib.contextmanager
def finals_timed(spent: list[float]) -> Iterator[None]:
    """While inside, each TaskTuner.finals call adds the seconds it takes to `spent`."""
    original = TaskTuner.finals

    def timed(self: TaskTuner):
        start = time.perf_counter()
        try:
            return original(self)
        finally:
            spent.append(time.perf_counter() - start)

    TaskTuner.finals = timed
    try:
        yield
    finally:
        TaskTuner.finals = original


def one_run(name: str, seed: int, trials: int, strategy: str, hw: autotune.HardwareTarget, tmp: str) -> dict:
    op, shape, _, options = compare.SUITE[name]
    workload = ops.make(op, shape, **options)
    db_path = os.path.join(tmp, f"{name}-{seed}.db")
    spent: list[float] = []
    with finals_timed(spent):
        start = time.perf_counter()
        autotune.tune(workload, target=hw, trials=trials, database=db_path, strategy=strategy, seed=seed)
        wall = time.perf_counter() - start
    with Database(db_path) as db:
        winner = db.best(workload.key, hw.key)
        correct = [r for r in db.trials(workload.key, hw.key) if r.status is Status.OK]
    recorded = min(correct, key=lambda r: (r.latency, r.id))
    ref = compare.reference(workload, hw)
    config = load_space_config()
    timers = {"winner": compare.tvm_timer("winner", apply_record(workload, winner, config), hw, ref)}
    if recorded.id != winner.id:
        timers["recorded"] = compare.tvm_timer("recorded", apply_record(workload, recorded, config), hw, ref)
    torch = compare.torch_timer(op, ref)
    if not isinstance(torch, str):
        timers["torch"] = torch
    secs = {k: statistics.median(v) for k, v in compare.time_interleaved(timers, ref, compare.RETIME_PLACEMENTS).items()}
    secs.setdefault("recorded", secs["winner"])
    return {"workload": name, "seed": seed, "recorded": secs["recorded"], "winner": secs["winner"],
            "torch": secs.get("torch"), "finals": sum(spent), "wall": wall, "same": recorded.id == winner.id}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=WORKLOADS, choices=list(compare.SUITE))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--strategy", default="random", choices=autotune.tuner.STRATEGIES)
    args = parser.parse_args(argv)
    hw = autotune.resolve_target("llvm")
    print(f"# finals_pick: {args.trials} trials, {args.strategy}, seeds {args.seeds}, {hw.fingerprint.get('model_name')} "
          f"({hw.num_cores} cores), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| workload | seed | recorded pick ms | finals winner ms | recorded/winner | PyTorch ms | finals s | tune s |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    with tempfile.TemporaryDirectory(prefix="finals-pick-") as tmp:
        for name in args.workloads:
            for seed in args.seeds:
                row = one_run(name, seed, args.trials, args.strategy, hw, tmp)
                ratio = row["recorded"] / row["winner"] if not row["same"] else 1.0
                ratios.append(ratio)
                torch = f"{row['torch'] * 1e3:.3f}" if row["torch"] else "-"
                print(f"| {name} | {seed} | {row['recorded'] * 1e3:.3f} | {row['winner'] * 1e3:.3f} | "
                      f"{ratio:.2f}{' (same)' if row['same'] else ''} | {torch} | {row['finals']:.1f} | {row['wall']:.1f} |",
                      flush=True)
    print(f"geomean recorded/winner over {len(ratios)} runs: {compare.geomean(ratios):.3f}; "
          f"winner differs in {sum(r != 1.0 for r in ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
