"""Build and measure candidates in isolated worker processes.

Builds run in parallel (one worker per core); runs are sequential, on one worker, so that two
candidates never compete for the cores while they are timed. With `MeasureOptions.rpc`, runs go
to the devices of a fleet instead, one per device in parallel, as builds finish (fleet.py).
Each worker is a separate ``python -m autotune.worker`` process spoken to in JSON lines (no
pickles): a crash or a hang in generated code kills that worker, is recorded as the
candidate's status, and a fresh worker takes its place. Every timed run is checked against the
untuned reference on the same inputs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import queue
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import psutil
import tvm

from .fleet import RemoteRunner, RpcOptions
from .records import Status, TrialRecord
from .search_space import Candidate, SearchSpace
from .target import HardwareTarget, available_cores

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeasureOptions:
    """How candidates are built and timed."""

    builders: int = 0  # 0: one per core of the target
    # A kernel builds in 0.1-3 s here; the rare candidate whose code LLVM takes minutes over (huge
    # unrolled register tiles) is not worth a builder's time. MetaSchedule's default is 30 s too.
    build_timeout: float = 30.0
    # Once BUILDS_BEFORE_ADAPTIVE_TIMEOUT candidates of a workload have built, a build (one already
    # running included) is stopped at this many times their median build time (never below
    # min_build_timeout, never above build_timeout; 0: off). Code that takes that long to compile is
    # huge unrolled bodies: of 20 such candidates in eight random-search runs (conv, depthwise,
    # softmax), none ran within 1.27x of its run's best, and one 30 s build held a whole batch's
    # runs back.
    build_timeout_vs_median: float = 10.0
    min_build_timeout: float = 2.0
    run_timeout: float = 30.0
    repeat: int = 5  # timed repeats, each at another placement of the arrays (worker.placed_copies); the median is the latency
    # Each repeat loops the kernel for about this long: the first for at least this long, the others as
    # many runs as that took (worker._repeat_ms); a kernel whose first run already lasts this long is
    # timed in one run per repeat (worker._time_repeat). 10 ms, not more: the 5-repeat medians of a
    # 2.6 ms matmul spread the same (CV 0.02-0.03) at 5, 10, 15 and 30 ms per repeat, interleaved; what
    # varies on these VMs is the machine from one second to the next, which longer repeats do not average.
    min_repeat_ms: int = 10
    slow_secs: float = 0.2  # kernels slower than this get fewer repeats
    # While tuning, a candidate whose first timed repeat is this many times the best latency so far
    # stops there (one repeat instead of `repeat`): it cannot become the best, and its one repeat of
    # min_repeat_ms is precise enough to rank it for the cost model. A kernel whose untimed first run
    # lasts min_repeat_ms or more and is past the screen stops even before that (worker._first_run_only).
    # 0 times every repeat.
    screen_ratio: float = 1.5
    # With `control`, each timed repeat of a candidate is followed by one of a control, a fast run this
    # Measurer kept (the tune's leader, or one at most 2x slower: Measurer._control_for), on the same
    # arrays; the candidate is then ranked by the median of its repeats' ratios to the control's,
    # times the control's ranking latency (TrialRecord.ranking_latency): what the search keeps, the
    # cost model learns and the best is chosen by. Why: this VM's speed drifts by up to 1.5x within a
    # minute, alike for every kernel, so a trial's own median says as much about its moment as about
    # its kernel. In 10 placements of 20 batch-matmul kernels, each timed in the same moments, taking
    # out each moment's common factor cut the spread of a kernel's times from 0.140 to 0.057 (sd of
    # log; bench/RESULTS.md, 2026-12-07). Runs slower than `slow_secs` are no control; there is none
    # on a fleet, nor without finalists (the kept runs are the finalists'). Off by default: in 35
    # paired 64-trial tunes it found kernels 1.01x as fast (standard error 0.03) for 8% more wall
    # time, and its labels were no easier for the cost model to learn (RESULTS.md, 2026-12-07).
    control: bool = False
    # At the end of a tune the leading `finalists` trials are timed head to head, `finals_rounds`
    # repeats each taken in turn, and re-ranked by that (tuner.TaskTuner.finals). Why: trials timed
    # at separate moments of a VM whose speed drifts rank partly by their moment, and the reported
    # best should be timed beside its rivals. (It changed the pick of 2 in 9 random-search tunes:
    # bench/RESULTS.md, "Finals", 2026-12-01.) It costs 1-4 s a tune here. The Measurer keeps the
    # libraries of its own `finalists` fastest runs, so only leaders measured before it are rebuilt.
    # Below 2: no finals; the best alone is measured again (TaskTuner.verify_best).
    finalists: int = 4
    finals_rounds: int = 7
    # Address-space cap of each worker (0: half the machine's memory), so code that allocates
    # without bound fails in its worker instead of taking the machine down.
    memory_limit_mb: int = 0
    # Test-only fault injection: candidate -> a worker.FAULTS kind (or None), done for real in the worker.
    inject: Callable[[Candidate], str | None] | None = None
    # Measure on the devices of a TVM RPC tracker instead of this machine (set by tune(rpc=...)).
    rpc: RpcOptions | None = None

    def worker_memory_mb(self) -> int:
        return self.memory_limit_mb or int(psutil.virtual_memory().total / 2 / (1 << 20))


BUILDS_BEFORE_ADAPTIVE_TIMEOUT = 8
CONTROL_SWITCH = 2.0  # a tune's control is replaced by a kept run ranked this many times faster (Measurer._control_for)
TIMEOUT_POLL_SECS = 0.2  # how often a callable timeout is asked again (WorkerProcess.call)
STARTUP_TIMEOUT = 300.0  # a worker's imports take 0.5-3 s; a loaded machine can take much longer


class WorkerDied(Exception):
    """The worker process crashed or was killed for a timeout while serving a request."""

    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


# How a worker is started: `python -c` with this code. First it takes the working directory off
# the front of sys.path (where `-c` puts it, as '', unless PYTHONSAFEPATH is set), so that the
# worker imports the autotune of the process that starts it (first on its PYTHONPATH,
# _ensure_started), not an `autotune/` that happens to be in the working directory (another
# checkout). Then, unless the worker needs PyTorch, it makes `import torch` fail, as if PyTorch were
# not installed: TVM's FFI imports PyTorch whenever it is installed (1.6 s of a worker's 3.5 s start
# on a 2-core Zen 3), and builds and timed runs never use it. Every tune starts three workers.
_WORKER_CODE = ("import runpy, sys\n"
                "if sys.path[:1] == [''] and not getattr(sys.flags, 'safe_path', False): del sys.path[0]\n"
                "{block_torch}runpy.run_module('autotune.worker', run_name='__main__', alter_sys=True)\n")
_WITHOUT_TORCH = _WORKER_CODE.format(block_torch="sys.modules['torch'] = None\n")
_WITH_TORCH = _WORKER_CODE.format(block_torch="")


class WorkerProcess:
    """One `python -m autotune.worker` child; restarted on demand after it dies.

    `torch`: whether the worker may import PyTorch (only the job that runs a PyTorch model needs it).
    """

    def __init__(self, name: str, threads: int, memory_mb: int = 0, torch: bool = False):
        self.name = name
        self.threads = threads
        self.memory_mb = memory_mb
        self.torch = torch
        self._proc: subprocess.Popen[str] | None = None
        self._ready = False

    def call(self, request: dict[str, Any], timeout: float | Callable[[], float]) -> dict[str, Any]:
        """Send one request and wait for its answer; raise WorkerDied on a crash or timeout.

        The timeout starts once the worker is ready: a fresh worker's imports (seconds) never
        count against the candidate it serves. A callable timeout is asked again every
        TIMEOUT_POLL_SECS while the answer is awaited, so a limit that other work lowers meanwhile
        (Measurer._build_limit) applies to a request already sent.
        """
        proc = self._ensure_started()
        assert proc.stdin is not None and proc.stdout is not None
        self._wait_ready(proc)
        try:
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
        except BrokenPipeError:
            self._reap()
            raise WorkerDied(Status.RUN_ERROR, f"worker {self.name} exited before the request") from None
        if not _answer_within(proc.stdout, timeout):
            self.kill()
            limit = timeout() if callable(timeout) else timeout
            raise WorkerDied(Status.TIMEOUT, f"timed out after {limit:.3g} s")
        line = proc.stdout.readline()
        if not line:
            code = self._reap()
            raise WorkerDied(Status.RUN_ERROR, f"worker crashed ({_describe_exit(code)})")
        return json.loads(line)

    def start(self) -> None:
        """Start the process now so that its TVM import overlaps other work."""
        self._ensure_started()

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._reap()

    def _ensure_started(self) -> subprocess.Popen[str]:
        if self._proc is None or self._proc.poll() is not None:
            package_parent = str(Path(__file__).resolve().parents[1])
            path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
            env = dict(os.environ, TVM_NUM_THREADS=str(self.threads), PYTHONPATH=path,
                       AUTOTUNE_WORKER_MEMORY_MB=str(self.memory_mb))
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _WITH_TORCH if self.torch else _WITHOUT_TORCH],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C stops the session, which then stops its workers
            )
        return self._proc

    def _wait_ready(self, proc: subprocess.Popen[str]) -> None:
        """Wait for the worker's "ready" line (sent after its imports)."""
        if self._ready:
            return
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], STARTUP_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if not line:
            self.kill()
            raise WorkerDied(Status.RUN_ERROR, f"worker {self.name} failed to start within {STARTUP_TIMEOUT:.0f} s")
        self._ready = True

    def _reap(self) -> int | None:
        proc, self._proc = self._proc, None
        self._ready = False
        if proc is None:
            return None
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return proc.wait()


