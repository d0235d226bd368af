"""Measurement isolation: generated code that crashes, hangs or computes wrong numbers is recorded
with its status, and the worker process that ran it is replaced, never the session."""

import time
from types import SimpleNamespace

import numpy as np
import pytest
import tvm
from tvm import te

from autotune.measure import WorkerDied, WorkerProcess
from autotune.records import Status
from autotune.target import resolve_target

N = 16


def _export(tmp_path, name, out_fn, reduce_extent=None):
    A = te.placeholder((N,), name="A")
    if reduce_extent:
        k = te.reduce_axis((0, reduce_extent), name="k")
        r = te.reduce_axis((0, reduce_extent), name="r")
        B = te.compute((N,), lambda i: te.sum(A[(i + k + r) % N], axis=[k, r]), name="B")
    else:
        B = te.compute((N,), lambda i: out_fn(A, i), name="B")
    lib = tvm.compile(te.create_prim_func([A, B]), target=resolve_target("llvm").target)
    path = str(tmp_path / f"{name}.so")
    lib.export_library(path)
    return path


@pytest.fixture
def arrays(tmp_path):
    a = np.arange(N, dtype="float32")
    path = str(tmp_path / "ref.npz")
    np.savez(path, arg0=a, arg1=a * 2.0)  # the reference computes B = 2 * A
    return path


def _request(lib, arrays):
    return {"job": "run", "lib_path": lib, "arrays_path": arrays, "outputs": [1],
            "repeat": 3, "min_repeat_ms": 1, "slow_secs": 0.2}


def test_crash_hang_and_wrong_result_are_statuses_and_the_worker_recovers(tmp_path, arrays):
    good = _export(tmp_path, "good", lambda A, i: A[i] * 2.0)
    wrong = _export(tmp_path, "wrong", lambda A, i: A[i] * 3.0)
    crash = _export(tmp_path, "crash", lambda A, i: A[i * 100_000_000])  # reads far outside A
    hang = _export(tmp_path, "hang", None, reduce_extent=1 << 16)  # 2**36 steps: runs for minutes
    worker = WorkerProcess("runner", threads=1)
    try:
        assert worker.call(_request(good, arrays), timeout=60)["status"] == "ok"
        answer = worker.call(_request(wrong, arrays), timeout=60)
        assert answer["status"] == Status.WRONG_RESULT.value and "differs" in answer["error"]
        with pytest.raises(WorkerDied) as crashed:
            worker.call(_request(crash, arrays), timeout=60)
        assert crashed.value.status is Status.RUN_ERROR and "SIGSEGV" in str(crashed.value)
        with pytest.raises(WorkerDied) as hung:
            worker.call(_request(hang, arrays), timeout=3)
        assert hung.value.status is Status.TIMEOUT
        answer = worker.call(_request(good, arrays), timeout=60)  # a fresh worker took over
        assert answer["status"] == "ok" and len(answer["latencies"]) == 3
    finally:
        worker.kill()


def test_a_failing_job_is_an_answer_not_a_dead_worker(tmp_path, arrays):
    worker = WorkerProcess("runner", threads=1)
    try:
        answer = worker.call(_request(str(tmp_path / "missing.so"), arrays), timeout=60)
        assert answer["ok"] is False and answer["error"]
        good = _export(tmp_path, "good", lambda A, i: A[i] * 2.0)
        assert worker.call(_request(good, arrays), timeout=60)["status"] == "ok"
    finally:
        worker.kill()


def test_a_clearly_slower_candidate_is_timed_once_and_still_checked(tmp_path, arrays):
    good = _export(tmp_path, "good", lambda A, i: A[i] * 2.0)
    wrong = _export(tmp_path, "wrong", lambda A, i: A[i] * 3.0)
    worker = WorkerProcess("runner", threads=1)
    try:
        def latencies(lib, screen_secs):
            answer = worker.call({**_request(lib, arrays), "screen_secs": screen_secs}, timeout=60)
            return answer["status"], answer["latencies"]

        status, timed = latencies(good, None)
        assert status == "ok" and len(timed) == 3
        status, screened = latencies(good, 1e-12)  # far slower than this "best": one repeat
        assert status == "ok" and len(screened) == 1 and screened[0] > 1e-12
        status, contender = latencies(good, 10.0)  # within the screen: every repeat
        assert status == "ok" and len(contender) == 3
        assert latencies(wrong, 1e-12)[0] == Status.WRONG_RESULT.value  # screened, still checked
    finally:
        worker.kill()


