"""Measuring on a fleet: a real TVM RPC tracker and device servers, all on 127.0.0.1 only.

Servers are started with `autotune fleet server --cores 1`, so each device is this machine with
one thread; its target key is therefore the key of {"kind": "llvm", "num-cores": 1} here.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import tvm

import autotune
from autotune.database import Database
from autotune.errors import FleetError
from autotune.fleet import RpcOptions, describe_device, fleet_status
from autotune.measure import MeasureOptions, Measurer, WorkerPool
from autotune.records import Status
from autotune.search_space import SearchSpace
from autotune.space_config import load_space_config
from autotune.target import resolve_target

from conftest import te_matmul

ONE_CORE = {"kind": "llvm", "num-cores": 1}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(args: list[str], ready_text: str) -> subprocess.Popen:
    """Start a long-running command in its own process group; wait for its ready line."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    line = proc.stdout.readline()
    if ready_text not in line:
        _kill(proc)
        raise RuntimeError(f"{args} did not start: {line!r}")
    return proc


def _kill(proc: subprocess.Popen) -> None:
    """Kill a server with everything it forked (its session processes): the device is gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class LocalFleet:
    """A tracker and device servers on loopback, started through the CLI as a user would."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tracker = _start([sys.executable, "-m", "autotune.cli", "fleet", "tracker", "--port", str(self.port)],
                              "RPC tracker listening")
        self.servers: list[subprocess.Popen] = []

    def server(self, key: str) -> subprocess.Popen:
        proc = _start([sys.executable, "-m", "autotune.cli", "fleet", "server", "--rpc", self.address, "--device-key",
                       key, "--port", str(_free_port()), "--cores", "1"], "device server listening")
        self.servers.append(proc)
        return proc

    def plain_tvm_server(self, key: str) -> subprocess.Popen:
        """TVM's own server, which cannot say what hardware it is."""
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
                                 "--port-end", str(port + 1), "--tracker", self.address, "--key", key],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.servers.append(proc)
        return proc

    def wait_free(self, key: str, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(q.key == key and q.free >= n for q in fleet_status(self.address)):
                return
            time.sleep(0.2)
        raise TimeoutError(f"{n} devices {key!r} not free within {timeout} s: {fleet_status(self.address)}")

    def options(self, key: str, **kwargs) -> RpcOptions:
        return RpcOptions(self.address, key, **kwargs)

    def close(self) -> None:
        for proc in [*self.servers, self.tracker]:
            _kill(proc)


@pytest.fixture(scope="module")
def fleet():
    local = LocalFleet()
    yield local
    local.close()


def _origins(db_path: Path) -> list[str]:
    with Database(db_path) as db:
        return [r["origin"] for r in db._db.query("SELECT origin FROM trials ORDER BY id")]


def test_everything_started_binds_to_loopback_only(fleet):
    server = fleet.server("loop")
    fleet.wait_free("loop", 1)
    for proc in (fleet.tracker, server):
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet") if c.status == "LISTEN"]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening


def test_fleet_status_shows_devices(fleet):
    fleet.server("status")
    fleet.server("status")
    fleet.wait_free("status", 2)
    out = subprocess.run([sys.executable, "-m", "autotune.cli", "fleet", "status", "--rpc", fleet.address],
                         capture_output=True, text=True, check=True).stdout
    row = next(line for line in out.splitlines() if line.startswith("status"))
    assert row.split()[1:3] == ["2", "2"]


def test_tune_through_two_devices_records_describe_the_device(fleet, db_path):
    fleet.server("pair")
    fleet.server("pair")
    fleet.wait_free("pair", 2)
    rpc = fleet.options("pair", cross_compiler="g++")  # the "cross" compiler here is this machine's own
    result = autotune.tune(te_matmul(), trials=12, database=db_path, seed=0, rpc=rpc)

    device = resolve_target(ONE_CORE)  # each device is this machine with one thread
    assert result.target.key == device.key
    assert result.counts().get("ok", 0) >= 10 and result.best is not None
    origins = set(_origins(db_path))
    assert len(origins) == 2 and all("127.0.0.1:" in o for o in origins), origins  # both devices measured
    with Database(db_path) as db:
        assert db.target_row(device.key)["fingerprint"] == device.fingerprint
        # The finals ran on a device (rpc_time_together), not the fallback re-measuring the best alone:
        # four leaders each keep one check of finals_rounds timings. (After the finals rescale, a
        # trial that was not a finalist may rank among the top four, so look at every trial.)
        ranked = db.top_k(result.workload.key, device.key, 12)
        checked = {r.id: checks for r in ranked if (checks := db.checks(r.id))}
    rounds = autotune.MeasureOptions().finals_rounds
    assert sorted(len(c["latencies"]) for checks in checked.values() for c in checks) == [rounds] * 4, checked
    assert ranked[0].id == result.best.id and result.best.id in checked
    # The fleet's best applies on an identical device, and computes the right thing.
    mod = autotune.apply_best(te_matmul(), ONE_CORE, db_path)
    a, b = np.random.rand(64, 32).astype("float32"), np.random.rand(32, 48).astype("float32")
    args = [tvm.runtime.tensor(x) for x in (a, b, np.zeros((64, 48), "float32"))]
    tvm.compile(mod, target=device.target)["main"](*args)
    np.testing.assert_allclose(args[2].numpy(), a @ b, rtol=1e-4)


def test_a_wrong_result_on_a_device_is_caught_like_here(fleet, db_path):
    fleet.server("wrong")
    fleet.wait_free("wrong", 1)
    result = autotune.tune(te_matmul(), trials=2, database=db_path, seed=5, rpc=fleet.options("wrong"),
                           measure=MeasureOptions(inject=lambda candidate: "wrong"))
    assert [r.status for r in result.trials] == [Status.WRONG_RESULT] * 2 and result.best is None
    assert all("differs by up to" in r.error for r in result.trials)


def test_device_killed_mid_session_the_session_finishes_on_the_other(fleet, db_path):
    doomed, survivor = fleet.server("kill"), fleet.server("kill")
    fleet.wait_free("kill", 2)
    doomed_port = [c.laddr.port for c in psutil.Process(doomed.pid).net_connections(kind="inet")
                   if c.status == "LISTEN"][0]
    killed_at: list[int] = []

    def kill_after_four(progress):
        if progress.done == 4:
            _kill(doomed)
            killed_at.append(progress.done)

    result = autotune.tune(te_matmul(), trials=16, database=db_path, seed=1, progress=kill_after_four,
                           rpc=fleet.options("kill", device_wait=30))
    assert killed_at == [4]
    assert len(result.trials) == 16
    # No trial is lost to the killed device. A build may time out (some candidates of the space take
    # LLVM over 30 s to compile): that happens on this machine, not on a device.
    lost = [(r.status, r.error) for r in result.trials if r.status not in (Status.OK, Status.UNSTABLE, Status.BUILD_ERROR)]
    assert not lost, lost
    late = _origins(db_path)[6:]  # a run or two may have been in flight when the device died
    assert late and all(f":{doomed_port})" not in origin for origin in late)
    with Database(db_path) as db:
        assert db._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert survivor.poll() is None


def test_candidate_on_a_lost_device_is_retried_on_another(fleet, tmp_path):
    """Both devices busy with a long run; one dies: its candidate is measured again on the other."""
    doomed, _ = fleet.server("retry"), fleet.server("retry")
    fleet.wait_free("retry", 2)
    rpc = fleet.options("retry", device_wait=60)
    target = autotune.fleet.fleet_target(rpc)
    space = SearchSpace(autotune.as_workload(te_matmul()), load_space_config("cpu"))
    rng = random.Random(3)
    candidates = [space.sample(rng) for _ in range(2)]
    # Each run holds its device for >= 5 s: the doomed device must still be running its candidate when it is
    # killed, once both are busy, however far apart the two builds finished (1.2 s a repeat lost that race once).
    options = MeasureOptions(repeat=2, min_repeat_ms=2500, rpc=rpc)
    with WorkerPool(target, options) as pool, Measurer(space, target, pool=pool) as measurer:
        measurer.prepare()
        records: list = []
        worker = threading.Thread(target=lambda: records.extend(measurer.measure(candidates)))
        worker.start()
        _wait_busy(fleet, "retry")
        _kill(doomed)
        worker.join(timeout=120)
        assert not worker.is_alive()
        lost = list(pool.remote.lost)
    assert [r.status for r in records] == [Status.OK, Status.OK], [r.error for r in records]
    assert len(lost) == 1


def _wait_busy(fleet: LocalFleet, key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(q.key == key and q.free == 0 for q in fleet_status(fleet.address)):
            time.sleep(0.5)  # the runs are under way
            return
        time.sleep(0.05)
    raise TimeoutError("the devices never became busy")


def test_a_crashing_session_does_not_take_the_device_out_of_the_fleet(fleet, tmp_path):
    """TVM's own server stops serving after a session segfaults; ours logs it and serves on."""
    from tvm import te

    from autotune.fleet import request_device

    fleet.server("crash")
    fleet.wait_free("crash", 1)
    A = te.placeholder((64,), name="A")
    index = te.placeholder((64,), name="I", dtype="int32")
    gather = te.compute((64,), lambda i: A[index[i]], name="B")
    lib_path = str(tmp_path / "gather.so")
    tvm.compile(tvm.IRModule({"main": te.create_prim_func([A, index, gather])}), target=ONE_CORE).export_library(lib_path)
    request = {**fleet.options("crash").worker_fields(), "session_timeout": 30}

    def run(indices: np.ndarray) -> np.ndarray:
        session, _ = request_device(request)
        session.upload(lib_path)
        lib, dev = session.load_module("gather.so"), session.cpu(0)
        args = [tvm.runtime.tensor(x, dev) for x in (np.arange(64, dtype="float32"), indices, np.zeros(64, "float32"))]
        lib["main"](*args)
        return args[2].numpy()

    with pytest.raises(Exception):
        run(np.full(64, 1 << 30, "int32"))  # reads far out of bounds: the session process dies
    fleet.wait_free("crash", 1)
    np.testing.assert_array_equal(run(np.arange(64, dtype="int32")[::-1].copy()), np.arange(64)[::-1])


def test_plain_tvm_servers_need_a_declared_target(fleet, db_path):
    fleet.plain_tvm_server("plain")
    fleet.wait_free("plain", 1)
    with pytest.raises(FleetError, match="do not report their hardware.*--device-target"):
        autotune.tune(te_matmul(), trials=2, database=db_path, rpc=fleet.options("plain"))
    declared = describe_device(ONE_CORE)  # what `autotune fleet describe --cores 1` prints on the device
    result = autotune.tune(te_matmul(), trials=4, database=db_path, seed=2,
                           rpc=fleet.options("plain", device_target=declared))
    assert result.target.key == resolve_target(ONE_CORE).key
    assert result.counts().get("ok", 0) >= 3


def test_unreachable_tracker_is_one_clear_error(db_path):
    port = _free_port()  # nobody listens there
    start = time.monotonic()
    with pytest.raises(FleetError, match=f"cannot reach the RPC tracker at 127.0.0.1:{port}"):
        autotune.tune(te_matmul(), trials=2, database=db_path, rpc=RpcOptions(f"127.0.0.1:{port}", "cpu"))
    assert time.monotonic() - start < 15
    cli = subprocess.run([sys.executable, "-m", "autotune.cli", "tune", "matmul", "--shape", "16,16,16", "--db",
                          str(db_path), "--rpc", f"127.0.0.1:{port}", "--device-key", "cpu"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and len(cli.stderr.strip().splitlines()) == 1, cli.stderr


def test_something_else_on_the_port_is_not_taken_for_a_tracker(db_path):
    with socket.socket() as listener:  # listens, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = "127.0.0.1:%d" % listener.getsockname()[1]
        with pytest.raises(FleetError, match=f"{address} is not a TVM RPC tracker"):
            autotune.tune(te_matmul(), trials=2, database=db_path, rpc=RpcOptions(address, "cpu", connect_timeout=2))


def test_unknown_device_key_names_the_keys_there(fleet, db_path):
    fleet.server("known")
    fleet.wait_free("known", 1)
    with pytest.raises(FleetError, match=r"no device with key 'nosuch'.*known \(1\)"):
        autotune.tune(te_matmul(), trials=2, database=db_path, rpc=fleet.options("nosuch"))


def test_when_every_device_is_gone_the_session_stops_instead_of_hanging(fleet, db_path):
    gone = fleet.server("gone")
    fleet.wait_free("gone", 1)
    killed: list[bool] = []

    def kill_after_two(progress):
        if progress.done == 2 and not killed:
            _kill(gone)
            killed.append(True)

    start = time.monotonic()
    with pytest.raises(FleetError, match="no device with key 'gone' became free within 5 s"):
        autotune.tune(te_matmul(), trials=12, database=db_path, seed=4, batch_size=4, progress=kill_after_two,
                      rpc=fleet.options("gone", device_wait=5))
    assert time.monotonic() - start < 120
    assert len(_origins(db_path)) >= 2  # what was measured before is kept


def test_rpc_options_are_checked():
    with pytest.raises(FleetError, match="HOST:PORT"):
        RpcOptions("127.0.0.1:notaport", "cpu")
    with pytest.raises(FleetError, match="device key"):
        RpcOptions("127.0.0.1:9190", "two words")
    with pytest.raises(FleetError, match="fingerprint"):
        autotune.fleet.declared_target({"target": ONE_CORE})


def test_cli_model_session_on_the_fleet_resumes_on_it(fleet, tmp_path, capsys):
    from autotune.cli import main
    from test_session import onnx_model

    fleet.server("model")
    fleet.wait_free("model", 1)
    model, db = onnx_model(tmp_path / "mlp.onnx"), str(tmp_path / "fleet.db")
    assert main(["tune-model", str(model), "--trials", "4", "--batch-size", "2", "--db", db, "--seed", "0",
                 "--rpc", fleet.address, "--device-key", "model"]) == 0
    out = capsys.readouterr().out
    assert "session 1 finished" in out and "not evaluated here" in out
    assert main(["resume", "1", "--trials", "6", "--db", db]) == 0  # the session remembers its fleet
    assert "6/6 trials" in capsys.readouterr().out
    origins = _origins(Path(db))
    assert len(origins) >= 6 and all("127.0.0.1:" in o for o in origins)
