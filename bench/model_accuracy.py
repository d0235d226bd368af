"""How well does the cost model rank candidates of a workload it has never seen?

For each workload in a tuning database (records of one hardware target) with at least
--min-records records, train the XGBoost cost model on every *other* workload's records (however
few each has: a corpus of 64-trial tunes counts in full) and report, on the held-out workload:
- pairwise ranking accuracy: of all pairs of correct candidates with different latencies, the
  share the model orders the right way round;
- top-k recall: is the measured best among the model's top 8 / top 32?
Next to it, the same for a model trained only on the held-out workload's own first 64 records
(evaluated on the rest), to show what transfer across workloads gives.

Run:  python bench/model_accuracy.py --db cache/tuning.db [--target-key KEY] [--min-records 96]
(the database must hold records of several workloads on one target, e.g. from bench/compare.py).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np
import tvm

from autotune.cost_model import CostModel, latency_or_nan
from autotune.database import Database
from autotune.features import FeatureExtractor
from autotune.records import TrialRecord
from autotune.search_space import Candidate, SearchSpace
from autotune.space_config import load_space_config
from autotune.target import HardwareTarget, resolve_target
from autotune.workload import as_workload

OWN_RECORDS = 64


def pairwise_accuracy(predicted: np.ndarray, latencies: np.ndarray) -> float:
    """Share of pairs (i, j) with latency_i < latency_j where the model scores i above j."""
    ok = np.isfinite(latencies)
    p, lat = predicted[ok], latencies[ok]
    faster = lat[:, None] < lat[None, :]
    agree = (p[:, None] > p[None, :]) & faster
    return float(agree.sum() / max(1, faster.sum()))


def top_k_recall(predicted: np.ndarray, latencies: np.ndarray, k: int) -> bool:
    return int(np.nanargmin(latencies)) in set(np.argsort(-predicted)[:k].tolist())


def load(db: Database, target: HardwareTarget) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Features and latencies of every workload with records on `target`, keyed by workload key."""
    by_workload: dict[str, list[TrialRecord]] = defaultdict(list)
    for record in db.trials(target_key=target.key):
        by_workload[record.workload_key].append(record)
    config = load_space_config("cpu")
    data = {}
    for key, records in by_workload.items():
        row = db.workload_row(key)
        if row is None:
            continue
        space = SearchSpace(as_workload(tvm.script.from_source(row["script"]), name=row["name"]), config)
        features = FeatureExtractor(space, target).extract([Candidate(r.decisions) for r in records])
        data[key] = (features, np.array([latency_or_nan(r) for r in records]), row["name"])
    return data


def evaluate(data: dict[str, tuple[np.ndarray, np.ndarray, str]], min_records: int) -> list[dict[str, object]]:
    """Hold out, in turn, each workload with at least `min_records` records; train on all the others."""
    rows = []
    for key, (features, latencies, name) in data.items():
        if len(latencies) < min_records:
            continue
        others = [k for k in data if k != key]
        transfer = CostModel()
        transfer.fit(np.vstack([data[k][0] for k in others]), np.concatenate([data[k][1] for k in others]),
                     [k for k in others for _ in range(len(data[k][1]))])
        p_transfer = transfer.predict(features)
        row = {
            "workload": name, "records": len(latencies),
            "transfer pairwise": pairwise_accuracy(p_transfer, latencies),
            "transfer top8": top_k_recall(p_transfer, latencies, 8),
            "transfer top32": top_k_recall(p_transfer, latencies, 32),
            "own-64 pairwise (rest)": None, "own-64 top8 (rest)": None,  # no rest to evaluate on
        }
        if len(latencies) > OWN_RECORDS:
            own = CostModel()
            own.fit(features[:OWN_RECORDS], latencies[:OWN_RECORDS], [key] * OWN_RECORDS)
            rest_f, rest_l = features[OWN_RECORDS:], latencies[OWN_RECORDS:]
            p_own = own.predict(rest_f)
            row["own-64 pairwise (rest)"] = pairwise_accuracy(p_own, rest_l)
            row["own-64 top8 (rest)"] = top_k_recall(p_own, rest_l, 8) if np.isfinite(rest_l).any() else None
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "no workload with enough records"
    head = list(rows[0])
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else "–" if v is None else str(v)  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r[h]) for h in head) + " |" for r in rows]
    mean = np.mean([r["transfer pairwise"] for r in rows])
    own = np.mean([r["own-64 pairwise (rest)"] for r in rows if r["own-64 pairwise (rest)"] is not None] or [np.nan])
    hits = lambda col: sum(bool(r[col]) for r in rows)  # noqa: E731
    n_own = sum(r["own-64 pairwise (rest)"] is not None for r in rows)
    lines.append(f"\nmean pairwise accuracy: transfer {mean:.3f} ({len(rows)} workloads held out), "
                 f"own first 64 records {own:.3f} (the {n_own} workloads with more records)")
    lines.append(f"best candidate in the model's top 8 / top 32: transfer {hits('transfer top8')} / "
                 f"{hits('transfer top32')} of {len(rows)} workloads; own-64 (rest) top 8: "
                 f"{hits('own-64 top8 (rest)')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--min-records", type=int, default=96,
                        help="hold out only workloads with at least this many records (default 96); "
                             "every workload is trained on")
    args = parser.parse_args(argv)
    target = resolve_target("llvm")
    with Database(args.db) as db:
        data = load(db, target)
    rows = evaluate(data, args.min_records) if len(data) >= 2 else []
    if not rows:
        print(f"need records of at least 2 workloads on {target.key}, one of them with >= {args.min_records} records")
        return 1
    records = sum(len(latencies) for _, latencies, _ in data.values())
    print(f"{len(data)} workloads, {records} records; each held-out one is trained on all the others")
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