class WorkerPool:
    """The build workers (one per core) and the timing worker, shared by the Measurers of many workloads.

    Workers are generic: every request names its workload, so a model-tuning session starts them
    once instead of once per task and batch. Use as a context manager.
    """

    def __init__(self, target: HardwareTarget, options: MeasureOptions | None = None):
        self.options = options or MeasureOptions()
        # Builds use this machine's cores: the target's own count, or, for a fleet, the cores here.
        n_builders = self.options.builders or (available_cores() if self.options.rpc else max(1, target.num_cores))
        memory = self.options.worker_memory_mb()
        self.builders = [WorkerProcess(f"builder{i}", threads=1, memory_mb=memory) for i in range(n_builders)]
        self.runner = WorkerProcess("runner", threads=target.num_cores, memory_mb=memory)
        self.threads = ThreadPoolExecutor(max_workers=n_builders)
        self.idle_builders: queue.Queue[WorkerProcess] = queue.Queue()  # one build at a time per builder
        for worker in self.builders:
            self.idle_builders.put(worker)
        self.remote: RemoteRunner | None = None
        if self.options.rpc is not None:
            from .fleet import device_queue

            devices = device_queue(self.options.rpc).total
            self.remote = RemoteRunner(self.options.rpc, target, slots=devices, memory_mb=memory)
        for worker in [*([] if self.remote else [self.runner]), *self.builders]:
            worker.start()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run a "reference"/"run" request here, or its "rpc_" twin on a device of the fleet."""
        if self.remote is not None:
            return self.remote.call({**request, "job": "rpc_" + request["job"]}, timeout)
        return self.runner.call(request, timeout)

    def close(self) -> None:
        self.threads.shutdown(wait=True)
        if self.remote is not None:
            self.remote.close()
        for worker in [*self.builders, self.runner]:
            worker.kill()


class Measurer:
    """Builds and runs candidates of one workload on one target; use as a context manager.

    It starts its own WorkerPool unless it is given one (which it then leaves running).
    """

    def __init__(
        self,
        space: SearchSpace,
        target: HardwareTarget,
        options: MeasureOptions | None = None,
        pool: WorkerPool | None = None,
    ):
        self.space = space
        self.target = target
        self.options = pool.options if pool is not None else (options or MeasureOptions())
        self._own_pool = pool is None
        self._workers = pool if pool is not None else WorkerPool(target, self.options)
        self._tmp = tempfile.TemporaryDirectory(prefix="autotune-")
        self._arrays_path = os.path.join(self._tmp.name, "reference.npz")
        self._common = {
            "workload_key": space.workload.key,
            "workload_json": tvm.ir.save_json(space.workload.mod),
            "space": dataclasses.asdict(space.config),
            "target": target.target_json(),
            "cross_compiler": self.options.rpc.cross_compiler if self.options.rpc else None,
        }
        self._outputs = [i for i, a in enumerate(space.workload.args) if a.is_output]
        self._prepared = False
        self._run_timeout = self.options.run_timeout
        self._build_secs: list[float] = []  # of this workload's successful builds (see build_timeout_vs_median)
        # The builds of the `finalists` fastest runs so far, by candidate key, kept for time_together.
        self._kept: dict[str, tuple[float, dict[str, Any]]] = {}
        self._kept_lock = threading.Lock()  # a fleet's runs finish on several threads
        self._control: Control | None = None  # what candidates are timed beside (_control_for)

    def __enter__(self) -> "Measurer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_pool:
            self._workers.close()
        self._tmp.cleanup()

    def prepare(self) -> float:
        """Compute the untuned reference outputs once; returns the reference run's seconds (the untuned
        function with its outer loops in parallel: worker.reference_module)."""
        timeout = max(600.0, self.options.run_timeout)
        if self._workers.remote is not None:  # built here, computed on a device of the fleet
            lib_path = os.path.join(self._tmp.name, "reference.so")
            inputs_path = os.path.join(self._tmp.name, "inputs.npz")
            built = self._call_builder({"job": "build_reference", "out_path": lib_path, "inputs_path": inputs_path},
                                       timeout)
            if not built.get("ok"):
                raise RuntimeError(f"the untuned reference failed to build: {built.get('error')}")
            request = {"job": "reference", "lib_path": lib_path, "inputs_path": inputs_path,
                       "out_path": self._arrays_path}
        else:
            request = {"job": "reference", "out_path": self._arrays_path, **self._common}
        answer = self._workers.run(request, timeout)
        if not answer.get("ok"):
            raise RuntimeError(f"the untuned reference failed to build or run: {answer.get('error')}")
        self._prepared = True
        # A candidate may be as slow as the untuned code, on one core (the default candidate); give it
        # time for its repeats.
        cores = max(1, self.target.num_cores)
        self._run_timeout = max(self.options.run_timeout, 10 * float(answer["secs"]) * cores + 1)
        return float(answer["secs"])

    def measure(self, candidates: Sequence[Candidate], best_so_far: float | None = None) -> Iterator[TrialRecord]:
        """Build all candidates in parallel, then time them (one by one here, or in parallel on a fleet's
        devices); yields a record as each finishes. Candidates clearly slower than the best so far get one
        timed repeat at most (see MeasureOptions.screen_ratio): the best is `best_so_far` (seconds, the
        tune's best before this batch), and here also the batch's own runs as they finish, so that the
        first batch of a tune, which has no best before it, is screened too."""
        if not self._prepared:
            self.prepare()
        builds = [self._workers.threads.submit(self._build, c) for c in candidates]
        if self._workers.remote is None:  # one at a time on this machine, once no build competes for the cores
            best = best_so_far
            for candidate, built in zip(candidates, [b.result() for b in builds]):
                record = self._run(candidate, built, self._screen(best))
                if record.ranked_latency is not None and (best is None or record.ranked_latency < best):
                    best = record.ranked_latency
                yield record
            return
        screen = self._screen(best_so_far)
        runs = [self._workers.remote.threads.submit(self._run_when_built, c, b, screen)
                for c, b in zip(candidates, builds)]
        for run in as_completed(runs):  # the fleet's devices run in parallel, each as soon as its build is done
            yield run.result()

    def _screen(self, best: float | None) -> float | None:
        """Seconds beyond which a run is screened (one timed repeat), given the best so far; None: none is."""
        return best * self.options.screen_ratio if best and self.options.screen_ratio > 0 else None

    def time_together(self, candidates: Sequence[Candidate], rounds: int) -> list[TrialRecord]:
        """Build the candidates, then time them head to head in one job: `rounds` repeats each, taken in
        turn (worker._time_in_turn). Returns one record per candidate, in order.

        A candidate this Measurer ran among its fastest keeps its library (`_keep_if_leading`) and
        is not built again; the others get the full build_timeout (they built before). When the job
        fails as a whole (a worker that dies in one kernel's code, a lost device), every built
        candidate's record carries that failure: it cannot be told whose it was.
        """
        if not self._prepared:
            self.prepare()
        with self._kept_lock:
            kept = {c.key: self._kept.pop(c.key)[1] for c in candidates if c.key in self._kept}
        builds = {c.key: self._workers.threads.submit(self._build, c, True) for c in candidates if c.key not in kept}
        built = [kept[c.key] if c.key in kept else builds[c.key].result() for c in candidates]
        ready = [i for i, b in enumerate(built) if b.get("ok")]
        records = [TrialRecord(status=Status.BUILD_ERROR, error=b.get("error", ""), **self._fields(c, b))
                   for c, b in zip(candidates, built)]
        if not ready:
            return records
        request = {"job": "time_together", "lib_paths": [built[i]["out_path"] for i in ready], "rounds": rounds,
                   "arrays_path": self._arrays_path, "outputs": self._outputs, "min_repeat_ms": self.options.min_repeat_ms,
                   "slow_secs": self.options.slow_secs}
        try:
            answer = self._workers.run(request, timeout=self._run_timeout * len(ready))
        except WorkerDied as died:
            answer = {"ok": False, "status": died.status.value, "error": str(died)}
        finally:
            for b in built:
                _remove(b["out_path"])
            self._drop_control()
        results = answer.get("results") if answer.get("ok") else None
        for n, i in enumerate(ready):
            result = results[n] if results else answer
            fields = self._fields(candidates[i], built[i])
            if answer.get("device"):
                fields["origin"] = _device_origin(answer)
            records[i] = TrialRecord(status=_status(result), latencies=tuple(result.get("latencies") or ()),
                                     error=result.get("error", ""), **fields)
        return records

    def _run_when_built(self, candidate: Candidate, built: Future[dict[str, Any]], screen: float | None) -> TrialRecord:
        return self._run(candidate, built.result(), screen)

    def _build(self, candidate: Candidate, full_timeout: bool = False) -> dict[str, Any]:
        out_path = os.path.join(self._tmp.name, f"{candidate.key}.so")
        request = {"job": "build", "decisions": candidate.decisions, "out_path": out_path}
        if self.options.inject is not None:
            request["inject"] = self.options.inject(candidate)
        # The adaptive limit is asked again while the build runs: a build sent among a workload's first
        # ones (no usual build time known yet) is stopped as soon as the builds beside it show that it
        # is far slower than usual, not after the whole build_timeout (30 s of a 20-40 s tune).
        limit = self.options.build_timeout if full_timeout else (lambda: self._build_limit()[0])
        answer = self._call_builder(request, limit)
        if answer.get("ok"):
            self._build_secs.append(float(answer.get("build_secs", 0.0)))
        elif not full_timeout and "timed out" in str(answer.get("error", "")):
            why = self._build_limit()[1]
            answer["error"] += f" ({why})" if why else ""
        answer["out_path"] = out_path
        return answer

    def _build_limit(self) -> tuple[float, str]:
        """Seconds a build may take, and why when it is less than options.build_timeout."""
        options, done = self.options, sorted(self._build_secs)
        if options.build_timeout_vs_median <= 0 or len(done) < BUILDS_BEFORE_ADAPTIVE_TIMEOUT:
            return options.build_timeout, ""
        median = done[len(done) // 2]
        limit = max(options.min_build_timeout, options.build_timeout_vs_median * median)
        if limit >= options.build_timeout:
            return options.build_timeout, ""
        return limit, (f"{options.build_timeout_vs_median:g}x the median build ({median:.2f} s) of this workload's "
                       f"{len(done)} built candidates, at least {options.min_build_timeout:g} s")

    def _call_builder(self, request: dict[str, Any], timeout: float | Callable[[], float]) -> dict[str, Any]:
        """Send a request to an idle builder (one request per builder at a time)."""
        worker = self._workers.idle_builders.get()
        try:
            return worker.call({**request, **self._common}, timeout=timeout)
        except WorkerDied as died:
            return {"ok": False, "error": f"build {died}", "status": Status.BUILD_ERROR}
        finally:
            self._workers.idle_builders.put(worker)

    def _fields(self, candidate: Candidate, built: dict[str, Any]) -> dict[str, Any]:
        """The fields of a record of this candidate that do not depend on how its run went."""
        return dict(
            workload_key=self.space.workload.key,
            target_key=self.target.key,
            candidate_key=candidate.key,
            decisions=candidate.decisions,
            trace=built.get("trace"),
            build_secs=float(built.get("build_secs", 0.0)),
            versions=versions(),
        )

    def _run(self, candidate: Candidate, built: dict[str, Any], screen: float | None = None) -> TrialRecord:
        record = self._fields(candidate, built)
        if not built.get("ok"):
            return TrialRecord(status=Status.BUILD_ERROR, error=built.get("error", ""), **record)
        control = self._control_for(candidate)
        request = {
            "job": "run",
            "lib_path": built["out_path"],
            "arrays_path": self._arrays_path,
            "outputs": self._outputs,
            "repeat": self.options.repeat,
            "min_repeat_ms": self.options.min_repeat_ms,
            "slow_secs": self.options.slow_secs,
            "screen_secs": screen,
            "inject": self.options.inject(candidate) if self.options.inject is not None else None,
        }
        if control is not None:
            request["control_path"] = control.path
            request["screen_vs_control"] = screen / control.ranking_latency if screen else None
        try:
            answer = self._workers.run(request, timeout=self._run_timeout * (2 if control else 1))
        except WorkerDied as died:
            _remove(built["out_path"])
            return TrialRecord(status=died.status, error=str(died), **record)
        latencies = tuple(answer.get("latencies") or ())
        if answer.get("control_missing"):
            logger.warning("%s: the control's library %s did not load; %s is ranked by its own median",
                           self.space.workload.name, request["control_path"], candidate.key)
        if answer.get("device"):  # measured on a device of the fleet: the record says which
            record["origin"] = _device_origin(answer)
        done = TrialRecord(status=_status(answer), latencies=latencies, error=answer.get("error", ""),
                           ranking_latency=_on_control_scale(answer, control), **record)
        self._keep_if_leading(done, built)
        return done

    def _control_for(self, candidate: Candidate) -> Control | None:
        """The library to time `candidate` beside (MeasureOptions.control); None before any run was
        kept, or on a fleet.

        The control is the fastest run this Measurer keeps, no slower than `slow_secs`, and it stays
        the control until a kept run ranks CONTROL_SWITCH times faster. Why not always the fastest:
        each switch puts the tune's scale on a new control through one noisy ratio, and the fastest is
        the one whose ratio came out lowest, so switching at every new leader would walk the scale
        down; a control at most CONTROL_SWITCH times the leader's time costs little more to time.
        """
        if not self.options.control or self._workers.remote is not None:
            return None
        with self._kept_lock:
            current = self._control
            if current is not None and not os.path.exists(current.path):  # the finals used and removed it
                current = self._control = None
            leaders = sorted((latency, key) for key, (latency, _) in self._kept.items())
            if leaders and leaders[0][0] <= self.options.slow_secs:
                latency, key = leaders[0]
                if current is None or latency * CONTROL_SWITCH <= current.ranking_latency:
                    self._control = Control(key, self._kept[key][1]["out_path"], latency)
                    if current is not None and current.key not in self._kept:
                        _remove(current.path)
            control = self._control
        return control if control is not None and control.key != candidate.key else None

    def _drop_control(self) -> None:
        """Forget the control and remove its library: after the finals, which ranked the leaders anew,
        the next run starts a control of its own (a control no longer among the leaders keeps its file
        until then, _keep_if_leading)."""
        with self._kept_lock:
            control, self._control = self._control, None
        if control is not None and control.key not in self._kept:
            _remove(control.path)

    def _keep_if_leading(self, record: TrialRecord, built: dict[str, Any]) -> None:
        """Keep the library of a run among this Measurer's `finalists` fastest (time_together would
        otherwise build it again); remove the others' and the one it displaces."""
        with self._kept_lock:
            if record.ranked_latency is not None and self.options.finalists >= 2:
                self._kept[record.candidate_key] = (record.ranked_latency, built)
            leaders = sorted(self._kept, key=lambda key: self._kept[key][0])[: max(0, self.options.finalists)]
            dropped = [self._kept.pop(key)[1] for key in list(self._kept) if key not in leaders]
            kept = record.candidate_key in self._kept
            control = self._control.path if self._control is not None else None
        for old in dropped:
            if old["out_path"] != control:  # the control outlives its place among the leaders (until
                _remove(old["out_path"])   # _drop_control, or a rebuild of its candidate at its path, below)
        if not kept:
            _remove(built["out_path"])


@functools.lru_cache(maxsize=1)
def untrusted_input_worker() -> WorkerProcess:
    """The worker that parses TVM payloads from other machines (logs, MetaSchedule databases).

    TVM's JSON reader and printer can crash on crafted input (seen: a mutated module JSON
    segfaults in its printer), so untrusted payloads are read here, never in the caller. Started
    once per process, restarted after a crash, and gone when the process exits.
    """
    return WorkerProcess("untrusted-input", threads=1, memory_mb=MeasureOptions().worker_memory_mb())


def versions() -> dict[str, str]:
    """Versions that can change a measurement, stored with every record."""
    from . import __version__

    return {"autotune": __version__, "tvm": tvm.__version__, "python": sys.version.split()[0]}


@dataclass(frozen=True)
class Control:
    """A kept run's library that candidates are timed beside, and the seconds it is ranked by."""

    key: str  # its candidate's
    path: str
    ranking_latency: float


def _on_control_scale(answer: dict[str, Any], control: Control | None) -> float | None:
    """A correct run's latency on its control's scale: the median of its repeats' ratios to the control's
    repeats at the same moments, times the control's ranking latency; None without a control."""
    pairs = [(own, other) for own, other in zip(answer.get("latencies") or (), answer.get("control_latencies") or ())
             if own > 0 and other > 0]
    if control is None or not pairs or _status(answer) is not Status.OK:
        return None
    return statistics.median(own / other for own, other in pairs) * control.ranking_latency


def _status(answer: dict[str, Any]) -> Status:
    """A run's status as the worker answered it; anything it does not name is a run error."""
    return Status(answer["status"]) if answer.get("status") in Status._value2member_map_ else Status.RUN_ERROR


def _device_origin(answer: dict[str, Any]) -> str:
    """Where a remote trial was measured: the device's host name (as it reports it) and address."""
    host = (answer.get("info") or {}).get("host")
    return f"{host} ({answer['device']})" if host else f"rpc:{answer['device']}"


def _answer_within(stream: Any, timeout: float | Callable[[], float]) -> bool:
    """Whether `stream` has a line to read before the timeout (seconds from now, or a callable asked
    again every TIMEOUT_POLL_SECS for the current limit, counted from now) runs out."""
    if not callable(timeout):
        return bool(select.select([stream], [], [], timeout)[0])
    start = time.monotonic()
    while True:
        left = timeout() - (time.monotonic() - start)
        if left <= 0:
            return False
        if select.select([stream], [], [], min(left, TIMEOUT_POLL_SECS))[0]:
            return True


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass
