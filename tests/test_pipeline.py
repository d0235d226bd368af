"""autotune inside compilation pipelines: a small PyTorch model, tuned per fused kernel, built and run."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import relax, te

import autotune
from autotune.database import Database
from autotune.errors import AutotuneError
from autotune.pipeline import (
    IS_SCHEDULED,
    AutotuneDatabase,
    apply_database,
    compile,
    prepare,
    scan_functions,
    tunable_functions,
)

torch = pytest.importorskip("torch")

FUSED = {"fused_matmul_add_relu", "fused_matmul1_add1"}


@pytest.fixture(scope="module")
def model():
    """Linear(32, 64) → ReLU → Linear(64, 16) on a batch of 4, imported into Relax, with PyTorch's answer."""
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)).eval()
    x = torch.randn(4, 32)
    with torch.no_grad():
        expected = net(x).numpy()
    mod = from_exported_program(torch.export.export(net, (x,)))
    return mod, x.numpy(), expected


@pytest.fixture(scope="module")
def tuned_db(model, tmp_path_factory):
    """A database holding 2 trials of each fused kernel of the model."""
    path = tmp_path_factory.mktemp("pipeline") / "tuning.db"
    for work in {w.key: w for w in tunable_functions(model[0]).values()}.values():
        result = autotune.tune(work, target="llvm", trials=2, database=path, seed=0)
        assert result.best is not None
    return path


def run_relax(ex, x: np.ndarray) -> np.ndarray:
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    return out[0].numpy()


