"""Benchmark: tuning wall time with and without measurement screening, side by side.

Random search with the same seed measures the same candidates either way, so the difference in
wall time is what screening saves (MeasureOptions.screen_ratio: a candidate whose first timed
repeat is over that many times the best so far stops after it), and the bests should agree
within run-to-run noise. About 5 minutes on 2 cores at 64 trials:

    python bench/screening.py [TRIALS]
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))  # before tvm is imported

import autotune  # noqa: E402
from autotune import ops  # noqa: E402
from autotune.measure import MeasureOptions  # noqa: E402

CASES = [("matmul", "512,512,512", {}), ("dense", "64,1024,1024", {"bias": True, "epilogue": "relu"}),
         ("softmax", "512,256", {})]
SEEDS = (0, 1)
RATIOS = (0.0, 1.5)  # 0: every repeat timed; 1.5: the default


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    print(f"{'workload':<34}{'screen':>7}{'wall s':>8}{'best ms':>9}{'1-repeat trials':>17}")
    for op, shape, options in CASES:
        workload = ops.make(op, shape, **options)
        for seed in SEEDS:
            for ratio in RATIOS:
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    result = autotune.tune(workload, trials=trials, database=os.path.join(tmp, "t.db"), seed=seed,
                                           strategy="random", measure=MeasureOptions(screen_ratio=ratio))
                    wall = time.perf_counter() - start
                once = sum(1 for t in result.trials if len(t.latencies) == 1)
                print(f"{workload.name:<34}{ratio:>7}{wall:>8.1f}{result.best_latency * 1e3:>9.4f}{once:>17}"
                      f"  seed {seed}", flush=True)


if __name__ == "__main__":
    main()
