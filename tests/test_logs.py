"""Tuning logs: export → import round trips, idempotent merges, identical-device reuse, bad logs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import uuid

import pytest

import autotune
from autotune import ops
from autotune.cli import main
from autotune.database import Database
from autotune.errors import LogError
from autotune.logs import LOG_VERSION, export_log, import_log
from autotune.target import HardwareTarget, make_key, resolve_target

SHAPE = "32,32,32"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A database with a few real trials of a small matmul on this machine, and its log."""
    root = tmp_path_factory.mktemp("tuned")
    db_path, log = root / "source.db", root / "source.jsonl"
    result = autotune.tune(ops.make("matmul", SHAPE), trials=4, database=db_path, seed=0)
    with Database(db_path) as db:
        assert export_log(db, log) == 4
    return result, db_path, log


def other_device(hw: HardwareTarget) -> HardwareTarget:
    """The same target on a CPU with another model name and fewer ISA extensions (a faked second device)."""
    fingerprint = {**hw.fingerprint, "model_name": "Another CPU", "isa": hw.fingerprint["isa"][:-3]}
    return HardwareTarget(hw.target, fingerprint, make_key(hw.target_json(), fingerprint))


def copy_to_device(db: Database, records, device: HardwareTarget) -> None:
    db.commit_target(device.key, device.target_json(), device.fingerprint)
    db.merge_trials([dataclasses.replace(r, target_key=device.key, uid=uuid.uuid4().hex, id=None) for r in records])


def log_of_other_device(tuned, tmp_path):
    """The tuned records copied to a faked second device and exported: (this target, that device, log)."""
    result, source_db, _ = tuned
    here, device = result.target, other_device(result.target)
    db_path, log = tmp_path / "other.db", tmp_path / "other.jsonl"
    with Database(source_db) as src, Database(db_path) as db:
        db.commit_workload(result.workload)
        copy_to_device(db, src.trials(result.workload.key, here.key), device)
        export_log(db, log, target_key=device.key)
    return here, device, log


def count(db_path) -> int:
    with Database(db_path) as db:
        return db.stats()["trials"]


def test_export_import_round_trip_applies_the_same_schedule_in_a_fresh_process(tuned, tmp_path):
    result, _, log = tuned
    fresh = tmp_path / "fresh.db"
    with Database(fresh) as db:
        summary = import_log(db, log)
        assert (summary.trials, summary.added, summary.workloads, summary.targets) == (4, 4, 1, 1)
        imported = db.best(result.workload.key, result.target.key)
    assert imported.uid == result.best.uid and imported.latencies == result.best.latencies
    assert imported.origin == result.best.origin != ""
    code = (
        "import autotune, hashlib; from autotune import ops; "
        f"mod = autotune.apply_best(ops.make('matmul', '{SHAPE}'), database={str(fresh)!r}); "
        "print(hashlib.sha256(mod.script().encode()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-1] == __import__("hashlib").sha256(result.mod.script().encode()).hexdigest()


def test_importing_twice_adds_nothing_and_logs_of_two_machines_merge(tuned, tmp_path):
    result, source_db, log = tuned
    # A second machine of the same kind measured other trials of the same workload.
    second_db, second_log = tmp_path / "second.db", tmp_path / "second.jsonl"
    autotune.tune(result.workload, trials=3, database=second_db, seed=5)
    with Database(second_db) as db:
        export_log(db, second_log)
    both = tmp_path / "both.jsonl"
    both.write_text(log.read_text() + second_log.read_text())  # concatenated logs are one log
    merged = tmp_path / "merged.db"
    with Database(merged) as db:
        assert import_log(db, both).added == 7
        again = import_log(db, both)
        assert (again.added, again.skipped) == (0, 7)
        assert import_log(db, log).added == 0
        assert len(db.trials(result.workload.key, result.target.key)) == 7


def test_a_log_carries_the_ranking_its_finals_made(tuned, tmp_path):
    result, _, log = tuned
    lines = log.read_text().splitlines()
    last = json.loads(lines[-1])  # the log's last trial, ranked first by (say) later finals on its device
    _write(log_ranked := tmp_path / "ranked.jsonl", lines[:-1] + [json.dumps({**last, "ranking_latency": 1e-9})])
    with Database(tmp_path / "fleet.db") as db:
        import_log(db, log)
        assert db.best(result.workload.key, result.target.key).uid == result.best.uid
        assert import_log(db, log_ranked).added == 0  # known trials, new ranking
        assert db.best(result.workload.key, result.target.key).uid == last["uid"]


def test_records_of_another_device_are_never_applied_silently(tuned, tmp_path, capsys):
    result, _, _ = tuned
    here, device, log = log_of_other_device(tuned, tmp_path)
    fleet = tmp_path / "fleet.db"
    with Database(fleet) as db:
        assert import_log(db, log).added == 4
    assert autotune.apply_best(result.workload, target=here, database=fleet) is None
    assert autotune.apply_best(result.workload, target=device, database=fleet) is not None
    assert main(["best", "matmul", "--shape", SHAPE, "--db", str(fleet)]) == 1
    assert "records exist for 1 other device" in capsys.readouterr().out


def test_similar_device_records_seed_the_search_but_are_measured_here(tuned, tmp_path):
    result, source_db, _ = tuned
    here = result.target
    device = other_device(here)
    db_path = tmp_path / "similar.db"
    with Database(source_db) as src, Database(db_path) as db:
        db.commit_workload(result.workload)
        elsewhere = src.trials(result.workload.key, here.key)
        copy_to_device(db, elsewhere, device)
    seeded = autotune.tune(result.workload, target=here, trials=3, database=db_path, seed=9, similar=True)
    fastest_elsewhere = sorted((r for r in elsewhere if r.latency), key=lambda r: r.ranking_latency or r.latency)  # as ranked there
    # After the untuned default, the other device's best schedules are measured first, here.
    measured = [r.candidate_key for r in seeded.trials]
    assert measured[1:] == [r.candidate_key for r in fastest_elsewhere if r.candidate_key != measured[0]][:2]
    assert all(r.target_key == here.key for r in seeded.trials)
    assert seeded.best.target_key == here.key
    # Without similar=True, nothing of the other device is used.
    plain = autotune.tune(result.workload, target=here, trials=1, database=tmp_path / "plain.db", seed=9)
    assert plain.trials[0].candidate_key == measured[0]


def _write(path, lines):
    path.write_text("".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines))
    return path


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines[:-1] + [lines[-1][: len(lines[-1]) // 2]], r"line 7: not valid JSON"),
    (lambda lines: [json.dumps({**json.loads(lines[0]), "version": LOG_VERSION + 1})] + lines[1:],
     r"line 1: log format \d+ comes from a newer autotune"),
    (lambda lines: lines[:1] + [lines[1].replace('"flops": ', '"flops": 1')] + lines[2:], r"line 2: workload key"),
    (lambda lines: lines[:1] + lines[3:], r"line 2: the trial's workload .* is neither in the log"),
    (lambda lines: lines[:3] + [lines[3].replace('"ok"', '"fast"')] + lines[4:], r"line 4: unknown trial status"),
    (lambda lines: lines[:3] + [lines[3].replace('"latencies": [', '"latencies": [-1, ')] + lines[4:],
     r"line 4: latencies must be positive"),
    (lambda lines: lines[:3] + [json.dumps({**json.loads(lines[3]), "ranking_latency": -1})] + lines[4:],
     r"line 4: ranking_latency must be a positive"),
    (lambda lines: lines[1:], r"line 1: not an autotune log"),
    (lambda lines: lines[:2] + ["[1, 2]"] + lines[3:], r"line 3: expected a JSON object"),
])
def test_a_damaged_log_is_refused_naming_its_line_and_changes_nothing(tuned, tmp_path, damage, message):
    _, _, log = tuned
    lines = log.read_text().splitlines()
    assert [json.loads(x)["type"] for x in lines] == ["header", "workload", "target"] + ["trial"] * 4
    if "workload key" in message:  # change the workload's script, keep its key: the key no longer matches
        lines[1] = json.dumps({**json.loads(lines[1]), "script": json.loads(lines[1])["script"] + "\n# edited"})
    else:
        lines = damage(lines)
    bad = _write(tmp_path / "bad.jsonl", lines)
    db_path = tmp_path / "target.db"
    with Database(db_path) as db:
        with pytest.raises(LogError, match=message):
            import_log(db, bad)
    assert count(db_path) == 0
    assert main(["cache", "import", str(bad), "--db", str(db_path)]) == 2


def test_missing_empty_and_binary_logs_are_clear_errors(tmp_path):
    with Database(tmp_path / "t.db") as db:
        with pytest.raises(LogError, match="cannot read the log"):
            import_log(db, tmp_path / "nope.jsonl")
        with pytest.raises(LogError, match="is empty"):
            import_log(db, _write(tmp_path / "empty.jsonl", []))
        (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
        with pytest.raises(LogError, match="not UTF-8"):
            import_log(db, tmp_path / "bin.jsonl")


def test_cache_commands_list_count_and_prune(tuned, tmp_path, capsys):
    result, _, log = tuned
    db_path = str(tmp_path / "cli.db")
    assert main(["cache", "import", str(log), str(log), "--db", db_path]) == 0
    out = capsys.readouterr().out
    assert "4 added" in out and "0 added, 4 already present" in out
    assert main(["cache", "ls", "--db", db_path]) == 0
    listing = capsys.readouterr().out
    assert result.workload.key in listing and "(this device)" in listing
    assert main(["cache", "stats", "--db", db_path]) == 0
    assert "trials: 4 (4 ok)" in capsys.readouterr().out
    assert main(["cache", "prune", "--keep", "2", "--db", db_path]) == 0
    with Database(db_path) as db:
        kept = db.trials()
        assert len(kept) == 2
        assert db.best(result.workload.key, result.target.key).uid == result.best.uid
    exported = tmp_path / "out.jsonl"
    assert main(["cache", "export", "--out", str(exported), "--workload", result.workload.name, "--db", db_path]) == 0
    assert sum(1 for x in exported.read_text().splitlines() if '"type": "trial"' in x) == 2
    assert main(["cache", "export", "--out", str(exported), "--workload", "nothing", "--db", db_path]) == 2
    assert main(["cache", "prune", "--keep", "0", "--db", db_path]) == 2


def test_the_shipped_demo_log_imports_and_applies_on_its_own_hardware_only(tmp_path):
    """cache/ ships a log of the demo workload tuned on the CI machine type (README: "Reuse a shipped log")."""
    from pathlib import Path

    shipped = sorted((Path(__file__).parents[1] / "cache").glob("demo-*.jsonl"))
    assert shipped, "cache/ should ship the demo's tuning log"
    demo = ops.make("matmul", "256,256,256")
    with Database(tmp_path / "fleet.db") as db:
        summary = import_log(db, shipped[0])
        assert summary.added == summary.trials >= 32
        target_keys = {row["target_key"] for row in db.summary() if row["workload_key"] == demo.key}
    assert len(target_keys) == 1, "the log's workload key must be the one autotune computes for the demo"
    mod = autotune.apply_best(demo, database=tmp_path / "fleet.db")
    assert (mod is not None) == (resolve_target("llvm").key in target_keys)


def test_exact_reuse_refuses_a_log_of_another_device_and_says_what_differs(tuned, tmp_path, capsys):
    result, _, _ = tuned
    here, device, log = log_of_other_device(tuned, tmp_path)
    fleet = tmp_path / "fleet.db"
    with Database(fleet) as db:
        with pytest.raises(LogError, match=r"line 4: the trial was measured on another device .*ISA: it needs "
                                           r"abm.* which this CPU lacks; model_name: '.*' here, 'Another CPU' there"):
            import_log(db, log, expect_target=here.__class__(here.target, {**here.fingerprint, "isa": []}, "x" * 20))
    assert main(["cache", "import", "--exact", str(log), "--db", str(fleet)]) == 2
    assert "measured on another device" in capsys.readouterr().err
    assert count(fleet) == 0
    assert main(["cache", "import", str(log), "--db", str(fleet)]) == 0  # without --exact it merges
    with pytest.raises(autotune.TargetError, match=r"no record for this device .* differs in: .*model_name"):
        autotune.apply_best(result.workload, target=here, database=fleet, strict=True)
    assert main(["best", "matmul", "--shape", SHAPE, "--db", str(fleet)]) == 1
    assert "'Another CPU' there" in capsys.readouterr().out


def test_a_crafted_workload_script_is_never_run_and_its_json_must_match_its_key(tuned, tmp_path):
    """TVMScript parsing evaluates Python: a log's script is never parsed; its TVM JSON is read in a worker."""
    _, _, log = tuned
    lines = log.read_text().splitlines()
    marker = tmp_path / "pwned"
    workload = json.loads(lines[1])
    evil = workload["script"].replace('T.func_attr({', f'T.func_attr({{"x": __import__("os").system("touch {marker}"), ', 1)
    assert evil != workload["script"]
    import hashlib

    evil_key = hashlib.sha256(evil.encode()).hexdigest()[:20]  # an attacker can make key and script agree
    lines[1] = json.dumps({**workload, "script": evil, "key": evil_key})
    lines[3:] = [json.dumps({**json.loads(x), "workload_key": evil_key}) for x in lines[3:]]
    bad = _write(tmp_path / "evil.jsonl", lines)
    with Database(tmp_path / "t.db") as db:
        with pytest.raises(LogError, match=r"line 2: the workload's TVM JSON is another function"):
            import_log(db, bad)
        assert db.stats()["trials"] == 0
    assert not marker.exists()
    # TVM JSON that TVM cannot read is refused with its line, and a version-1 log (TVMScript only) too.
    lines = log.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "mod_json": '{"root": 1, "nodes": [{"type_key": "NoSuchNode"}]}'})
    with Database(tmp_path / "t.db") as db:
        with pytest.raises(LogError, match=r"line 2: the workload's TVM JSON (cannot be read|crashed TVM)"):
            import_log(db, _write(tmp_path / "garbage.jsonl", lines))
        old = [json.dumps({**json.loads(log.read_text().splitlines()[0]), "version": 1})]
        with pytest.raises(LogError, match=r"line 1: log format 1 carries workloads as TVMScript only"):
            import_log(db, _write(tmp_path / "v1.jsonl", old + log.read_text().splitlines()[1:]))


def test_a_trace_that_does_not_replay_is_dropped_from_a_trial_with_decisions(tuned, tmp_path):
    result, _, log = tuned
    lines = log.read_text().splitlines()
    trial = json.loads(lines[4])
    lines[4] = json.dumps({**trial, "trace": [[["GetSBlock", [], ["no_such_block", "main"], ["b0"]]], []]})
    with Database(tmp_path / "t.db") as db:
        assert import_log(db, _write(tmp_path / "t.jsonl", lines)).added == 4
        kept = next(r for r in db.trials() if r.uid == trial["uid"])
        assert kept.trace is None and kept.decisions == trial["decisions"]


def test_a_workload_that_crashes_tvm_is_reported_not_fatal(tuned, tmp_path):
    """tests/data/crashing_module.json: a mutated module JSON that segfaults TVM's printer (found by fuzzing)."""
    from pathlib import Path

    crashing = (Path(__file__).parent / "data" / "crashing_module.json").read_text()
    _, _, log = tuned
    lines = log.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "mod_json": crashing})
    with Database(tmp_path / "t.db") as db:
        with pytest.raises(LogError, match=r"line 2: reading the workload's TVM JSON crashed TVM"):
            import_log(db, _write(tmp_path / "crash.jsonl", lines))
        assert db.stats()["trials"] == 0
        assert import_log(db, log).added == 4  # the checker worker came back for the next import
