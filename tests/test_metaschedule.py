"""MetaSchedule JSON database interop: export ours, read it with MetaSchedule, import it back.

No MetaSchedule tuning run (seconds per trial): records come from a 3-trial run of our tuner
(shared by the module) or are built by hand with MetaSchedule's own JSONDatabase.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tvm
from tvm import s_tir
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.database import JSONDatabase, TuningRecord
from tvm.s_tir.meta_schedule.tune_context import _normalize_mod
from tvm.script import tirx as T

import autotune
from autotune import ops
from autotune.database import Database
from autotune.errors import DatabaseError
from autotune.metaschedule import RECORD_FILE, WORKLOAD_FILE, export_metaschedule, import_metaschedule
from autotune.records import Status
from autotune.tuner import apply_record


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A database with 3 trials of a small matmul from our tuner, and its MetaSchedule export."""
    root = tmp_path_factory.mktemp("ms")
    workload = ops.make("matmul", "32,32,32")
    result = autotune.tune(workload, trials=3, database=root / "ours.db", seed=0)
    written = export_metaschedule(root / "ours.db", root / "ms")
    return root, workload, result, written


def _files(directory):
    return directory / WORKLOAD_FILE, directory / RECORD_FILE


def _lowest_recorded(root, result):
    """The trial of ours.db with the lowest recorded latency: the best once exported to MetaSchedule and
    back, since MetaSchedule's records carry run times, not our finals' ranking (which may put another first)."""
    with Database(root / "ours.db") as db:
        return min((r for r in db.trials(result.workload.key, result.target.key) if r.status is Status.OK),
                   key=lambda r: (r.latency, r.id))


@T.prim_func(s_tir=True)
def _matmul16(a: T.handle, b: T.handle, c: T.handle):
    T.func_attr({"tirx.noalias": True})
    A = T.match_buffer(a, (16, 16), "float32")
    B = T.match_buffer(b, (16, 16), "float32")
    C = T.match_buffer(c, (16, 16), "float32")
    for i, j, k in T.grid(16, 16, 16):
        with T.sblock("C"):
            vi, vj, vk = T.axis.remap("SSR", [i, j, k])
            with T.init():
                C[vi, vj] = T.float32(0)
            C[vi, vj] = C[vi, vj] + A[vi, vk] * B[vk, vj]


def _hand_built(directory, run_secs=((1.5e-5, 1.4e-5), None, (1e10,))):
    """A MetaSchedule database holding _matmul16 under the name "foo", scheduled with two splits
    (one of them by a sampled tile, whose decision the trace carries)."""
    mod = tvm.IRModule({"foo": _matmul16.with_attr("global_symbol", "foo")})
    sch = s_tir.Schedule(mod)
    i, j, _ = sch.get_loops(sch.get_sblock("C", func_name="foo"))
    io, ii = sch.split(i, [None, 4])
    jo, ji = sch.split(j, sch.sample_perfect_tile(j, n=2, decision=[2, 8]))  # as MetaSchedule's traces do
    sch.reorder(io, jo, ii, ji)
    ms_db = JSONDatabase(work_dir=str(directory))
    workload = ms_db.commit_workload(mod)
    target, args = autotune.resolve_target("llvm").target, ArgInfo.from_prim_func(mod["foo"])
    for secs in run_secs:
        record = TuningRecord(sch.trace, workload, list(secs) if secs else None, target, args)
        ms_db.commit_tuning_record(record)
    return sch.mod["foo"].with_attr("global_symbol", "main")


def test_export_is_read_by_metaschedule_with_our_records(tuned):
    root, workload, result, written = tuned
    ours = [r for r in result.trials if r.status is Status.OK]
    assert written == len(ours) == 3
    ms_db = JSONDatabase(*map(str, _files(root / "ms")), allow_missing=False)
    records = ms_db.get_all_tuning_records()
    assert sorted(tuple(float(x.value) for x in r.run_secs) for r in records) == sorted(r.latencies for r in ours)
    # MetaSchedule picks one of our records by its own rule (mean run time; it skips records
    # with an empty trace); its module is that record's schedule.
    target = autotune.resolve_target("llvm").target
    mod = ms_db.query_ir_module(result.workload.mod, target, "main")
    config = autotune.load_space_config("cpu")
    assert mod.script() in {apply_record(result.workload, r, config).script() for r in ours}
    # MetaSchedule normalizes a PrimFunc the way it is tuned; it finds our workload under that form too.
    assert ms_db.has_workload(_normalize_mod(workload.mod["main"]))


