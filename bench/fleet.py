"""Measurement throughput on a fleet: one device vs two, through a real TVM RPC tracker (issue 7).

Starts a tracker and device servers on 127.0.0.1 (`autotune fleet tracker` / `autotune fleet
server --cores C`), then tunes the same workloads with the same random candidates (strategy
random, one seed) three ways: measured on this machine (no RPC), on a fleet of one device, and
on a fleet of two. Prints trials per second (of the whole `tune` call: asking the fleet what
its devices are, the reference run and the final re-measurement included) and the speed-up
of two devices over one, with the tuner's default timing
(5 repeats of at least 30 ms) and with longer runs (`--long-ms`, as on a slow device or with
long kernels), where measurement rather than building limits the rate.

Builds are local (one builder per core here); runs go to whichever device is free. On one
machine the "devices" share its cores with each other and with the builders, so this measures
the RPC path's overhead and the parallelism it gets, not what separate machines would give.

    python bench/fleet.py --trials 32 --write bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import autotune
from autotune import ops
from autotune.fleet import RpcOptions, fleet_status

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tune_suite import cpu_secs  # noqa: E402

WORKLOADS = [
    ("matmul", "256,256,256", {}),
    ("conv2d_nchw", "1,64,28,28,64,3,3", {"bias": "true", "relu": "true"}),
]


@dataclass
class Run:
    label: str
    workload: str
    min_repeat_ms: int
    trials: int
    ok: int
    wall: float
    best_ms: float | None

    @property
    def trials_per_sec(self) -> float:
        return self.trials / self.wall


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    proc.stdout.readline()  # its ready line
    return proc


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def wait_free(tracker: str, key: str, n: int) -> None:
    deadline = time.monotonic() + 60
    while not any(q.key == key and q.free >= n for q in fleet_status(tracker)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} devices {key!r} never became free")
        time.sleep(0.2)


def tune_once(label: str, workload: autotune.Workload, trials: int, db: str, cores: int, builders: int,
              min_repeat_ms: int, rpc: RpcOptions | None) -> Run:
    """One tuning run; here, the target is this machine with `cores` threads, like each device."""
    target = "llvm" if rpc else {"kind": "llvm", "num-cores": cores}
    start_time = time.perf_counter()
    result = autotune.tune(workload, target=target, trials=trials, database=db, strategy="random", seed=0,
                           measure=autotune.MeasureOptions(builders=builders, min_repeat_ms=min_repeat_ms), rpc=rpc)
    wall = time.perf_counter() - start_time
    return Run(label, workload.name, min_repeat_ms, trials, result.counts().get("ok", 0), wall,
               result.best_latency * 1e3 if result.best_latency else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=32, help="trials per run (default 32)")
    parser.add_argument("--cores", type=int, default=1, help="threads per device (default 1)")
    parser.add_argument("--long-ms", type=int, default=300, help="min_repeat_ms of the long-run setting (default 300)")
    parser.add_argument("--write", metavar="PATH", help="append this run's section to a Markdown file")
    args = parser.parse_args()

    builders = autotune.target.available_cores()
    tracker_port = free_port()
    tracker = f"127.0.0.1:{tracker_port}"
    began, (busy0, own0) = time.perf_counter(), cpu_secs()
    procs = [start(["fleet", "tracker", "--port", str(tracker_port)])]
    runs: list[Run] = []
    try:
        for n, key in ((1, "one"), (2, "two")):
            for _ in range(n):
                procs.append(start(["fleet", "server", "--rpc", tracker, "--device-key", key, "--port",
                                    str(free_port()), "--cores", str(args.cores)]))
            wait_free(tracker, key, n)
        with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
            for min_repeat_ms in (30, args.long_ms):
                for op, shape, options in WORKLOADS:
                    workload = ops.make(op, shape, **options)
                    for label, rpc in (("this machine", None), ("fleet, 1 device", RpcOptions(tracker, "one")),
                                       ("fleet, 2 devices", RpcOptions(tracker, "two"))):
                        db = os.path.join(tmp, f"{workload.name}-{min_repeat_ms}-{label.replace(' ', '_')}.db")
                        run = tune_once(label, workload, args.trials, db, args.cores, builders, min_repeat_ms, rpc)
                        print(f"[fleet] {run.workload} {min_repeat_ms} ms {label}: {run.trials_per_sec:.2f} trials/s",
                              file=sys.stderr)
                        runs.append(run)
    finally:
        stop(procs)
    total = time.perf_counter() - began
    busy1, own1 = cpu_secs()
    others = max(0.0, (busy1 - busy0) - (own1 - own0))
    text = report(runs, args, builders, total, others)
    print(text)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as f:
            f.write("\n" + text + "\n")
    return 0


def report(runs: list[Run], args: argparse.Namespace, builders: int, total: float, others: float) -> str:
    lines = [
        f"## fleet: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {os.cpu_count()} logical CPUs; tracker and device servers on 127.0.0.1, each device "
        f"`--cores {args.cores}`; {builders} local builders; autotune {autotune.__version__}",
        f"- command: `python bench/fleet.py --trials {args.trials} --cores {args.cores} --long-ms {args.long_ms}`; "
        f"total {total:.0f} s",
        f"- other processes kept {others:.0f} core-s busy during the run ({others / total:.2f} cores on average)",
        "- the devices share this machine's cores with each other and with the builders: latencies on a "
        "2-device fleet are contended here, which separate machines would not be",
        "",
        "| workload | min_repeat_ms | measured on | trials | ok | wall s | trials/s | vs 1 device | best ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        one = next(r for r in runs if (r.workload, r.min_repeat_ms, r.label) ==
                   (run.workload, run.min_repeat_ms, "fleet, 1 device"))
        best = f"{run.best_ms:.4g}" if run.best_ms else "-"
        lines.append(f"| {run.workload} | {run.min_repeat_ms} | {run.label} | {run.trials} | {run.ok} | {run.wall:.1f} | "
                     f"{run.trials_per_sec:.2f} | {run.trials_per_sec / one.trials_per_sec:.2f}x | {best} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
