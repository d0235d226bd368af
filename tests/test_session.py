"""Whole models: task extraction, task schedulers, sessions that survive kill -9 and resume."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import autotune
from autotune.cli import main
from autotune.database import Database
from autotune.errors import BudgetError, ModelError
from autotune.model import extract_tasks, load_model
from autotune.scheduler import GradientScheduler, RoundRobin, TaskState
from autotune.session import parse_duration, session_progress, tune_model

torch = pytest.importorskip("torch")

MLP_SOURCE = """
import torch
torch.manual_seed(0)
class MLP(torch.nn.Module):
    '''Two identical hidden layers (one task of weight 2) and an output layer.'''
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.out = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 16)
    def forward(self, x):
        return self.out(torch.relu(self.l2(torch.relu(self.l1(x)))))
net, x = MLP().eval(), torch.randn(4, 32)
"""


def mlp():
    scope: dict = {}
    exec(MLP_SOURCE, scope)
    return scope["net"], scope["x"]


def onnx_model(path):
    """A Gemm → Relu → Gemm graph written with onnx.helper (no exporter involved)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((16, 24)).astype("float32"), rng.standard_normal(24).astype("float32")
    w2, b2 = rng.standard_normal((24, 8)).astype("float32"), rng.standard_normal(8).astype("float32")
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


# -- models in ------------------------------------------------------------------------------


def test_identical_layers_are_one_task_weighted_by_their_calls():
    net, x = mlp()
    extracted = extract_tasks(net, (x,))
    weights = {t.name: t.weight for t in extracted.tasks}
    assert weights == {"fused_matmul_add_relu": 2, "fused_matmul1_add1": 1}
    assert extracted.tasks[0].name == "fused_matmul_add_relu"  # heaviest (weight × FLOPs) first


def test_models_from_onnx_and_pt2_files_and_clear_errors(tmp_path):
    tasks = extract_tasks(onnx_model(tmp_path / "mlp.onnx")).tasks
    assert len(tasks) == 2 and all(t.weight == 1 for t in tasks)
    net, x = mlp()
    torch.export.save(torch.export.export(net, (x,)), str(tmp_path / "mlp.pt2"))
    assert {t.weight for t in extract_tasks(tmp_path / "mlp.pt2").tasks} == {2, 1}
    with pytest.raises(ModelError, match="needs example_inputs"):
        load_model(net)
    with pytest.raises(ModelError, match="no model file"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_model(tmp_path / "bad.onnx")
    with pytest.raises(ModelError, match="cannot load a model from a list"):
        load_model([1, 2])


def test_fast_math_sessions_use_polynomials_for_softmax_and_tanh_and_stay_correct(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Softmax(dim=-1)).eval()
    x = torch.randn(4, 32)

    def script(fast_math):
        return "".join(t.workload.script for t in extract_tasks(net, (x,), fast_math=fast_math).tasks)

    assert "T.exp(" in script(False) and "T.tanh(" in script(False)
    assert "T.exp(" not in script(True) and "T.tanh(" not in script(True)
    from autotune.evaluate import evaluate_session

    db = tmp_path / "fast.db"
    session = tune_model(net, example_inputs=(x,), trials=4, batch_size=2, database=db, seed=0,
                         strategy="random", fast_math=True)
    report = evaluate_session(session.session_id, db, reference=net)  # against PyTorch's exact softmax and tanh
    assert report.fast_math and report.correct and report.max_error_vs_torch < 1e-5


# -- schedulers -------------------------------------------------------------------------------


def test_gradient_scheduler_warms_up_then_follows_the_largest_gain():
    states = [TaskState(weight=1), TaskState(weight=3), TaskState(weight=1)]
    scheduler = GradientScheduler()
    order = []
    for index, best in ((0, 1e-3), (1, 1e-3), (2, 1e-3)):  # each task's warm-up batch
        assert scheduler.pick(states) == index
        states[index].record_batch(8, best)
        order.append(index)
    assert scheduler.pick(states) == 1  # same latency, three times the weight
    states[1].exhausted = True
    states[0].record_batch(8, 0.5e-3)  # task 0 keeps improving, task 2 does not
    for _ in range(3):
        states[2].record_batch(8, 1e-3)
    assert scheduler.stalled(states[2]) and not scheduler.stalled(states[0])
    assert scheduler.pick(states) == 0
    states[0].exhausted = True
    assert scheduler.pick(states) == 2  # every other task is done: stalled ones are tuned again
    states[2].exhausted = True
    assert scheduler.pick(states) is None


def test_round_robin_takes_turns_and_skips_exhausted_tasks():
    states = [TaskState(1), TaskState(1), TaskState(1)]
    scheduler = RoundRobin()
    assert [scheduler.pick(states) for _ in range(4)] == [0, 1, 2, 0]
    states[1].exhausted = True
    assert [scheduler.pick(states) for _ in range(3)] == [2, 0, 2]


# -- sessions ---------------------------------------------------------------------------------


def test_a_session_killed_with_sigkill_resumes_without_losing_or_repeating_trials(tmp_path):
    db_path = tmp_path / "tuning.db"
    budget = 20
    script = MLP_SOURCE + textwrap.dedent(f"""
        from autotune.session import tune_model
        tune_model(net, example_inputs=(x,), trials={budget}, database={str(db_path)!r}, batch_size=4, seed=0,
                   strategy="random")
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    committed = _wait_for_trials(db_path, at_least=6, process=child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with Database(db_path) as db:
        before = {r.uid for r in db.trials()}
        assert len(before) >= committed and session_progress(db, 1).status == "interrupted"
    assert len(before) < budget
    final = tune_model(session=1, database=db_path)
    assert final.status == "finished" and final.trials_done == budget
    with Database(db_path) as db:
        trials = db.trials()
        assert before <= {r.uid for r in trials}  # nothing committed was lost
        assert len(trials) == budget  # the budget counts what was done before the kill
        keys = [(r.workload_key, r.candidate_key) for r in trials]
        assert len(keys) == len(set(keys))  # nothing measured twice
        assert {r.session_id for r in trials} == {1}
    assert sqlite3.connect(db_path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def _wait_for_trials(db_path, at_least: int, process: subprocess.Popen, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the session ended early: {process.stderr.read().decode()[-2000:]}")
        if db_path.exists():
            try:
                n = sqlite3.connect(db_path, timeout=5).execute("SELECT count(*) FROM trials").fetchone()[0]
            except sqlite3.OperationalError:  # schema not created yet
                n = 0
            if n >= at_least:
                return n
        time.sleep(0.2)
    process.kill()
    raise AssertionError("no trials were committed in time")


def test_time_budget_stops_the_session_and_resume_extends_it(tmp_path):
    net, x = mlp()
    db_path = tmp_path / "t.db"
    start = time.perf_counter()
    first = tune_model(net, example_inputs=(x,), time_budget="2s", database=db_path, batch_size=2, seed=1,
                       strategy="random")
    assert first.status == "finished" and first.elapsed >= 2 and time.perf_counter() - start < 60
    done = first.trials_done
    more = tune_model(session=first.session_id, trials=done + 3, database=db_path)
    assert more.trials_done == done + 3
    assert more.estimated_latency == pytest.approx(sum(t.weight * t.best_latency for t in more.tasks))


def test_session_input_errors_are_clear(tmp_path):
    net, x = mlp()
    db_path = tmp_path / "e.db"
    with pytest.raises(BudgetError, match="needs a budget"):
        tune_model(net, example_inputs=(x,), database=db_path)
    with pytest.raises(BudgetError, match="cannot read the time budget"):
        tune_model(net, example_inputs=(x,), time_budget="soon", database=db_path)
    with pytest.raises(BudgetError, match="unknown task scheduler"):
        tune_model(net, example_inputs=(x,), trials=2, scheduler="fifo", database=db_path)
    with pytest.raises(ModelError, match="no session 7"):
        tune_model(session=7, database=db_path)
    assert parse_duration("1h30m") == 5400 and parse_duration(90) == 90


def test_cli_tunes_an_onnx_model_lists_and_resumes_its_session(tmp_path, capsys):
    model = onnx_model(tmp_path / "mlp.onnx")
    db = str(tmp_path / "cli.db")
    assert main(["tune-model", str(model), "--trials", "4", "--batch-size", "2", "--db", db, "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "session 1 finished" in out and "estimated model latency" in out and "share" in out
    assert "untuned TVM" in out and "outputs match" in out  # the model is built and checked at the end
    assert main(["sessions", "--db", db]) == 0
    listing = capsys.readouterr().out
    assert "mlp" in listing and "finished" in listing and "4/4" in listing
    assert main(["resume", "1", "--trials", "6", "--db", db, "--no-evaluate"]) == 0
    assert "6/6 trials" in capsys.readouterr().out
    assert main(["report", "1", "--out", str(tmp_path / "report"), "--db", db]) == 0
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "| fused_matmul_add_relu |" in summary or "| fused_" in summary
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert len(pngs) == 4 and all((tmp_path / "report" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert main(["tune-model", str(model), "--db", db]) == 2  # no budget
    assert main(["resume", "9", "--trials", "2", "--db", db]) == 2
    assert (tmp_path / "sessions" / "1.log").read_text().count("finished") >= 2


def test_the_tuned_model_is_built_timed_and_checked_against_pytorch(tmp_path, capsys):
    from autotune.evaluate import evaluate_session

    net, x = mlp()
    program = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(net, (x,)), str(program))
    db = tmp_path / "m.db"
    session = tune_model(program, trials=6, batch_size=3, database=db, seed=0, strategy="random")
    report = evaluate_session(session.session_id, db)  # the .pt2 source is the PyTorch reference
    assert report.correct and report.max_error_vs_torch is not None and report.max_error_vs_torch < 1e-4
    assert set(report.applied) == {"fused_matmul_add_relu", "fused_matmul1_add1"} and not report.untuned_kernels
    assert report.tuned_latency > 0 and report.untuned_latency > 0 and report.torch_latency > 0
    out = tmp_path / "model.so"
    assert main(["compile-model", str(session.session_id), "--db", str(db), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PyTorch eager" in printed and "outputs match" in printed and out.stat().st_size > 0
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(out)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy()))[0].numpy()
    np.testing.assert_allclose(got, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_ctrl_c_stops_the_session_with_a_summary_and_it_resumes(tmp_path):
    model = onnx_model(tmp_path / "mlp.onnx")
    db = tmp_path / "c.db"
    command = [sys.executable, "-m", "autotune.cli", "tune-model", str(model), "--trials", "5000", "--batch-size", "2",
               "--db", str(db), "--no-evaluate", "--seed", "0"]
    # A terminal's Ctrl-C: the child gets SIGINT's default action even where this test runs with
    # SIGINT ignored (a shell's background job inherits SIG_IGN, and Python then keeps it).
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_trials(db, at_least=4, process=child)  # two batches: the table was printed at least once
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err[-2000:]
    assert "resume with: autotune resume 1" in err and "session 1 [running]" in out
    with Database(db) as database:
        progress = session_progress(database, 1)
        assert progress.status == "stopped" and 4 <= progress.trials_done < 5000
        statuses = {r.status for r in database.trials()}
    assert statuses == {autotune.Status.OK}  # the interrupt recorded no bogus crash
    assert main(["resume", "1", "--trials", str(progress.trials_done + 2), "--db", str(db), "--no-evaluate"]) == 0