class _SleepingDouble(dict):
    """A stand-in for a loaded library: its "main" sleeps `seconds` and writes B = factor * A, counting its
    runs; its time_evaluator is counted, records its (number, min_repeat_ms), and reports `reports` seconds."""

    def __init__(self, seconds: float, factor: float = 2.0, reports: float = 0.5):
        super().__init__(main=self._main)
        self.seconds, self.factor, self.runs, self.evaluators = seconds, factor, 0, 0
        self.reports = reports  # what its time_evaluator reports
        self.loops: list[tuple[int, float]] = []  # each evaluator's (number, min_repeat_ms)

    def _main(self, a, b):
        time.sleep(self.seconds)
        b.copyfrom(a.numpy() * self.factor)
        self.runs += 1

    def time_evaluator(self, name, dev, number, repeat, min_repeat_ms):
        self.evaluators += 1
        self.loops.append((number, min_repeat_ms))
        return lambda a, b: (self._main(a, b), SimpleNamespace(results=[self.reports]))[1]


def _time_and_check(kernel, arrays, remote=False, control=None, **request):
    from autotune.worker import _time_and_check as time_and_check

    req = {**_request("unused", arrays), "min_repeat_ms": 10, **request}
    return time_and_check(kernel, tvm.cpu(), req, lambda inputs: [tvm.runtime.tensor(a) for a in inputs],
                          control, remote)


def test_a_kernel_whose_first_run_lasts_a_repeat_is_timed_once_per_repeat_here(arrays):
    kernel = _SleepingDouble(0.012)  # over min_repeat_ms (10)
    answer = _time_and_check(kernel, arrays)
    assert answer["status"] == "ok" and len(answer["latencies"]) == 3 and min(answer["latencies"]) >= 0.012
    assert (kernel.runs, kernel.evaluators) == (4, 0)  # its first run, then one per repeat: no evaluator
    kernel = _SleepingDouble(0.012)
    assert _time_and_check(kernel, arrays, remote=True)["latencies"] == [0.5] * 3  # a device times itself
    assert kernel.evaluators == 3
    kernel = _SleepingDouble(0.0)  # shorter than a repeat: TVM's evaluator loops it
    assert _time_and_check(kernel, arrays)["latencies"] == [0.5] * 3 and kernel.evaluators == 3


def test_a_fast_kernels_first_repeat_sizes_its_loop_and_the_others_run_that_loop_once(arrays):
    from autotune.worker import _time_in_turn

    # TVM's time_evaluator, given min_repeat_ms, starts a repeat over whenever its loop falls short of it:
    # a loop sized to about min_repeat_ms would often run twice
    kernel, control = _SleepingDouble(0.0, reports=0.002), _SleepingDouble(0.0, reports=0.004)
    _time_and_check(kernel, arrays, control=control)
    assert kernel.loops == [(1, 10), (5, 0), (5, 0)] and control.loops == [(1, 10), (3, 0), (3, 0)]
    first, second = _SleepingDouble(0.0, reports=0.002), _SleepingDouble(0.0, reports=0.004)
    req = {**_request("unused", arrays), "min_repeat_ms": 10, "rounds": 3, "slow_secs": 1.0}
    _time_in_turn([first, second], tvm.cpu(), req, lambda inputs: [tvm.runtime.tensor(a) for a in inputs])
    assert first.loops == [(1, 10), (5, 0), (5, 0)] and second.loops == [(1, 10), (3, 0), (3, 0)]


def test_a_kernel_whose_first_run_lasts_a_repeat_and_is_past_the_screen_is_not_timed_again(arrays):
    kernel = _SleepingDouble(0.012)
    answer = _time_and_check(kernel, arrays, screen_secs=0.001)
    assert answer == {"status": "ok", "latencies": [pytest.approx(0.012, abs=0.5)], "error": ""}
    assert (kernel.runs, kernel.evaluators) == (1, 0)
    answer = _time_and_check(_SleepingDouble(0.012, factor=3.0), arrays, screen_secs=0.001)
    assert answer["status"] == Status.WRONG_RESULT.value  # its one run's outputs are checked
    injected = _time_and_check(_SleepingDouble(0.012), arrays, screen_secs=0.001, inject="wrong")
    assert injected["status"] == Status.WRONG_RESULT.value  # as a timed repeat's would be
    kernel = _SleepingDouble(0.012)
    assert len(_time_and_check(kernel, arrays, screen_secs=0.001, remote=True)["latencies"]) == 1  # screened
    assert (kernel.runs, kernel.evaluators) == (2, 1)  # after one repeat, timed on the device
    kernel, control = _SleepingDouble(0.012), _SleepingDouble(0.0)
    answer = _time_and_check(kernel, arrays, control=control, screen_secs=0.001, screen_vs_control=1e9)
    assert len(answer["latencies"]) == 3 and len(answer["control_latencies"]) == 3  # a control screens on ratios


def test_the_screen_tightens_with_the_batchs_own_runs():
    import random

    from autotune import ops
    from autotune.measure import Measurer, MeasureOptions
    from autotune.search_space import SearchSpace

    space = SearchSpace(ops.make("matmul", "16,16,16"))
    rng = random.Random(3)
    candidates = list({c.key: c for c in (space.sample(rng) for _ in range(12))}.values())[:4]
    options = MeasureOptions(repeat=2, min_repeat_ms=1, screen_ratio=1.5)
    with Measurer(space, resolve_target("llvm"), options) as measurer:
        screens: list = []
        run = measurer._run
        measurer._run = lambda c, built, screen=None: screens.append(screen) or run(c, built, screen)
        records = list(measurer.measure(candidates))  # a tune's first batch: no best before it
        assert all(r.status is Status.OK for r in records)
        assert screens[0] is None
        for i in range(1, 4):
            assert screens[i] == pytest.approx(1.5 * min(r.ranked_latency for r in records[:i]))
        screens.clear()
        list(measurer.measure(candidates[:1], best_so_far=1e-9))
        assert screens == [pytest.approx(1.5e-9)]


@pytest.mark.parametrize("op, shape", [("matmul", "64,48,32"), ("conv2d_nchw", "1,8,10,10,8,3,3"),
                                       ("softmax", "8,40"), ("layernorm", "4,64")])
def test_the_reference_runs_in_parallel_and_computes_what_the_untuned_function_does(op, shape):
    from autotune import ops
    from autotune.vector_math import build
    from autotune.worker import reference_module

    workload = ops.make(op, shape)
    module = reference_module(workload)
    assert "T.parallel" in module.script()
    outputs = []
    for mod in (workload.mod, module):
        tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in workload.random_inputs(seed=0)]
        build(mod, resolve_target("llvm").target)["main"](*tensors)
        outputs.append([t.numpy() for t in tensors])
    assert all(np.array_equal(a, b) for a, b in zip(*outputs))  # bit for bit


def _export_slow_double(tmp_path, steps: int) -> str:
    """B = 2 * A the slow way: a sum of `steps` equal terms (exact in float32 for these inputs)."""
    A = te.placeholder((N,), name="A")
    k = te.reduce_axis((0, steps), name="k")
    B = te.compute((N,), lambda i: te.sum(A[i] * (2.0 / steps), axis=k), name="B")
    lib = tvm.compile(te.create_prim_func([A, B]), target=resolve_target("llvm").target)
    path = str(tmp_path / f"slow{steps}.so")
    lib.export_library(path)
    return path


