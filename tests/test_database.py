"""The SQLite tuning cache: round trips, best/top-k queries, schema checks, concurrency."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from autotune import database
from autotune.database import DEFAULT_DB_ENV, SCHEMA_VERSION, Check, Database, default_database_path
from autotune.errors import DatabaseError
from autotune.records import Status, TrialRecord

W, T = "wl0", "tgt0"


def trial(candidate: str, status: Status = Status.OK, latencies=(1e-3,), workload=W, target=T, **kw) -> TrialRecord:
    return TrialRecord(
        workload_key=workload,
        target_key=target,
        candidate_key=candidate,
        decisions={"tile": {"i": [4, 8], "j": [16]}, "vector": 16, "unroll": 0},
        status=status,
        latencies=tuple(latencies),
        trace=[{"kind": "split", "inputs": [0], "attrs": [4, 8]}, None],
        build_secs=0.25,
        versions={"tvm": "0.27.0", "autotune": "0.1.0"},
        **kw,
    )


@pytest.fixture(params=["file", "memory"])
def db(request, tmp_path):
    path = tmp_path / "cache" / "tuning.db" if request.param == "file" else ":memory:"
    with Database(path) as database:
        yield database


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "tuning.db"


# -- round trips and queries ---------------------------------------------------------------


def test_trial_round_trip(db):
    record = trial("c0", latencies=(3e-3, 1e-3, 2e-3), error="", created_at=1234.5)
    failed = trial("c1", Status.BUILD_ERROR, latencies=(), error="LLVM error: bad")
    row_id = db.commit_trial(record)
    failed_id = db.commit_trial(failed)
    assert failed_id > row_id
    assert db.trials() == [dataclasses.replace(record, id=row_id), dataclasses.replace(failed, id=failed_id)]
    loaded = db.best(W, T)
    assert loaded == dataclasses.replace(record, id=row_id)
    assert loaded.latencies == (3e-3, 1e-3, 2e-3) and loaded.status is Status.OK
    assert loaded.latency == 2e-3


def test_best_ignores_failures_and_picks_smallest_median(db):
    db.commit_trial(trial("slow", latencies=(5e-3, 5e-3, 5e-3)))
    db.commit_trial(trial("fast", latencies=(1e-3, 9e-3, 2e-3)))  # median 2e-3, mean larger
    db.commit_trial(trial("mid", latencies=(3e-3,)))
    for status in (Status.WRONG_RESULT, Status.TIMEOUT, Status.RUN_ERROR, Status.BUILD_ERROR):
        db.commit_trial(trial(f"bad-{status.value}", status, latencies=(1e-9,)))
    db.commit_trial(trial("other-target", latencies=(1e-6,), target="tgt1"))
    db.commit_trial(trial("other-workload", latencies=(1e-6,), workload="wl1"))
    assert db.best(W, T).candidate_key == "fast"
    assert [r.candidate_key for r in db.top_k(W, T, 2)] == ["fast", "mid"]
    assert [r.candidate_key for r in db.top_k(W, T, 10)] == ["fast", "mid", "slow"]
    assert db.top_k(W, T, 0) == []
    assert db.best(W, "nowhere") is None


def test_checks_re_rank_and_flag_trials_together(db):
    ids = [db.commit_trial(trial(c, latencies=(lat,))) for c, lat in (("a", 1e-3), ("b", 2e-3), ("c", 3e-3))]
    again = trial("x", latencies=(9e-3,))
    db.commit_checks([Check(ids[0], trial("x", Status.WRONG_RESULT, latencies=()), None, flagged=True),
                      Check(ids[2], again, 3.0, flagged=False, ranking_latency=1.5e-3)])
    assert [r.candidate_key for r in db.top_k(W, T, 3)] == ["c", "b"]
    assert db.best(W, T).latency == 3e-3 and db.best(W, T).ranking_latency == 1.5e-3
    assert db.summary()[0]["best_latency"] == 3e-3  # the best's own latency, not the flagged trial's
    assert [c["ratio"] for c in db.checks(ids[2])] == [3.0] and db.checks(ids[0])[0]["flagged"] == 1


def test_merging_again_takes_the_incoming_rankings_of_known_trials(db, tmp_path):
    with Database(tmp_path / "source.db") as source:
        ids = [source.commit_trial(trial(c, latencies=(lat,))) for c, lat in (("a", 1e-3), ("b", 2e-3), ("c", 3e-3))]
        assert db.merge_trials(source.trials()) == 3 and db.best(W, T).candidate_key == "a"
        # more tuning there: finals re-ranked c first and flagged a
        source.commit_checks([Check(ids[0], trial("x", Status.WRONG_RESULT, latencies=()), None, flagged=True),
                              Check(ids[2], trial("x", latencies=(2e-3,)), 0.7, flagged=False, ranking_latency=0.5e-3)])
        assert db.merge_trials(source.trials()) == 0
    assert [(r.candidate_key, r.status) for r in db.trials(W, T)] == [("a", Status.UNSTABLE), ("b", Status.OK), ("c", Status.OK)]
    assert db.best(W, T).candidate_key == "c"


def test_measured_candidate_keys_include_failures(db):
    db.commit_trial(trial("ok"))
    db.commit_trial(trial("timed-out", Status.TIMEOUT, latencies=()))
    db.commit_trial(trial("wrong", Status.WRONG_RESULT))
    db.commit_trial(trial("elsewhere", target="tgt1"))
    assert db.measured_candidate_keys(W, T) == {"ok", "timed-out", "wrong"}
    assert db.measured_candidate_keys(W, "tgt1") == {"elsewhere"}


def test_trials_filters_and_order(db):
    ids = [db.commit_trial(trial(f"c{i}", target=f"t{i % 2}")) for i in range(6)]
    assert [r.id for r in db.trials()] == ids
    assert [r.candidate_key for r in db.trials(W, "t1")] == ["c1", "c3", "c5"]
    assert [r.candidate_key for r in db.trials(target_key="t0")] == ["c0", "c2", "c4"]
    assert db.trials("nothing") == []


def test_target_keys_with_records(db):
    db.commit_trial(trial("a", target="gpu"))
    db.commit_trial(trial("b", target="cpu-a"))
    db.commit_trial(trial("c", Status.BUILD_ERROR, target="cpu-b"))
    assert db.target_keys_with_records(W) == ["cpu-a", "gpu"]
    assert db.target_keys_with_records("unknown") == []


def test_workload_and_target_upsert(db):
    from autotune.workload import ArgInfo  # imports TVM; kept out of the module for the spawned writers

    args = (ArgInfo("A", (4, 8), "float32", False), ArgInfo("C", (4, 4), "float32", True))
    workload = SimpleNamespace(key="k1", name="mm", script="# from tvm.script ...", flops=256.0, args=args,
                               mod_json='{"root": 1}')
    db.commit_workload(workload)
    db.commit_workload(SimpleNamespace(**{**vars(workload), "name": "matmul"}))
    row = db.workload_row("k1")
    assert row["name"] == "matmul" and row["flops"] == 256.0 and row["script"] == workload.script
    assert row["mod_json"] == workload.mod_json
    assert [ArgInfo.from_json(a) for a in row["args"]] == list(args)
    assert db.workload_row("missing") is None

    target = {"kind": "llvm", "mcpu": "sapphirerapids", "keys": ["cpu"]}
    db.commit_target("cpu-1", target, {"model": "Xeon", "flags": ["avx512f"]})
    db.commit_target("cpu-1", target, {"model": "Xeon", "flags": ["avx512f", "amx"]})
    row = db.target_row("cpu-1")
    assert row["kind"] == "llvm" and row["target"] == target
    assert row["fingerprint"] == {"model": "Xeon", "flags": ["avx512f", "amx"]}
    assert db.target_row("missing") is None
    counts = [db._db.table(t).count for t in ("workloads", "targets")]
    assert counts == [1, 1]


def test_real_workload_is_stored():
    from tvm import te

    from autotune.workload import ArgInfo, as_workload

    a = te.placeholder((8, 8), name="A")
    b = te.placeholder((8, 8), name="B")
    k = te.reduce_axis((0, 8), name="k")
    c = te.compute((8, 8), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    workload = as_workload([a, b, c], name="matmul")
    with Database(":memory:") as db:
        db.commit_workload(workload)
        row = db.workload_row(workload.key)
    assert row["script"] == workload.script and row["flops"] == workload.flops
    assert tuple(ArgInfo.from_json(a) for a in row["args"]) == workload.args


def test_json_is_sorted_text_not_pickle(db):
    db.commit_trial(trial("c0"))
    raw = next(db._db.query("SELECT decisions, versions FROM trials"))
    assert raw["decisions"] == '{"tile": {"i": [4, 8], "j": [16]}, "unroll": 0, "vector": 16}'
    assert raw["versions"] == '{"autotune": "0.1.0", "tvm": "0.27.0"}'


# -- schema, migrations and bad files ------------------------------------------------------


def test_schema_version_and_migrations_recorded(db_path):
    Database(db_path).close()
    Database(db_path).close()  # reopening applies nothing twice
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(database._MIGRATIONS)
    names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [m.__name__ for m in database._MIGRATIONS] and names[0] == "_m001_initial"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_pending_migration_upgrades_an_older_database(db_path, monkeypatch):
    with Database(db_path) as db:
        db.commit_trial(trial("c0"))
    calls = []

    def _m999_add_note(sdb):
        calls.append(1)
        sdb.execute("ALTER TABLE trials ADD COLUMN note TEXT")

    monkeypatch.setattr(database, "_MIGRATIONS", database._MIGRATIONS + (_m999_add_note,))
    monkeypatch.setattr(database, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    Database(db_path).close()
    Database(db_path).close()
    assert calls == [1]
    conn = sqlite3.connect(db_path)
    names = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [m.__name__ for m in database._MIGRATIONS]  # the patched list, ending with ours
    assert names[-1] == "_m999_add_note" and len(names) == SCHEMA_VERSION + 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert conn.execute("SELECT candidate_key, note FROM trials").fetchall() == [("c0", None)]
    conn.close()


def test_failed_migration_rolls_back(db_path, monkeypatch):
    Database(db_path).close()

    def _m999_broken(sdb):
        sdb.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(database, "_MIGRATIONS", database._MIGRATIONS + (_m999_broken,))
    monkeypatch.setattr(database, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError, match="boom"):
        Database(db_path)
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchall() == []
    conn.close()


def test_newer_schema_is_refused(db_path):
    Database(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DatabaseError, match=rf"newer autotune \(schema {SCHEMA_VERSION + 1}, this one reads up to {SCHEMA_VERSION}\)"):
        Database(db_path)


@pytest.mark.parametrize("content", [b"not a database\n" * 40, b"SQLite format 3\x00" + b"\x10" * 90])
def test_garbage_file_is_refused_and_left_alone(db_path, content):
    db_path.write_bytes(content)
    with pytest.raises(DatabaseError, match=str(db_path)) as info:
        Database(db_path)
    assert "\n" not in str(info.value)
    assert db_path.read_bytes() == content
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]


def test_truncated_database_is_refused(db_path):
    with Database(db_path) as db:
        for i in range(300):
            db.commit_trial(trial(f"c{i}"))
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    data = db_path.read_bytes()
    db_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatabaseError, match=str(db_path)):
        Database(db_path)


def test_foreign_sqlite_database_is_refused(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError, match="not an autotune one"):
        Database(db_path)


def test_empty_file_becomes_a_database(db_path):
    db_path.touch()
    with Database(db_path) as db:
        db.commit_trial(trial("c0"))
    with Database(db_path) as db:
        assert len(db.trials()) == 1


def test_bad_paths(tmp_path):
    with pytest.raises(DatabaseError, match="is a directory"):
        Database(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatabaseError, match="cannot create the directory"):
        Database(blocker / "sub" / "tuning.db")


def test_parent_directory_is_created(tmp_path):
    path = tmp_path / "a" / "b" / "tuning.db"
    with Database(path) as db:
        assert db.path == path
    assert path.is_file()


# -- robustness: indexes, durability, concurrency ------------------------------------------


def test_lookups_use_indexes(db):
    for i in range(50):
        db.commit_trial(trial(f"c{i}", latencies=(i * 1e-4 + 1e-4,)))
    seen: list[tuple[str, object]] = []
    with db._db.tracer(lambda sql, params: seen.append((sql, params))):
        db.best(W, T)
        db.top_k(W, T, 5)
        db.measured_candidate_keys(W, T)
        db.target_keys_with_records(W)
    queries = [(sql, params) for sql, params in seen if "trials" in sql and sql.lstrip().lower().startswith("select")]
    assert len(queries) == 4
    for sql, params in queries:
        plan = " | ".join(row[-1] for row in db._db.execute("EXPLAIN QUERY PLAN " + sql, params or []))
        assert "USING" in plan and "INDEX" in plan, plan
        assert "SCAN trials" not in plan and "TEMP B-TREE" not in plan, plan


def test_commit_is_durable_without_close(db_path):
    db = Database(db_path)
    row_id = db.commit_trial(trial("c0"))
    other = sqlite3.connect(db_path)  # another connection sees it: it is committed, not pending
    assert other.execute("SELECT candidate_key FROM trials WHERE id = ?", [row_id]).fetchone() == ("c0",)
    other.close()
    db.close()


def _write_trials(path: Path, name: str, count: int, barrier=None) -> None:
    """One writer: opens its own Database (a fresh file, so the migrations race too) and commits."""
    if barrier is not None:
        barrier.wait()
    with Database(path) as db:
        for i in range(count):
            db.commit_trial(trial(f"{name}-{i}", latencies=(1e-3 + i * 1e-6,)))


def _check_all_written(path: Path) -> None:
    with Database(path) as db:
        keys = db.measured_candidate_keys(W, T)
        assert len(db.trials()) == 400
    assert keys == {f"{n}-{i}" for n in "ab" for i in range(200)}
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_two_threads_write_one_file(db_path):
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            _write_trials(db_path, name, 200, barrier)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _check_all_written(db_path)


def test_two_processes_write_one_file(db_path):
    # Separate processes interleave their commits far more than threads (which the GIL serializes).
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_write_trials, args=(db_path, n, 200, barrier)) for n in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    _check_all_written(db_path)


# -- default path --------------------------------------------------------------------------


def test_default_path_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv(DEFAULT_DB_ENV, str(tmp_path / "mine.db"))
    assert default_database_path() == tmp_path / "mine.db"
    with Database() as db:
        assert db.path == tmp_path / "mine.db"
    assert (tmp_path / "mine.db").is_file()


def test_default_path_without_env_var(monkeypatch):
    monkeypatch.delenv(DEFAULT_DB_ENV, raising=False)
    path = default_database_path()
    assert path.name == "tuning.db"
    checkout = Path(database.__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "cache").is_dir():
        assert path == checkout / "cache" / "tuning.db"
    else:
        assert path == Path.home() / ".cache" / "autotune" / "tuning.db"


def test_models_round_trip_per_target_and_feature_version(db):
    assert db.load_model(T, 1) is None
    db.save_model(T, 1, 10, b'{"learner": 1}')
    db.save_model(T, 1, 25, b'{"learner": 2}')  # replaces the older model of the same version
    db.save_model(T, 2, 5, b"other")
    assert db.load_model(T, 1) == (b'{"learner": 2}', 25)
    assert db.load_model(T, 2) == (b"other", 5)
    assert db.load_model("another-target", 1) is None
