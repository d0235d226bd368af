"""How noisy are the cost model's labels, and what pairwise accuracy does that noise allow?

    python bench/label_noise.py "/tmp/cmp/*-64.db"                  # databases of compare.py --keep runs
    python bench/label_noise.py "/tmp/cmp/*-64.db" --records "/tmp/cmp/*-random-64.db"

The finals of a tune (tuner.TaskTuner.finals) time its leaders again, together, 7 rounds each.
For each finals found in the databases (its checks are committed in one transaction: same
workload and target, created within SAME_FINALS_SECS), each finalist gives one residual: the log of its
finals latency over its recorded one, minus the median of that over the finals (the moment's
speed, which moves every finalist alike). Their spread is how far one recorded median (the
label) lies from another measurement of the same kernel at another moment.

From that spread, the ceiling: a model that knew every kernel's true latency would still order a
pair of records the wrong way round whenever the noise of the two labels outweighs their gap.
With Gaussian noise of log-sd sigma per label, a pair whose log latencies differ by d is ordered
as its labels are with probability Phi(d / (sigma * sqrt 2)). The mean of that over each
workload's pairs of correct records is the pairwise accuracy a perfect model could score against
these labels (gaps taken from the noisy records themselves: a rough estimate). Printed at two
sigmas: the residuals' sd over sqrt 2 (record and finals equally noisy) and the sd itself, for
the workloads of the databases named by --records (default: all of them).
"""

from __future__ import annotations

import argparse
import glob
import math
import statistics
import sys

from autotune.database import Database
from autotune.records import Status

# Finals commit their checks in one transaction (milliseconds apart); verify_best's come a build apart.
SAME_FINALS_SECS = 0.05


def finals_residuals(db: Database) -> list[float]:
    """One residual per finalist of every finals in `db` (see the module docstring)."""
    residuals = []
    for row in db.summary():
        by_time: list[tuple[float, float]] = []  # (check time, log(check latency / recorded latency))
        for trial in db.trials(row["workload_key"], row["target_key"]):
            if not trial.latencies:
                continue
            recorded = statistics.median(trial.latencies)
            by_time += [(c["created_at"], math.log(c["latency_median"] / recorded))
                        for c in db.checks(trial.id) if c["latency_median"]]
        by_time.sort()
        groups: list[list[float]] = []
        last = -math.inf
        for at, ratio in by_time:
            if at - last > SAME_FINALS_SECS:
                groups.append([])
            groups[-1].append(ratio)
            last = at
        for group in groups:
            if len(group) >= 2:
                moment = statistics.median(group)
                residuals += [r - moment for r in group]
    return residuals


def pairwise_ceiling(log_latencies: list[float], sigma: float) -> float:
    """Mean over pairs of Phi(|gap| / (sigma * sqrt 2)): see the module docstring."""
    pairs = [abs(a - b) for i, a in enumerate(log_latencies) for b in log_latencies[i + 1:] if a != b]
    return statistics.mean(0.5 * (1 + math.erf(gap / (sigma * 2))) for gap in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="+", help="database paths or glob patterns, read for finals")
    parser.add_argument("--records", nargs="+", help="databases whose workloads get a ceiling (default: the same)")
    args = parser.parse_args(argv)
    paths = sorted({p for pattern in args.patterns for p in glob.glob(pattern)})
    record_paths = sorted({p for pattern in args.records or args.patterns for p in glob.glob(pattern)})
    residuals: list[float] = []
    for path in paths:
        with Database(path) as db:
            residuals += finals_residuals(db)
    if len(residuals) < 3:
        print("fewer than 3 finalists' checks in these databases", file=sys.stderr)
        return 1
    sd = statistics.pstdev(residuals)
    robust = 1.4826 * statistics.median(abs(r) for r in residuals)
    worst = max(residuals, key=abs)
    print(f"{len(residuals)} finalists in {len(paths)} databases: log-residual sd {sd:.3f} (x{math.exp(sd):.3f}), "
          f"1.4826 MAD {robust:.3f}, worst x{math.exp(worst):.2f}")
    sigmas = (sd / math.sqrt(2), sd)
    print(f"| workload | database | correct records | ceiling at sigma {sigmas[0]:.3f} | ceiling at sigma {sigmas[1]:.3f} |")
    print("|---|---|---|---|---|")
    for path in record_paths:
        with Database(path) as db:
            for row in db.summary():
                logs = [math.log(r.latency) for r in db.trials(row["workload_key"], row["target_key"])
                        if r.status is Status.OK and r.latency]
                if len(logs) >= 20:
                    ceilings = " | ".join(f"{pairwise_ceiling(logs, s):.3f}" for s in sigmas)
                    print(f"| {row['workload_name']} | {path.rsplit('/', 1)[-1]} | {len(logs)} | {ceilings} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