def prim_funcs(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_tunable_functions_are_the_fused_kernels(model):
    mod = model[0]
    works = tunable_functions(mod)
    assert set(works) == FUSED
    assert len({w.key for w in works.values()}) == 2
    assert works["fused_matmul_add_relu"].flops == 2 * 4 * 32 * 64 + 2 * 4 * 64  # matmul, bias, relu
    # prepare is not idempotent (a second run adds op_pattern), but the keys are
    again = tunable_functions(prepare(prepare(mod)))
    assert {n: w.key for n, w in again.items()} == {n: w.key for n, w in works.items()}


def test_identical_functions_share_a_key_and_symbolic_ones_are_skipped(model):
    func = prepare(model[0])["fused_matmul1_add1"]
    n = te.var("n")
    a = te.placeholder((n,), name="A")
    symbolic = te.create_prim_func([a, te.compute((n,), lambda i: a[i] + 1.0, name="B")])
    scan = scan_functions(tvm.IRModule({"k1": func, "k2": func, "dyn": symbolic}))
    assert set(scan.tunable) == {"k1", "k2"}
    assert scan.tunable["k1"].key == scan.tunable["k2"].key
    assert "symbolic" in scan.skipped["dyn"]


def test_compile_uses_the_tuned_schedules(model, tuned_db):
    mod, x, expected = model
    prepared = prepare(mod)
    scheduled, report = apply_database(prepared, "llvm", tuned_db)
    assert set(report.applied) == FUSED and not report.untuned and not report.skipped
    for name, func in prim_funcs(scheduled).items():
        assert func.attrs[IS_SCHEDULED]
        assert "global_symbol" not in func.attrs and func.attrs["tirx.noalias"]  # original attrs kept
        assert not tvm_ffi.structural_equal(func, prepared[name])
    assert scheduled.get_global_var("main").same_as(prepared.get_global_var("main"))
    # already scheduled functions are left alone
    assert not apply_database(scheduled, "llvm", tuned_db)[1].applied
    np.testing.assert_allclose(run_relax(compile(mod, database=tuned_db), x), expected, rtol=1e-4, atol=1e-5)


def test_empty_database_applies_nothing_and_still_compiles(model, tmp_path):
    mod, x, expected = model
    prepared = prepare(mod)
    scheduled, report = apply_database(prepared, "llvm", tmp_path / "empty.db")
    assert not report.applied and set(report.untuned) == FUSED
    for name, func in prim_funcs(scheduled).items():
        assert tvm_ffi.structural_equal(func, prepared[name])
    ex = compile(mod, "llvm", tmp_path / "empty.db")
    np.testing.assert_allclose(run_relax(ex, x), expected, rtol=1e-4, atol=1e-5)


def test_compile_a_prim_func(model, tuned_db):
    func = prepare(model[0])["fused_matmul_add_relu"]
    rng = np.random.default_rng(0)
    x, w, b = (rng.uniform(-1, 1, s).astype("float32") for s in ((4, 32), (32, 64), (64,)))
    args = [tvm.runtime.tensor(v) for v in (x, w, b, np.zeros((4, 64), "float32"))]
    compile(func, database=tuned_db)["main"](*args)
    np.testing.assert_allclose(args[-1].numpy(), np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-5)


def test_metaschedule_apply_database_reads_our_cache(model, tuned_db):
    mod, x, expected = model
    prepared = prepare(mod)
    ours, _ = apply_database(prepared, "llvm", tuned_db)
    hw = autotune.resolve_target("llvm")
    database = AutotuneDatabase(tuned_db, hw)
    try:
        with hw.target, database:
            theirs = relax.transform.MetaScheduleApplyDatabase()(prepared)
            zero = relax.get_pipeline("zero")(mod)  # the zero pipeline applies the current database itself
        for name, func in prim_funcs(ours).items():
            assert tvm_ffi.structural_equal(prim_funcs(theirs)[name], func)
            assert tvm_ffi.structural_equal(prim_funcs(zero)[name], func)
        np.testing.assert_allclose(run_relax(tvm.compile(zero, target=hw.target), x), expected, rtol=1e-4, atol=1e-5)
        assert len(database) == 4 and len(database.get_all_tuning_records()) == 4
        query = tvm.IRModule({"main": prepared["fused_matmul1_add1"]})
        record = database.query_tuning_record(query, hw.target, "fused_matmul1_add1")
        assert record is not None and record.run_secs[0] > 0
        with pytest.raises((AutotuneError, RuntimeError), match="read-only"):  # RuntimeError once through C++
            database.commit_tuning_record(record)
    finally:
        database.close()


def test_trace_only_records_replay_on_both_roads(model, tuned_db, tmp_path):
    """Records imported from MetaSchedule carry a trace and no decisions; both roads replay the trace."""
    prepared = prepare(model[0])
    ours, _ = apply_database(prepared, "llvm", tuned_db)
    hw = autotune.resolve_target("llvm")
    work = tunable_functions(prepared)["fused_matmul1_add1"]
    with Database(tuned_db) as source, Database(tmp_path / "traces.db") as db:
        best = source.best(work.key, hw.key)
        db.commit_workload(work)
        db.commit_target(hw.key, hw.target_json(), hw.fingerprint)
        db.commit_trial(dataclasses.replace(best, decisions={}, uid="imported"))
        scheduled, report = apply_database(prepared, hw, db)
        assert report.applied == ("fused_matmul1_add1",) and report.untuned == ("fused_matmul_add_relu",)
        assert tvm_ffi.structural_equal(scheduled["fused_matmul1_add1"], ours["fused_matmul1_add1"])
        with hw.target, AutotuneDatabase(db, hw):
            theirs = relax.transform.MetaScheduleApplyDatabase()(prepared)
        assert tvm_ffi.structural_equal(theirs["fused_matmul1_add1"], ours["fused_matmul1_add1"])
        assert tvm_ffi.structural_equal(theirs["fused_matmul_add_relu"], prepared["fused_matmul_add_relu"])


def test_pipeline_does_not_import_tensor_intrin(tmp_path):
    """tvm.s_tir.tensor_intrin costs ~20 s to import; neither road in may need it."""
    code = f"""
import sys, tvm
from tvm import relax
from autotune.pipeline import AutotuneDatabase, compile, prepare
bb = relax.BlockBuilder()
x = relax.Var("x", relax.TensorType((4, 8), "float32"))
with bb.function("main", [x]):
    with bb.dataflow():
        y = bb.emit_output(bb.emit(relax.op.nn.relu(relax.op.matmul(x, relax.op.permute_dims(x)))))
    bb.emit_func_output(y)
compile(bb.get(), database={str(tmp_path / 'db')!r})
with tvm.target.Target("llvm"), AutotuneDatabase({str(tmp_path / 'db')!r}):
    relax.transform.MetaScheduleApplyDatabase()(prepare(bb.get()))
print(any(m.startswith("tvm.s_tir.tensor_intrin") for m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_apply_best_takes_a_whole_relax_model(model, tuned_db):
    """autotune.apply_best on a Relax module = prepare + apply_database (the public one-call road)."""
    mod = model[0]
    whole = autotune.apply_best(mod, database=tuned_db)
    expected, _ = apply_database(prepare(mod), "llvm", tuned_db)
    assert set(prim_funcs(whole)) == FUSED
    for name, func in prim_funcs(whole).items():
        assert tvm_ffi.structural_equal(func, prim_funcs(expected)[name])
        assert func.attrs[IS_SCHEDULED]
