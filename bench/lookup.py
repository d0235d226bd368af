"""How long `apply_best` takes for one subgraph in a big cache (issue 4: under 10 ms at 100,000 records).

Builds a database with real trials of a few operators (tuned here, a handful of trials each)
plus filler trials of many other workloads and devices until it holds `--records` rows, then
times, for each real operator: the indexed `best` query, and `apply_best` end to end (workload
key from the PrimFunc, query, replay of the best schedule), with an open Database and
(as a pipeline's first call would) opening the file each time. Prints the query plan, to show
that the lookup is an index search and not a table scan.

    python bench/lookup.py --records 100000
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import autotune
from autotune import ops
from autotune.database import Database
from autotune.records import Status, TrialRecord
from autotune.space_config import load_space_config
from autotune.target import resolve_target

OPERATORS = [
    ("matmul", "128,128,128", {}),
    ("dense", "64,256,256", {"bias": "true", "epilogue": "relu"}),
    ("conv2d_nchw", "1,32,28,28,32,3,3", {"bias": "true", "relu": "true"}),
    ("softmax", "64,256", {}),
]


def fill(db: Database, template: TrialRecord, n: int, n_workloads: int = 2000, n_targets: int = 5) -> None:
    """n filler trials over other workload keys and devices, built from a real record's fields."""
    batch = []
    for i in range(n):
        status = Status.OK if i % 5 else Status.BUILD_ERROR
        batch.append(replace(
            template, workload_key=f"filler{i % n_workloads:05d}", target_key=f"device{i % n_targets}",
            candidate_key=uuid.uuid4().hex[:20], uid=uuid.uuid4().hex, status=status,
            latencies=(1e-3 * (1 + (i * 7919) % 1000 / 1000),) * 3 if status is Status.OK else (), id=None,
            ranking_latency=None,
        ))
        if len(batch) == 5000:
            db.merge_trials(batch)
            batch = []
    db.merge_trials(batch)


def timed_ms(fn, repeat: int) -> tuple[float, float]:
    fn()  # first call warms caches (SQLite pages, TVM's function registry)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, max(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=4, help="real trials per operator")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()

    hw = resolve_target("llvm")
    config = load_space_config("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lookup.db"
        workloads = []
        for op, shape, options in OPERATORS:
            workload = ops.make(op, shape, **options)
            autotune.tune(workload, target=hw, trials=args.trials, database=path, seed=0)
            workloads.append(workload)
        with Database(path) as db:
            template = db.best(workloads[0].key, hw.key)
            real = db.stats()["trials"]
            start = time.perf_counter()
            fill(db, template, args.records - real)
            fill_secs = time.perf_counter() - start
            total = db.stats()["trials"]
            plan = db._db.execute(  # the query `best` runs, as SQLite plans it
                "EXPLAIN QUERY PLAN SELECT * FROM trials WHERE workload_key = ? AND target_key = ? AND status = 'ok' "
                "AND ranking_latency IS NOT NULL ORDER BY ranking_latency, id LIMIT 1", [workloads[0].key, hw.key]
            ).fetchall()
            print(f"database: {total} trials ({real} real; filler inserted in {fill_secs:.1f} s), "
                  f"{path.stat().st_size / 1e6:.1f} MB")
            print("query plan of best():", "; ".join(str(row[-1]) for row in plan))
            rows = []
            for workload in workloads:
                func = workload.mod["main"]
                query = timed_ms(lambda: db.best(workload.key, hw.key), args.repeat)
                open_db = timed_ms(lambda: autotune.apply_best(func, target=hw, database=db, space=config), args.repeat)
                by_path = timed_ms(lambda: autotune.apply_best(func, target=hw, database=path, space=config), args.repeat)
                rows.append((workload.name, query, open_db, by_path))

    print(f"\nautotune {autotune.__version__}, {platform.processor() or platform.machine()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; median (max) of {args.repeat} calls, ms")
    print(f"{'workload':<42}{'best() query':>16}{'apply_best (open db)':>24}{'apply_best (path)':>22}")
    for name, query, open_db, by_path in rows:
        cells = [f"{m:.3f} ({x:.2f})" for m, x in (query, open_db, by_path)]
        print(f"{name:<42}{cells[0]:>16}{cells[1]:>24}{cells[2]:>22}")


if __name__ == "__main__":
    main()
