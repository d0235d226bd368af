"""The child side of measurement: a long-lived process that builds or runs one candidate per request.

Started by measure.WorkerProcess as ``python -m autotune.worker``. It reads one JSON request per
line on stdin and answers one JSON line on the protocol pipe. Generated code runs only here, so
a segfault or hang kills this process and never the tuning session. TVM is imported once per
process (about 0.5-2.5 s), not once per candidate; nothing here imports tvm.s_tir.tensor_intrin.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from typing import Any, Callable

import numpy as np
import tvm
from tvm import s_tir

from .search_space import Candidate, SearchSpace, apply_candidate, trace_json
from .space_config import SpaceConfig
from .vector_math import build as build_module
from .vector_math import export_library
from .workload import Workload, as_workload

_workloads: dict[str, Workload] = {}
_spaces: dict[str, SearchSpace] = {}
_arrays: dict[str, dict[str, np.ndarray]] = {}


# Faults a test can ask for (MeasureOptions.inject): what hostile generated code does, for real.
FAULTS = ("segfault", "hang", "alloc", "wrong", "build_segfault", "build_hang")


def inject_fault(kind: str | None) -> None:
    """Misbehave as asked, inside this worker: crash, hang, or allocate without bound ("wrong" is applied later)."""
    if kind in ("segfault", "build_segfault"):
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV
    elif kind in ("hang", "build_hang"):
        while True:
            time.sleep(3600)
    elif kind == "alloc":
        hoard = []
        while True:  # until the worker's memory limit (RLIMIT_AS) says no
            hoard.append(np.empty(256 << 20, dtype=np.uint8))


def build(req: dict[str, Any]) -> dict[str, Any]:
    """Apply the candidate's decisions, compile, and export a shared library to req["out_path"]."""
    if str(req.get("inject", "")).startswith("build_"):
        inject_fault(req["inject"])
    start = time.perf_counter()
    space = _space(req)
    sch = apply_candidate(space, Candidate(req["decisions"]))
    _export(build_module(sch.mod, _target(req)), req)
    return {"ok": True, "trace": trace_json(sch), "build_secs": time.perf_counter() - start}


def build_reference(req: dict[str, Any]) -> dict[str, Any]:
    """Build the untuned function for a remote device and save its seeded random inputs to req["inputs_path"]."""
    workload = _workload(req)
    _export(_reference_executable(workload, _target(req)), req)
    arrays = workload.random_inputs(seed=req.get("seed", 0))
    np.savez(req["inputs_path"], **{f"arg{i}": a for i, a in enumerate(arrays)})
    return {"ok": True}


def _export(executable: Any, req: dict[str, Any]) -> None:
    """Export a shared library, with the cross compiler named in the request if there is one."""
    fcompile = None
    if req.get("cross_compiler"):
        from tvm.support import cc

        fcompile = cc.cross_compiler(req["cross_compiler"])
    export_library(executable, req["out_path"], _target(req), fcompile)


def _target(req: dict[str, Any]) -> tvm.target.Target:
    return tvm.target.Target(req["target"])


def reference(req: dict[str, Any]) -> dict[str, Any]:
    """Build the untuned function, run it on seeded random inputs, save inputs and outputs to req["out_path"]."""
    workload = _workload(req)
    lib = _reference_executable(workload, _target(req))
    arrays = workload.random_inputs(seed=req.get("seed", 0))
    return _run_and_save(lib, tvm.cpu(), arrays, req["out_path"])


def _reference_executable(workload: Workload, target: tvm.target.Target) -> Any:
    """The untuned function built with its loop nests in parallel (reference_module), or as it is where
    that does not build."""
    try:
        return build_module(reference_module(workload), target)
    except Exception:  # noqa: BLE001 - TVM raises its own error types; the plain function is the reference then
        return build_module(workload.mod, target)