def test_a_run_beside_a_control_pairs_their_repeats_and_screens_on_their_ratio(tmp_path, arrays):
    fast = _export(tmp_path, "fast", lambda A, i: A[i] * 2.0)
    slow = _export_slow_double(tmp_path, 4096)  # ~65k multiply-adds against 16
    wrong = _export(tmp_path, "wrong", lambda A, i: A[i] * 3.0)
    worker = WorkerProcess("runner", threads=1)
    try:
        def run(lib, control, **extra):
            return worker.call({**_request(lib, arrays), "control_path": control, **extra}, timeout=60)

        def ratio(answer):
            assert answer["status"] == "ok" and len(answer["control_latencies"]) == len(answer["latencies"]) == 3
            return float(np.median(np.divide(answer["latencies"], answer["control_latencies"])))

        assert ratio(run(slow, fast)) > 4 and ratio(run(fast, slow)) < 0.25  # each repeat paired with the control's
        screened = run(slow, fast, screen_secs=10.0, screen_vs_control=1.5)  # the ratio screens, not the seconds
        assert len(screened["latencies"]) == len(screened["control_latencies"]) == 1
        assert len(run(fast, slow, screen_secs=1e-12, screen_vs_control=1.5)["latencies"]) == 3
        assert run(wrong, fast)["status"] == Status.WRONG_RESULT.value  # checked before the control overwrites it
        assert "control_latencies" not in worker.call(_request(fast, arrays), timeout=60)
        gone = run(fast, str(tmp_path / "gone.so"))  # a control that no longer loads: timed alone, and said
        assert gone["status"] == "ok" and gone["control_missing"] and "control_latencies" not in gone
    finally:
        worker.kill()


def test_candidates_timed_together_take_their_rounds_in_turn_and_are_each_checked(tmp_path, arrays):
    good = _export(tmp_path, "good", lambda A, i: A[i] * 2.0)
    wrong = _export(tmp_path, "wrong", lambda A, i: A[i] * 3.0)
    also_good = _export(tmp_path, "also_good", lambda A, i: A[i] + A[i])
    worker = WorkerProcess("runner", threads=1)
    try:
        answer = worker.call({"job": "time_together", "lib_paths": [good, wrong, also_good], "arrays_path": arrays,
                              "outputs": [1], "rounds": 6, "min_repeat_ms": 1, "slow_secs": 0.2}, timeout=60)
        # kernels slower than slow_secs take a third of the rounds
        slow = worker.call({"job": "time_together", "lib_paths": [good, also_good], "arrays_path": arrays,
                            "outputs": [1], "rounds": 6, "min_repeat_ms": 1, "slow_secs": 0.0}, timeout=60)
    finally:
        worker.kill()
    assert answer["ok"] is True
    assert [(r["status"], len(r["latencies"])) for r in answer["results"]] == [("ok", 6), ("wrong_result", 1), ("ok", 6)]
    assert "differs" in answer["results"][1]["error"] and all(x > 0 for x in answer["results"][0]["latencies"])
    assert [len(r["latencies"]) for r in slow["results"]] == [2, 2]


def test_each_repeat_sees_the_arrays_at_another_aligned_placement():
    from autotune.worker import PLACEMENT_ALIGN, placed_copies

    arrays = [np.arange(1000, dtype="float32").reshape(10, 100), np.ones(7, dtype="int64")]
    rng = np.random.default_rng(0)
    draws = [placed_copies(arrays, rng) for _ in range(8)]
    for views in draws:
        for view, original in zip(views, arrays):
            assert view.ctypes.data % PLACEMENT_ALIGN == 0 and not np.shares_memory(view, original)
            np.testing.assert_array_equal(view, original)
            assert view.dtype == original.dtype and view.shape == original.shape
    # where the first array starts within a 4 KiB page (its cache sets) changes from draw to draw
    assert len({views[0].ctypes.data % 4096 for views in draws}) >= 4


def test_a_build_far_slower_than_the_workloads_usual_builds_is_stopped():
    import random
    import time

    from autotune import ops
    from autotune.measure import BUILDS_BEFORE_ADAPTIVE_TIMEOUT, Measurer, MeasureOptions
    from autotune.search_space import SearchSpace

    space = SearchSpace(ops.make("matmul", "16,16,16"))
    rng = random.Random(0)
    candidates = list({c.key: c for c in (space.sample(rng) for _ in range(40))}.values())
    usual, hanging = candidates[:BUILDS_BEFORE_ADAPTIVE_TIMEOUT], candidates[BUILDS_BEFORE_ADAPTIVE_TIMEOUT]
    options = MeasureOptions(build_timeout=120, min_build_timeout=1.0, repeat=1, min_repeat_ms=1,
                             inject=lambda c: "build_hang" if c.key == hanging.key else None)
    with Measurer(space, resolve_target("llvm"), options) as measurer:
        assert measurer._build_limit() == (120, "")  # too few builds to know what is usual
        assert all(r.status is Status.OK for r in measurer.measure(usual))
        start = time.perf_counter()
        (stopped,) = measurer.measure([hanging])
        assert time.perf_counter() - start < 30  # not the 120 s of build_timeout
    assert stopped.status is Status.BUILD_ERROR and "median build" in stopped.error


