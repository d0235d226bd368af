"""Nothing lost, nothing wrong: injected faults, repeated SIGKILLs, concurrent writers.

Fast versions run by default; the soaks (100+ faults, 25 kills) run with
`python -m pytest --soak -m soak tests/test_faults.py`.
"""

from __future__ import annotations

import hashlib
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import closing

import pytest

import autotune
from autotune import ops
from autotune.database import Database
from autotune.measure import MeasureOptions
from autotune.records import Status

# What each injected fault must be recorded as.
EXPECTED = {"segfault": Status.RUN_ERROR, "hang": Status.TIMEOUT, "alloc": Status.RUN_ERROR,
            "wrong": Status.WRONG_RESULT, "build_segfault": Status.BUILD_ERROR, None: Status.OK}


def fault_plan(share_ok: float):
    """A plan: a fault kind per candidate, the untuned default always clean.

    Whether a candidate is clean is drawn from its key; the faulty ones get the kinds in turn, in
    the order they are first seen, so every kind occurs once five candidates are faulty, whatever
    the space draws (a kind drawn from the key too went missing when the draws changed).
    """
    kinds = ["segfault", "hang", "alloc", "wrong", "build_segfault"]
    assigned: dict[str, str | None] = {}
    lock = threading.Lock()  # builds ask for their candidate's fault from the pool's threads

    def plan(candidate):
        if not candidate.decisions.get("blocks"):
            return None
        with lock:
            if candidate.key not in assigned:
                draw = int(hashlib.sha256(candidate.key.encode()).hexdigest(), 16)
                faulty = sum(kind is not None for kind in assigned.values())
                assigned[candidate.key] = None if (draw % 1000) / 1000 < share_ok else kinds[faulty % len(kinds)]
            return assigned[candidate.key]

    return plan


def run_with_faults(tmp_path, trials: int, share_ok: float):
    plan = fault_plan(share_ok)
    # No adaptive build limit: a clean candidate that builds slowly (unroll) is not an injected fault.
    options = MeasureOptions(run_timeout=1.5, build_timeout=30, build_timeout_vs_median=0, memory_limit_mb=4096,
                             inject=plan, repeat=2, min_repeat_ms=5)
    workload = ops.make("matmul", "32,32,32")
    result = autotune.tune(workload, trials=trials, database=tmp_path / "faults.db", seed=3, strategy="random",
                           measure=options, batch_size=8)
    injected = Counter()
    for record in result.trials:
        kind = plan(autotune.Candidate(record.decisions))
        injected[kind] += 1
        assert record.status is EXPECTED[kind], (kind, record.status, record.error)
    assert result.best is not None and plan(autotune.Candidate(result.best.decisions)) is None
    with Database(tmp_path / "faults.db") as db:
        assert len(db.trials()) == trials  # every fault is a record
    return injected


def test_injected_faults_are_recorded_and_never_best(tmp_path):
    injected = run_with_faults(tmp_path, trials=24, share_ok=0.4)
    assert sum(n for kind, n in injected.items() if kind) >= 8
    assert {"segfault", "hang", "alloc", "wrong", "build_segfault"} <= set(injected)


@pytest.mark.soak
def test_soak_100_injected_faults_in_one_session(tmp_path):
    injected = run_with_faults(tmp_path, trials=130, share_ok=0.15)
    print(f"\ninjected faults survived: {dict(injected)}")
    assert sum(n for kind, n in injected.items() if kind) >= 100


# -- SIGKILL at random moments -------------------------------------------------------------------

SESSION_SCRIPT = """
import sys, torch
from autotune.database import Database
from autotune.session import tune_model
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()
db = sys.argv[1]
with Database(db) as d:
    resume = bool(d.sessions())
if resume:
    tune_model(session=1, database=db)
else:
    tune_model(net, example_inputs=(torch.randn(2, 16),), trials=int(sys.argv[2]), database=db, batch_size=2,
               strategy="random", seed=0)
"""


def kill_and_resume(tmp_path, kills: int, budget: int, seed: int = 0):
    """SIGKILL a model-tuning session `kills` times at random moments, resume it, check the records.

    Each kill waits for a trial count drawn in advance, then a random fraction of a batch's
    time, so that it lands mid-build, mid-run or mid-commit; the counts stop 10 trials short of
    the budget, so that a fast machine cannot finish the session before the last kill (a kill
    after a random 0-1.5 s sleep did, at ~9 trials a second).
    """
    rng = random.Random(seed)
    db_path = tmp_path / "killed.db"
    script = tmp_path / "session.py"
    script.write_text(SESSION_SCRIPT)
    kill_counts = sorted(rng.sample(range(2, budget - 10), kills))
    seen: set[str] = set()
    done = 0
    for kill_count in kill_counts:
        child = subprocess.Popen([sys.executable, str(script), str(db_path), str(budget)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_for_trial_count(db_path, max(kill_count, len(seen) + 1), child)
        time.sleep(rng.uniform(0.0, 0.25))  # about one batch of two trials: a build, a run or a commit
        if child.poll() is not None:
            break  # finished its budget before the kill
        child.send_signal(signal.SIGKILL)
        child.wait()
        done += 1
        seen = _check_database(db_path, seen)
    subprocess.run([sys.executable, str(script), str(db_path), str(budget)], check=True, capture_output=True)
    seen = _check_database(db_path, seen)
    assert len(seen) == budget  # the budget counted what was done before each kill
    print(f"\n{done} SIGKILLs survived; {budget} trials, none lost or repeated")
    return done


def _wait_for_trial_count(db_path, at_least: int, child, timeout: float = 120) -> None:
    """Return once the database holds `at_least` trials, or the child has exited, or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with closing(sqlite3.connect(db_path, timeout=5)) as connection:
                n = connection.execute("SELECT count(*) FROM trials").fetchone()[0]
        except sqlite3.OperationalError:
            n = 0
        if n >= at_least:
            return
        time.sleep(0.02)


def _check_database(db_path, before: set[str]) -> set[str]:
    assert sqlite3.connect(db_path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Database(db_path) as db:
        trials = db.trials()
    uids = {r.uid for r in trials}
    assert before <= uids, "a committed trial was lost"
    keys = [(r.workload_key, r.candidate_key) for r in trials]
    assert len(keys) == len(set(keys)), "a candidate was measured twice"
    return uids


def test_repeated_sigkill_loses_nothing_and_repeats_nothing(tmp_path):
    assert kill_and_resume(tmp_path, kills=4, budget=40) == 4


@pytest.mark.soak
def test_soak_25_sigkills(tmp_path):
    assert kill_and_resume(tmp_path, kills=25, budget=120, seed=1) == 25


# -- concurrent writers -----------------------------------------------------------------------

WRITER = """
import sys, autotune
from autotune import ops
workload = ops.make(sys.argv[2], sys.argv[3])
autotune.tune(workload, trials=int(sys.argv[4]), database=sys.argv[1], seed=int(sys.argv[5]), strategy="random",
              batch_size=2)
"""


def test_concurrent_tuners_share_one_database(tmp_path):
    db_path = str(tmp_path / "shared.db")
    jobs = [("matmul", "32,32,32", 5, 1), ("matmul", "32,32,32", 5, 2), ("softmax", "16,64", 5, 3)]
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, db_path, op, shape, str(n), str(seed)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for op, shape, n, seed in jobs]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and b"locked" not in err, err.decode()[-2000:]
    matmul, softmax = ops.make("matmul", "32,32,32"), ops.make("softmax", "16,64")
    with Database(db_path) as db:
        target = db.summary()[0]["target_key"]
        mm = db.trials(matmul.key, target)
        assert len(db.trials(softmax.key, target)) == 5
        assert len(mm) == 10  # every record of both tuners of the same workload is there
        # the best is the query over both tuners' records (by ranking latency: finals re-rank the leaders)
        fastest = min((r for r in mm if r.latency), key=lambda r: (r.ranking_latency or r.latency, r.id))
        assert db.best(matmul.key, target).uid == fastest.uid
    assert sqlite3.connect(db_path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