def reference_module(workload: Workload) -> tvm.IRModule:
    """The untuned function, each of its loop nests with its first loop longer than 1 run in parallel
    where TVM's `parallel` allows it (a loop over spatial iterators only; nests it refuses stay serial).

    Why: the reference runs once per tune, before any candidate, on one core when left untuned: 3.9 s of
    a 58 s matmul 1024^3 tune here, and it grows with the shape while a larger machine's cores idle.
    Running output elements in parallel leaves what each one is computed from, and in which order,
    as it was: the reference's values do not change (tests/test_measure.py checks them bit for bit).
    """
    sch = s_tir.Schedule(workload.mod, error_render_level="none")
    try:
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except (RuntimeError, ValueError):  # a function without TVM's root block: left as it is
        return workload.mod
    for block in blocks:
        loops = [lp for lp in sch.get_loops(block) if _extent(sch, lp) > 1]
        if loops:
            try:
                sch.parallel(loops[0])
            except (RuntimeError, ValueError):  # a reduction loop, or a nest another block already parallelized
                pass
    return sch.mod


def _extent(sch: s_tir.Schedule, loop: Any) -> int:
    """A loop's extent, or 0 when it is not a constant."""
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tvm.tirx.IntImm) else 0


def _run_and_save(lib: Any, dev: Any, arrays: list[np.ndarray], out_path: str) -> dict[str, Any]:
    """Run the untuned function once on `dev` (local or remote); save every argument after the run as argN."""
    tensors = [tvm.runtime.tensor(a, dev) for a in arrays]
    start = time.perf_counter()
    lib["main"](*tensors)
    secs = time.perf_counter() - start
    np.savez(out_path, **{f"arg{i}": t.numpy() for i, t in enumerate(tensors)})
    return {"ok": True, "secs": secs}


def run(req: dict[str, Any]) -> dict[str, Any]:
    """Time a built candidate, then check the outputs of the timed runs against the reference; with
    req["control_path"], time that library (a fast kept run, MeasureOptions.control) after each repeat
    too (see _time_and_check), or say "control_missing" when it no longer loads."""
    if req.get("inject") in ("segfault", "hang", "alloc"):
        inject_fault(req["inject"])
    rng = np.random.default_rng(0)  # the same offsets for every candidate
    control = _control_library(req.get("control_path"))
    answer = _time_and_check(tvm.runtime.load_module(req["lib_path"]), tvm.cpu(), req,
                             lambda arrays: [tvm.runtime.from_dlpack(a) for a in placed_copies(arrays, rng)], control)
    if req.get("control_path") and control is None:
        answer["control_missing"] = True
    return answer


PLACEMENT_WINDOW = 64 * 1024  # offsets are drawn within this window: wider than the L1 and L2 set strides
PLACEMENT_ALIGN = 64  # TVM's kernels assume 64-byte-aligned data


def _control_library(path: str | None) -> Any:
    """The control's library, or None when there is none, or when it no longer loads: the candidate is
    then timed alone, rather than failed for another kernel's file."""
    if not path:
        return None
    try:
        return tvm.runtime.load_module(path)
    except Exception:  # noqa: BLE001 - TVM raises its own error types for a missing or bad library
        return None