def test_round_trip_gives_the_same_best_schedule_and_latency(tuned, tmp_path):
    root, workload, result, _ = tuned
    summary = import_metaschedule(*_files(root / "ms"), tmp_path / "back.db", "llvm")
    assert (summary.read, summary.added, summary.skipped, summary.rejected) == (3, 3, 0, ())
    assert summary.workloads == (result.workload.key,)
    lowest = _lowest_recorded(root, result)
    back = autotune.apply_best(workload, database=tmp_path / "back.db")
    tvm.ir.assert_structural_equal(back, apply_record(result.workload, lowest, autotune.load_space_config("cpu")))
    with Database(tmp_path / "back.db") as db:
        best = db.best(result.workload.key, result.target.key)
        assert best.latency == lowest.latency
        assert best.decisions == {} and best.origin == f"metaschedule:{RECORD_FILE}"
        assert db.workload_row(result.workload.key)["script"] == result.workload.script
    again = import_metaschedule(*_files(root / "ms"), tmp_path / "back.db", "llvm")
    assert (again.read, again.added, again.skipped) == (3, 0, 3)
    # Imported records carry only a trace; exported again, they give MetaSchedule the same files.
    assert export_metaschedule(tmp_path / "back.db", tmp_path / "ms2") == 3
    for original, exported in zip(_files(root / "ms"), _files(tmp_path / "ms2")):
        assert exported.read_text() == original.read_text()


def test_export_refuses_to_append_to_an_existing_database_unless_told(tuned):
    root, _, _, written = tuned
    with pytest.raises(DatabaseError, match="already holds a MetaSchedule database"):
        export_metaschedule(root / "ours.db", root / "ms")
    assert export_metaschedule(root / "ours.db", root / "ms", overwrite=True) == written
    assert len(_files(root / "ms")[1].read_text().splitlines()) == written


def test_export_of_a_target_without_records_is_an_error(tuned, tmp_path):
    root, *_ = tuned
    with pytest.raises(DatabaseError, match="no records of target"):
        export_metaschedule(root / "ours.db", tmp_path / "ms", {"kind": "llvm", "num-cores": 1, "mcpu": "x86-64"})


def test_a_hand_built_record_under_another_function_name_imports_and_applies(tmp_path):
    scheduled = _hand_built(tmp_path)
    summary = import_metaschedule(*_files(tmp_path), tmp_path / "t.db")
    assert (summary.read, summary.added, summary.rejected) == (3, 3, ())
    # The key is the one our tuner gives the same PrimFunc, so apply_best finds the record.
    assert summary.workloads == (autotune.as_workload(_matmul16).key,)
    tvm.ir.assert_structural_equal(autotune.apply_best(_matmul16, database=tmp_path / "t.db")["main"], scheduled)
    with Database(tmp_path / "t.db") as db:
        trials = db.trials()
        assert [t.status for t in trials] == [Status.OK, Status.RUN_ERROR, Status.RUN_ERROR]
        assert trials[0].latencies == (1.5e-5, 1.4e-5) and trials[1].latencies == ()
        assert trials[0].trace[0][0] == ["GetSBlock", [], ["C", "main"], ["b0"]]
        assert [d for _, d in trials[0].trace[1]] == [[2, 8]]  # the sampled tile's decision
        assert len({t.candidate_key for t in trials}) == 1 and len({t.uid for t in trials}) == 3


def test_workload_keys_match_what_metaschedule_tunes(tmp_path):
    """MetaSchedule tunes `_normalize_mod(func)`: our key of that module is the key of func itself."""
    for func in (ops.make("dense", "8,16,32", bias="true").mod["main"], _matmul16):
        assert autotune.as_workload(_normalize_mod(func)).key == autotune.as_workload(func).key