def test_a_build_sent_before_the_usual_build_time_is_known_is_stopped_once_the_builds_beside_it_show_it():
    import random

    from autotune import ops
    from autotune.measure import BUILDS_BEFORE_ADAPTIVE_TIMEOUT, Measurer, MeasureOptions
    from autotune.search_space import SearchSpace

    space = SearchSpace(ops.make("matmul", "16,16,16"))
    rng = random.Random(0)
    candidates = list({c.key: c for c in (space.sample(rng) for _ in range(40))}.values())
    hanging, usual = candidates[0], candidates[1:BUILDS_BEFORE_ADAPTIVE_TIMEOUT + 2]
    options = MeasureOptions(build_timeout=30, min_build_timeout=1.0, repeat=1, min_repeat_ms=1,
                             inject=lambda c: "build_hang" if c.key == hanging.key else None)
    with Measurer(space, resolve_target("llvm"), options) as measurer:
        measurer.prepare()
        start = time.perf_counter()
        records = list(measurer.measure([hanging] + usual))  # the first build of the workload hangs
        assert time.perf_counter() - start < 15  # stopped once the others built, not after build_timeout
    assert records[0].status is Status.BUILD_ERROR and "median build" in records[0].error
    assert all(r.status is Status.OK for r in records[1:])


def test_finals_reuse_the_libraries_of_the_measurers_fastest_runs_and_build_only_the_others():
    import os
    import random

    from autotune import ops
    from autotune.measure import Measurer, MeasureOptions
    from autotune.search_space import SearchSpace

    space = SearchSpace(ops.make("matmul", "16,16,16"))
    rng = random.Random(1)
    candidates = list({c.key: c for c in (space.sample(rng) for _ in range(12))}.values())[:6]
    options = MeasureOptions(repeat=2, min_repeat_ms=1, finalists=3, screen_ratio=0)
    with Measurer(space, resolve_target("llvm"), options) as measurer:
        builds: list[str] = []
        build = measurer._build
        measurer._build = lambda c, *a: builds.append(c.key) or build(c, *a)
        records = list(measurer.measure(candidates))
        assert len(builds) == 6 and all(r.status is Status.OK for r in records)
        fastest = sorted(records, key=lambda r: r.ranked_latency)[:3]
        libraries = sorted(os.listdir(measurer._tmp.name))
        assert libraries == sorted([f"{r.candidate_key}.so" for r in fastest] + ["reference.npz"])  # the rest removed
        slowest = next(c for c in candidates if c.key == max(records, key=lambda r: r.latency).candidate_key)
        finals = measurer.time_together([*(next(c for c in candidates if c.key == r.candidate_key) for r in fastest),
                                         slowest], rounds=3)
        assert builds[6:] == [slowest.key]  # only the one whose library was not kept
        assert [len(r.latencies) for r in finals] == [3] * 4 and all(r.status is Status.OK for r in finals)
        assert [r.build_secs for r in finals[:3]] == [r.build_secs for r in fastest]  # their own builds
        assert os.listdir(measurer._tmp.name) == ["reference.npz"]  # the finals' libraries removed after