def placed_copies(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Copies of `arrays`, each at a random 64-byte-aligned offset within a buffer of its own.

    Why: a kernel's speed can depend on where its arrays lie relative to each other (cache-set
    conflicts of power-of-two rows: one matmul 1024³ kernel ran in 4.5 or 8.1 ms, same code, same
    machine, depending only on what the process had allocated before). Timing each repeat at
    another placement and keeping the median ranks kernels by their typical speed, not by one
    lucky or unlucky layout. Each view keeps its buffer alive.
    """
    views = []
    for a in arrays:
        raw = np.empty(a.nbytes + PLACEMENT_WINDOW + PLACEMENT_ALIGN, dtype=np.uint8)
        start = (-raw.ctypes.data) % PLACEMENT_ALIGN + int(rng.integers(0, PLACEMENT_WINDOW // PLACEMENT_ALIGN)) * PLACEMENT_ALIGN
        view = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        views.append(view)
    return views


def time_together(req: dict[str, Any]) -> dict[str, Any]:
    """Time built candidates head to head (the finals of a tune): see `_time_in_turn`."""
    rng = np.random.default_rng(0)
    libs = [tvm.runtime.load_module(path) for path in req["lib_paths"]]
    return _time_in_turn(libs, tvm.cpu(), req,
                         lambda arrays: [tvm.runtime.from_dlpack(a) for a in placed_copies(arrays, rng)])


def _time_in_turn(libs: list[Any], dev: Any, req: dict[str, Any],
                  place: Callable[[list[np.ndarray]], list[Any]]) -> dict[str, Any]:
    """Time loaded candidates in turn: req["rounds"] rounds, each timing every candidate once (a repeat of
    req["min_repeat_ms"]), starting one candidate later each round, each at a new placement of its arrays and
    with its outputs checked. So every candidate is timed in the same moments as the others: their latencies
    compare head to head, which separately timed trials on a VM whose speed drifts do not. A candidate
    slower than req["slow_secs"] in the first round takes a third of the rounds (at least 2), as `run`
    gives such candidates fewer repeats."""
    expected, outputs, inputs = _reference_inputs(req)
    results = [{"status": "ok", "latencies": [], "error": ""} for _ in libs]
    numbers = [1] * len(libs)
    slow_rounds = max(2, req["rounds"] // 3)
    for r in range(req["rounds"]):
        for i in [(r + j) % len(libs) for j in range(len(libs))]:
            timed = results[i]["latencies"]
            if results[i]["status"] != "ok" or (timed and timed[0] >= req["slow_secs"] and len(timed) >= slow_rounds):
                continue
            args = place(inputs)
            timer = libs[i].time_evaluator("main", dev, number=numbers[i], repeat=1,
                                           min_repeat_ms=_repeat_ms(req, first=not timed))
            latency = timer(*args).results[0]
            results[i]["latencies"].append(latency)
            numbers[i] = _loop_count(req["min_repeat_ms"], latency)
            if error := _wrong_output(args, outputs, expected):
                results[i].update(status="wrong_result", error=error)
    return {"ok": True, "results": results}


def _reference_inputs(req: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[int], list[np.ndarray]]:
    """The reference arrays, the output indices, and the inputs to run on (outputs zeroed)."""
    expected = _reference_arrays(req["arrays_path"])
    outputs = sorted(req["outputs"])
    inputs = [np.zeros_like(a) if i in outputs else a for i, a in enumerate(expected[f"arg{i}"] for i in range(len(expected)))]
    return expected, outputs, inputs


def _time_and_check(lib: Any, dev: Any, req: dict[str, Any], place: Callable[[list[np.ndarray]], list[Any]],
                    control: Any = None, remote: bool = False) -> dict[str, Any]:
    """Run a loaded candidate once, then time it: each repeat at a new placement of its arrays made by `place`,
    whose outputs are checked against the reference (local or remote device). A kernel whose first run
    already lasts a repeat is timed in one run per repeat (_time_repeat), and may not be timed at all
    (_first_run_only).

    With a `control` library (another kernel of the same workload), each repeat of the candidate is
    followed by one of the control on the same arrays, and the answer's "control_latencies" pair up
    with its "latencies": their ratios are the candidate's speed relative to the control's at the
    same moments, meant to cancel this VM's drifts of up to 1.5x within a minute (MeasureOptions.control). The
    screen (req["screen_secs"]) is then on that ratio (req["screen_vs_control"]). `remote`: a fleet's
    device, whose runs are timed there (_time_repeat).
    """
    expected, outputs, inputs = _reference_inputs(req)
    args = place(inputs)
    # One run first: it checks that the code runs at all and sizes the timing loop.
    main = lib["main"]
    start = time.perf_counter()
    main(*args)
    once = time.perf_counter() - start
    # Decided once per kernel, so that all its repeats are timed alike; a fleet's device times them itself.
    direct = not remote and req["min_repeat_ms"] > 0 and once * 1e3 >= req["min_repeat_ms"]
    if direct and control is None and _screened(req, once, None):
        return _first_run_only(once, args, outputs, expected, dev, req)
    repeat = req["repeat"] if once < req["slow_secs"] else max(2, req["repeat"] // 3)
    number, latencies, controls, control_number = 1, [], [], 1
    for r in range(repeat):
        args = args if r == 0 else place(inputs)
        latencies.append(_time_repeat(lib, dev, args, number, _repeat_ms(req, first=r == 0), direct))
        if req.get("inject") == "wrong" and r == 0:
            _write_wrong_value(args, outputs, dev)
        if error := _wrong_output(args, outputs, expected):
            return {"status": "wrong_result", "latencies": latencies, "error": error}
        if control is not None:  # after the check: the control overwrites the outputs
            controls.append(_time_repeat(control, dev, args, control_number, _repeat_ms(req, first=r == 0),
                                         direct=False))
        if r == 0:
            if _screened(req, latencies[0], controls[0] if controls else None):
                break  # no contender for the best: its one repeat ranks it
            number = _loop_count(req["min_repeat_ms"], latencies[0])
            control_number = _loop_count(req["min_repeat_ms"], controls[0]) if controls else 1
    answer: dict[str, Any] = {"status": "ok", "latencies": latencies, "error": ""}
    if control is not None:
        answer["control_latencies"] = controls
    return answer


def _time_repeat(lib: Any, dev: Any, args: list[Any], number: int, min_repeat_ms: float, direct: bool) -> float:
    """Seconds per run over one timed repeat of a loaded kernel while tuning: `number` runs in TVM's
    time_evaluator, which lengthens the repeat to `min_repeat_ms`; or, `direct` (on this machine, for a
    kernel whose first run took min_repeat_ms or more: _time_and_check), one run timed here.

    Why: a time_evaluator first runs the kernel once untimed, and every repeat needs an evaluator of its
    own (each repeat is at its own placement of the arrays), so a kernel of min_repeat_ms or more ran
    twice per timed run: about 40 % of the run time of a matmul 1024^3 tune. Timed here, a call's
    overhead is microseconds against those milliseconds; the run is the first on its placement: against
    the evaluator's warm run, paired timings of 10 kernels of 8-44 ms gave median ratios of 0.85-1.09,
    1.02 over the ten (within this VM's noise; bench/RESULTS.md, 2026-12-07). The finals (_time_in_turn), which pick
    the reported best among close leaders, keep the evaluator, and so do the controls
    (MeasureOptions.control), whose ratios pair with the candidate's. A fleet's device times its runs
    itself: a time taken on this side would include the network."""
    if direct:
        main = lib["main"]
        start = time.perf_counter()
        main(*args)
        return time.perf_counter() - start
    timer = lib.time_evaluator("main", dev, number=number, repeat=1, min_repeat_ms=min_repeat_ms)
    return timer(*args).results[0]


def _first_run_only(once: float, args: list[Any], outputs: list[int], expected: dict[str, np.ndarray], dev: Any,
                    req: dict[str, Any]) -> dict[str, Any]:
    """The answer for a kernel whose first run lasted a repeat (min_repeat_ms) or more and is already past
    the screen: that run, checked, is its only timing. Why: timing it again costs as much again and
    cannot make it a contender (a 3.9 s draw of matmul 1024^3, whose best ran in 14 ms, took 11.7 s for
    its first run and two repeats; a layernorm that recomputes its variance for every element, 150 ms
    against the best's 0.03). A run that long is timed in one run anyway (_time_repeat). Not with a
    control, whose screen is on the ratio of their times (_time_and_check), nor on a fleet's device."""
    if req.get("inject") == "wrong":
        _write_wrong_value(args, outputs, dev)
    if error := _wrong_output(args, outputs, expected):
        return {"status": "wrong_result", "latencies": [once], "error": error}
    return {"status": "ok", "latencies": [once], "error": ""}


def _write_wrong_value(args: list[Any], outputs: list[int], dev: Any) -> None:
    """Test-only (MeasureOptions.inject "wrong"): change one output value, as if the timed code had written it."""
    first = args[outputs[0]].numpy()
    first.flat[0] += 1.0 + abs(first.flat[0])
    args[outputs[0]] = tvm.runtime.tensor(first, dev)


def _screened(req: dict[str, Any], seconds: float, control_seconds: float | None) -> bool:
    """Whether a candidate's first repeat shows it is no contender for the best: slower than
    req["screen_secs"], or, timed beside a control, over req["screen_vs_control"] times the control."""
    if control_seconds:
        limit = req.get("screen_vs_control")
        return bool(limit) and seconds / control_seconds > limit
    limit = req.get("screen_secs")
    return bool(limit) and seconds > limit


def _repeat_ms(req: dict[str, Any], first: bool) -> float:
    """The min_repeat_ms to give TVM's time_evaluator for one repeat of a kernel: req["min_repeat_ms"] for
    its first repeat, which the evaluator lengthens to that and which sizes the loop of the others
    (_loop_count); 0 for the others, which then run their sized loop once.

    Why: given min_repeat_ms again, the evaluator starts a repeat over, with a loop 1.6x longer, whenever
    the loop falls short of it, and a loop sized to about min_repeat_ms falls short about half the time:
    repeats sized for 10 ms took 13-26 ms, with 0 they took 10-16 ms, the medians the same (10 kernels
    of 0.03-3 ms, bench/RESULTS.md, 2026-12-08). A fast kernel's run took 0.76x the time without it."""
    return req["min_repeat_ms"] if first else 0


def _loop_count(min_repeat_ms: float, seconds: float) -> int:
    """Kernel runs per timed repeat, so that one repeat lasts about `min_repeat_ms`."""
    return max(1, math.ceil(min_repeat_ms / 1e3 / seconds)) if seconds > 0 else 1


def _wrong_output(args: list[Any], outputs: list[int], expected: dict[str, np.ndarray]) -> str:
    """Why the outputs in `args` differ from the reference's, or "" when they match."""
    for i in outputs:
        got, want = args[i].numpy(), expected[f"arg{i}"]
        if not _close(got, want):
            err = float(np.max(np.abs(got.astype("float64") - want.astype("float64"))))
            return f"output {i} differs by up to {err:.3g}"
    return ""


def device_info(req: dict[str, Any]) -> dict[str, Any]:
    """Ask a device of the fleet what it is (None from plain TVM servers)."""
    return _on_device(req, lambda session: {"ok": True})


def rpc_reference(req: dict[str, Any]) -> dict[str, Any]:
    """Run the untuned library on a device on the saved inputs; save inputs and outputs to req["out_path"]."""

    def compute(session: Any) -> dict[str, Any]:
        lib, dev = _upload(session, req["lib_path"])
        with np.load(req["inputs_path"]) as data:
            arrays = [data[f"arg{i}"] for i in range(len(data.files))]
        return _run_and_save(lib, dev, arrays, req["out_path"])

    return _on_device(req, compute)


def rpc_run(req: dict[str, Any]) -> dict[str, Any]:
    """Time a built candidate on a device of the fleet and check its outputs (as `run` does locally)."""
    def measure(session: Any) -> dict[str, Any]:
        lib, dev = _upload(session, req["lib_path"])
        # fresh device arrays per repeat: the device's allocator places them (no views across RPC)
        return _time_and_check(lib, dev, req, lambda arrays: [tvm.runtime.tensor(a, dev) for a in arrays], remote=True)

    return _on_device(req, measure)


def rpc_time_together(req: dict[str, Any]) -> dict[str, Any]:
    """Time built candidates head to head on one device of the fleet (as `time_together` does here)."""
    def measure(session: Any) -> dict[str, Any]:
        libs = [_upload(session, path)[0] for path in req["lib_paths"]]
        dev = session.cpu(0)
        return _time_in_turn(libs, dev, req, lambda arrays: [tvm.runtime.tensor(a, dev) for a in arrays])

    return _on_device(req, measure)


def _on_device(req: dict[str, Any], work: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Do `work` in a session on a free device; classify failures as the candidate's or the device's.

    Answers carry "device" (its address) and "info" (what the device says it is). A lost device
    answers status "device_lost" (the caller tries another); no free device, "no_device".
    """
    from . import fleet

    try:
        session, where = fleet.request_device(req)
    except fleet.NoDevice as err:
        return {"ok": False, "status": "no_device", "error": str(err)}
    except Exception as err:  # the tracker gave a device that does not answer
        return {"ok": False, "status": "device_lost", "error": _describe(err), "device": "?"}
    try:
        info = fleet.device_report(session)
        answer = work(session)
    except Exception as err:
        if "RPCSessionTimeoutError" in str(err):
            answer = {"status": "timeout", "error": f"timed out on the device after {req['session_timeout']:.0f} s"}
        elif fleet.session_alive(session):
            answer = {"status": "run_error", "error": _describe(err)}
        else:
            answer = {"status": "device_lost", "error": _describe(err)}
        answer["ok"] = False
        info = None
    return {**answer, "device": where, "info": info}


def _upload(session: Any, lib_path: str) -> tuple[Any, Any]:
    """Send a built library to the device and load it there; returns (module, device)."""
    session.upload(lib_path)
    return session.load_module(os.path.basename(lib_path)), session.cpu(0)


def model(req: dict[str, Any]) -> dict[str, Any]:
    """Run a whole compiled Relax model on saved inputs: save its outputs, time it end to end."""
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(req["lib_path"]), tvm.cpu())
    with np.load(req["inputs_path"]) as data:
        inputs = [tvm.runtime.tensor(data[f"arg{i}"]) for i in range(len(data.files))]
    outputs = _flatten(vm["main"](*inputs))
    np.savez(req["out_path"], **{f"out{i}": o.numpy() for i, o in enumerate(outputs)})
    evaluator = vm.time_evaluator("main", tvm.cpu(), number=1, repeat=req["repeat"], min_repeat_ms=req["min_repeat_ms"])
    return {"ok": True, "latencies": list(evaluator(*inputs).results)}


def torch_model(req: dict[str, Any]) -> dict[str, Any]:
    """Run a torch.export archive eagerly on saved inputs: save its outputs, time it (PyTorch's own threads).

    In a worker of its own because PyTorch's CPU kernels slow down by orders of magnitude in a
    process where TVM has compiled code (seen: 20 µs → 24 ms for a small MLP).
    """
    import torch

    torch.set_num_threads(int(req["threads"]))
    program = torch.export.load(req["program_path"]).module()
    with np.load(req["inputs_path"]) as data:
        inputs = [torch.from_numpy(data[f"arg{i}"]) for i in range(len(data.files))]
    with torch.no_grad():
        outputs = [o.numpy() for o in torch.utils._pytree.tree_leaves(program(*inputs))]
        latencies = []
        for _ in range(int(req["repeat"])):
            start, runs = time.perf_counter(), 0
            while runs == 0 or time.perf_counter() - start < req["min_repeat_ms"] / 1000:
                program(*inputs)
                runs += 1
            latencies.append((time.perf_counter() - start) / runs)
    np.savez(req["out_path"], **{f"out{i}": o for i, o in enumerate(outputs)})
    return {"ok": True, "latencies": latencies}


def check_workload(req: dict[str, Any]) -> dict[str, Any]:
    """Read an imported workload from TVM JSON and replay its trials' traces on it (untrusted input).

    Here, not in the importing process, because TVM's parsers may crash on crafted input. Answers
    the workload's key and TVMScript as autotune computes them, and an error text (or None) per trace.
    """
    from .tuner import replay_trace

    work = as_workload(tvm.ir.load_json(req["mod_json"]), name=req.get("name"))
    errors = []
    for trace in req["traces"]:
        try:
            replay_trace(work, trace)
            errors.append(None)
        except Exception as err:  # a trace that does not fit is data, reported per trace
            errors.append(_describe(err))
    return {"ok": True, "key": work.key, "script": work.script, "trace_errors": errors}


def metaschedule_import(req: dict[str, Any]) -> dict[str, Any]:
    """Parse a MetaSchedule JSON database into plain records (see metaschedule.import_metaschedule)."""
    from .errors import AutotuneError
    from .metaschedule import parse_metaschedule

    try:
        return parse_metaschedule(req["workload_path"], req["record_path"], req["target_key"], req["target_kind"],
                                  bool(req.get("strict")))
    except AutotuneError as err:  # the caller raises it again, as the same one-line error
        return {"ok": False, "error": str(err)}


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, tvm.runtime.Tensor):
        return [value]
    return [leaf for item in value for leaf in _flatten(item)]


def _close(got: np.ndarray, want: np.ndarray) -> bool:
    if want.dtype.kind in "iub":
        return bool(np.array_equal(got, want))
    scale = float(np.max(np.abs(want))) if want.size else 1.0
    return bool(np.allclose(got, want, rtol=1e-3, atol=1e-4 * max(1.0, scale), equal_nan=True))


def _workload(req: dict[str, Any]) -> Workload:
    key = req["workload_key"]
    if key not in _workloads:
        mod = tvm.ir.load_json(req["workload_json"])
        _workloads[key] = as_workload(mod, name=key)
    return _workloads[key]


def _space(req: dict[str, Any]) -> SearchSpace:
    key = req["workload_key"] + json.dumps(req["space"], sort_keys=True)
    if key not in _spaces:
        config = SpaceConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in req["space"].items()})
        _spaces[key] = SearchSpace(_workload(req), config)
    return _spaces[key]


def _reference_arrays(path: str) -> dict[str, np.ndarray]:
    if path not in _arrays:
        with np.load(path) as data:
            _arrays[path] = {k: data[k] for k in data.files}
    return _arrays[path]


JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "build": build, "build_reference": build_reference, "reference": reference, "run": run,
    "time_together": time_together, "device_info": device_info, "rpc_reference": rpc_reference,
    "rpc_run": rpc_run, "rpc_time_together": rpc_time_together,
    "model": model, "torch_model": torch_model,
    "check_workload": check_workload, "metaschedule_import": metaschedule_import,
}


def limit_memory() -> None:
    """Cap this process's address space ($AUTOTUNE_WORKER_MEMORY_MB) so runaway code fails here, not the machine."""
    limit_mb = int(os.environ.get("AUTOTUNE_WORKER_MEMORY_MB", "0") or 0)
    if limit_mb > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))


def die_with_parent() -> None:
    """Have Linux kill this worker when its parent dies (even by SIGKILL): no orphan stays hung in generated code."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def main() -> None:
    """Serve requests until stdin closes. Protocol answers go to a private copy of stdout."""
    die_with_parent()
    limit_memory()
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints from TVM/LLVM must not corrupt the protocol
    protocol.write(json.dumps({"ready": True}) + "\n")  # imports done: request timeouts start now
    protocol.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            answer = JOBS[req["job"]](req)
        except Exception as err:  # a failing candidate is data: report it, stay alive
            answer = {"ok": False, "status": "error", "error": _describe(err)}
        protocol.write(json.dumps(answer) + "\n")
        protocol.flush()


def _describe(err: BaseException) -> str:
    lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
    message = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
    where = traceback.extract_tb(err.__traceback__)[-1:] if err.__traceback__ else []
    origin = f" ({where[0].name})" if where else ""
    return f"{type(err).__name__}{origin}: {message}"[:2000]


if __name__ == "__main__":
    main()