def test_a_trace_that_does_not_apply_is_rejected_or_an_error_when_strict(tmp_path):
    _hand_built(tmp_path, run_secs=((1e-5,), (2e-5,)))
    records = _files(tmp_path)[1]
    lines = records.read_text().splitlines()
    records.write_text(lines[0] + "\n" + lines[1].replace('["C","foo"]', '["X","foo"]') + "\n")
    summary = import_metaschedule(*_files(tmp_path), tmp_path / "t.db")
    assert (summary.read, summary.added) == (2, 1)
    assert len(summary.rejected) == 1 and "line 2" in summary.rejected[0]
    assert "does not apply" in summary.rejected[0] and "Cannot find a block" in summary.rejected[0]
    with pytest.raises(DatabaseError, match=r"line 2: the stored trace does not apply"):
        import_metaschedule(*_files(tmp_path), tmp_path / "strict.db", strict=True)


def test_missing_files_and_malformed_lines_are_one_line_errors_naming_the_file(tmp_path):
    _hand_built(tmp_path, run_secs=((1e-5,),))
    workloads, records = _files(tmp_path)
    with pytest.raises(DatabaseError, match=r"nope\.json: no such file") as err:
        import_metaschedule(tmp_path / "nope.json", records, tmp_path / "t.db")
    assert "\n" not in str(err.value)
    good = records.read_text()
    records.write_text(good + "[0, [garbage\n")
    with pytest.raises(DatabaseError, match=rf"{RECORD_FILE} line 2: not valid JSON"):
        import_metaschedule(workloads, records, tmp_path / "t.db")
    records.write_text(good.replace("[0,", "[7,", 1))
    with pytest.raises(DatabaseError, match="line 1: workload index 7 but the workload file has 1"):
        import_metaschedule(workloads, records, tmp_path / "t.db")
    records.write_text(good)
    workloads.write_text(json.dumps(["123", "not base64"]) + "\n")
    with pytest.raises(DatabaseError, match=rf"{WORKLOAD_FILE} line 1: not a MetaSchedule workload"):
        import_metaschedule(workloads, records, tmp_path / "t.db")
    with Database(tmp_path / "t.db") as db:
        assert db.trials() == []  # nothing is written unless both files parse


def test_cli_moves_records_to_metaschedule_and_back(tuned, tmp_path, capsys):
    from autotune.cli import main

    root, workload, result, _ = tuned
    out = tmp_path / "ms"
    assert main(["cache", "export-ms", str(out), "--db", str(root / "ours.db")]) == 0
    assert "wrote 3 records" in capsys.readouterr().out
    assert main(["cache", "export-ms", str(out), "--db", str(root / "ours.db")]) == 2  # no silent append
    back = tmp_path / "back.db"
    assert main(["cache", "import-ms", str(out), "--db", str(back)]) == 0
    assert "3 added" in capsys.readouterr().out
    assert main(["cache", "import-ms", str(tmp_path / "nowhere"), "--db", str(back)]) == 2
    expected = apply_record(result.workload, _lowest_recorded(root, result), autotune.load_space_config("cpu"))
    tvm.ir.assert_structural_equal(autotune.apply_best(workload, database=back), expected)


def test_a_metaschedule_database_that_crashes_tvm_is_an_error_not_a_crash(tmp_path):
    import base64
    import struct

    crashing = (Path(__file__).parent / "data" / "crashing_module.json").read_bytes()
    payload = base64.b64encode(struct.pack("<Q", len(crashing)) + crashing).decode()
    folder = tmp_path / "ms"
    folder.mkdir()
    (folder / WORKLOAD_FILE).write_text(json.dumps(["0", payload]) + "\n")
    (folder / RECORD_FILE).write_text(json.dumps([0, [[[], []], [0.001], {"kind": "llvm"}, []]]) + "\n")
    with pytest.raises(DatabaseError, match="crashed TVM"):
        import_metaschedule(*_files(folder), tmp_path / "t.db", "llvm")
    with Database(tmp_path / "t.db") as db:
        assert db.stats()["trials"] == 0