@pytest.mark.parametrize("control", [True, False])
def test_runs_after_the_first_are_ranked_beside_the_measurers_fastest_kept_run(control):
    import os
    import random

    from autotune import ops
    from autotune.measure import Measurer, MeasureOptions
    from autotune.search_space import SearchSpace

    space = SearchSpace(ops.make("matmul", "16,16,16"))
    rng = random.Random(2)
    candidates = list({c.key: c for c in (space.sample(rng) for _ in range(12))}.values())[:4]
    options = MeasureOptions(repeat=3, min_repeat_ms=1, screen_ratio=0, control=control)
    with Measurer(space, resolve_target("llvm"), options) as measurer:
        records = list(measurer.measure(candidates))
        assert all(r.status is Status.OK for r in records)
        assert records[0].ranking_latency is None  # nothing kept to time it beside
        if control:  # the others on the leader's scale: their ratio to it, times its ranking latency
            assert all(r.ranking_latency for r in records[1:])
            path = measurer._control.path
            measurer.time_together(candidates, rounds=1)  # the finals: the control's library goes with them
            assert measurer._control is None and not os.path.exists(path)
        else:
            assert all(r.ranking_latency is None for r in records)


def test_the_control_stays_until_a_kept_run_ranks_twice_as_fast_and_is_never_its_own(tmp_path):
    import os

    from autotune import ops
    from autotune.measure import Measurer, MeasureOptions
    from autotune.search_space import Candidate, SearchSpace

    a, b, c, other = (Candidate({"unroll": n}) for n in (1, 2, 3, 4))
    options = MeasureOptions(control=True)
    with Measurer(SearchSpace(ops.make("matmul", "16,16,16")), resolve_target("llvm"), options) as measurer:
        def keep(candidate, seconds):
            path = tmp_path / f"{candidate.key}.so"
            path.write_bytes(b"")
            measurer._kept[candidate.key] = (seconds, {"out_path": str(path)})
            return str(path)

        assert measurer._control_for(other) is None  # nothing kept yet
        keep(a, 0.010)
        assert measurer._control_for(other).key == a.key
        keep(b, 0.006)  # faster, not twice as fast: the scale stays on a
        assert measurer._control_for(other).key == a.key
        c_path = keep(c, 0.004)
        assert measurer._control_for(other).key == c.key and measurer._control_for(c) is None
        del measurer._kept[c.key]
        os.remove(c_path)  # the finals took it, timed it and removed it
        assert measurer._control_for(other).key == b.key  # the fastest kept run now
        measurer._kept.clear()
        keep(a, 0.5)
        assert measurer._control_for(other).key == b.key  # its file is still there
        os.remove(tmp_path / f"{b.key}.so")
        assert measurer._control_for(other) is None  # a run slower than slow_secs is no control


def _maps_torch(worker: WorkerProcess) -> bool:
    """Whether the worker process has PyTorch's library mapped (it is imported there)."""
    with open(f"/proc/{worker._proc.pid}/maps") as maps:
        return "libtorch" in maps.read()


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads /proc/PID/maps")
def test_build_and_run_workers_start_without_pytorch_and_the_pytorch_job_has_it(tmp_path, arrays):
    pytest.importorskip("torch")
    plain, with_torch = WorkerProcess("plain", threads=1), WorkerProcess("torch", threads=1, torch=True)
    try:
        lib = _export(tmp_path, "double", lambda A, i: A[i] * 2.0)
        assert plain.call(_request(lib, arrays), timeout=60)["status"] == "ok"  # still builds and runs
        assert not _maps_torch(plain)
        with_torch.call({"job": "no_such_job"}, timeout=60)
        assert _maps_torch(with_torch)
    finally:
        plain.kill(), with_torch.kill()


@pytest.mark.parametrize("torch", [False, True])
def test_a_worker_imports_the_starting_processs_autotune_not_one_in_the_working_directory(tmp_path, monkeypatch,
                                                                                           torch):
    """Started from a directory holding another autotune (a second checkout), a worker still runs this one."""
    other = tmp_path / "autotune"
    other.mkdir()
    (other / "__init__.py").write_text("raise ImportError('the autotune of the working directory')\n")
    monkeypatch.chdir(tmp_path)
    worker = WorkerProcess("cwd", threads=1, torch=torch)
    try:
        answer = worker.call({"job": "no_such_job"}, timeout=120)
        assert answer["ok"] is False and "no_such_job" in answer["error"]
    finally:
        worker.kill()


def test_a_worker_starts_in_a_working_directory_that_was_removed(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    worker = WorkerProcess("gone", threads=1)
    try:
        assert worker.call({"job": "no_such_job"}, timeout=120)["ok"] is False
    finally:
        worker.kill()
