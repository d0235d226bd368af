"""Measure on remote devices registered with a TVM RPC tracker (a fleet).

TVM's RPC tracker is the field's engine for this (``python -m tvm.exec.rpc_tracker``,
``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY``); we use it as it is. Builds
stay local and parallel (cross-compiled when `RpcOptions.cross_compiler` is set); built
libraries are sent to whichever device under the key is free, timed there, and their outputs
are checked against a reference computed on a device of the fleet.

Every remote call runs in a local proxy worker (`measure.WorkerProcess`), one per device, so a
dead or hung device costs a timeout, never a hung session; a candidate whose device is lost
mid-measurement is retried on another device (`RpcOptions.retries`).

Records describe the remote device: its target and fingerprint come from the device itself
(`autotune fleet server` registers ``autotune.device_info``), or from the user's declaration
(`RpcOptions.device_target`, the JSON ``autotune fleet describe`` prints on the device) for
plain TVM servers.

Security: TVM's RPC has no authentication and runs the code it is sent. `serve` and
`run_tracker` bind to loopback unless another address is named.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import FleetError, TargetError
from .target import HardwareTarget, device_target, resolve_target

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DEFAULT_TRACKER_PORT = 9190
DEVICE_INFO_FUNC = "autotune.device_info"
# Proxy workers (one per device) each hold a TVM import (~200 MB); local builds limit how many
# devices can be kept busy long before this many.
MAX_PROXIES = 16
UNAUTHENTICATED = ("TVM's RPC has no authentication and runs any code it is sent: "
                   "expose it only on a network you trust")


@dataclass(frozen=True)
class RpcOptions:
    """Where the fleet is and how to use it.

    `device_target` declares the hardware of devices that do not report it (plain
    `tvm.exec.rpc_server`): a path to, or the dict of, ``{"target": {...}, "fingerprint": {...}}``
    as `autotune fleet describe` prints it on the device.
    """

    tracker: str  # "HOST:PORT"
    device_key: str
    device_target: str | os.PathLike[str] | dict[str, Any] | None = None
    cross_compiler: str | None = None  # e.g. "aarch64-linux-gnu-g++"; None: this machine's compiler
    device_wait: float = 120.0  # seconds to wait for a free device before giving up
    retries: int = 2  # other devices tried after a device is lost mid-measurement
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        parse_address(self.tracker)
        if not self.device_key or any(c.isspace() for c in self.device_key):
            raise FleetError(f"the device key must be a non-empty word (got {self.device_key!r})")
        if self.device_wait <= 0 or self.retries < 0:
            raise FleetError("device_wait must be positive and retries at least 0")

    @property
    def address(self) -> tuple[str, int]:
        return parse_address(self.tracker)

    def worker_fields(self) -> dict[str, Any]:
        """What a proxy worker needs to reach a device (plain JSON)."""
        host, port = self.address
        return {"tracker_host": host, "tracker_port": port, "device_key": self.device_key,
                "device_wait": self.device_wait, "connect_timeout": self.connect_timeout}


@dataclass(frozen=True)
class DeviceQueue:
    """One device key as the tracker sees it."""

    key: str
    servers: tuple[str, ...]  # "host:port" of each registered server
    free: int
    pending: int  # requests waiting for a device

    @property
    def total(self) -> int:
        return len(self.servers)


def parse_address(text: str, default_port: int = DEFAULT_TRACKER_PORT) -> tuple[str, int]:
    """'HOST:PORT' (or 'HOST') -> (host, port), with a one-line error for anything else."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep:
        host, port = str(text).strip(), str(default_port)
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FleetError(f"cannot read the address {text!r}; expected HOST:PORT, e.g. 127.0.0.1:{default_port}")
    return host, int(port)


# ---------------------------------------------------------------------------------------------
# the tracker, seen from the tuner


def tracker_summary(address: tuple[str, int], timeout: float = 10.0) -> dict[str, Any]:
    """The tracker's own summary (queue_info, server_info), asked with a timeout.

    TVM's `connect_tracker` retries for 60 s when nobody listens; a user who mistyped the port
    should hear about it at once.
    """
    from tvm.rpc import base

    try:
        value = _ask_tracker(address, [base.TrackerCode.SUMMARY], timeout, timeout)
    except socket.timeout:
        raise FleetError(f"the RPC tracker at {address[0]}:{address[1]} did not answer within {timeout:.0f} s") from None
    if not isinstance(value, list) or value[0] != base.TrackerCode.SUCCESS:
        raise FleetError(f"the RPC tracker at {address[0]}:{address[1]} answered {value!r}")
    return value[1]


def _ask_tracker(address: tuple[str, int], message: list[Any], connect_timeout: float, answer_timeout: float) -> Any:
    """One request to a TVM RPC tracker in its own protocol (TVM's `tvm.rpc.base` helpers), with time limits.

    Raises FleetError when the tracker cannot be reached, socket.timeout when its answer takes
    longer than `answer_timeout`.
    """
    from tvm.rpc import base

    where = f"{address[0]}:{address[1]}"
    try:
        sock = socket.create_connection(address, timeout=connect_timeout)
    except OSError as err:
        reason = "nobody listens there" if isinstance(err, ConnectionRefusedError) else str(err) or type(err).__name__
        raise FleetError(f"cannot reach the RPC tracker at {where} ({reason}); start one with "
                         f"`autotune fleet tracker --port {address[1]}`") from None
    with sock:
        try:
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        except (OSError, struct.error, RuntimeError):
            magic = None
        if magic != base.RPC_TRACKER_MAGIC:
            raise FleetError(f"{where} is not a TVM RPC tracker")
        base.sendjson(sock, message)
        sock.settimeout(answer_timeout)
        try:
            return base.recvjson(sock)
        except socket.timeout:
            raise
        except (OSError, RuntimeError, ValueError) as err:
            raise FleetError(f"the RPC tracker at {where} dropped the connection ({err})") from None


def fleet_status(tracker: str, timeout: float = 10.0) -> list[DeviceQueue]:
    """The device keys registered with a tracker: servers, free devices, waiting requests."""
    summary = tracker_summary(parse_address(tracker), timeout)
    servers: dict[str, list[str]] = {}
    for info in summary.get("server_info", []):
        key = str(info.get("key", ""))
        if key.startswith("server:"):
            host, port = info.get("addr", ["?", 0])
            servers.setdefault(key[len("server:"):], []).append(f"{host}:{port}")
    queues = summary.get("queue_info", {})
    keys = sorted(set(servers) | set(queues))
    return [DeviceQueue(k, tuple(sorted(servers.get(k, []))), int(queues.get(k, {}).get("free", 0)),
                        int(queues.get(k, {}).get("pending", 0))) for k in keys]


def device_queue(options: RpcOptions) -> DeviceQueue:
    """The tracker's entry for the options' key; a FleetError naming the keys it has otherwise."""
    queues = fleet_status(options.tracker, options.connect_timeout)
    for q in queues:
        if q.key == options.device_key and q.total:
            return q
    known = ", ".join(f"{q.key} ({q.total})" for q in queues if q.total) or "none"
    raise FleetError(f"the RPC tracker at {options.tracker} has no device with key {options.device_key!r} "
                     f"(keys with devices: {known}); start one with `autotune fleet server --rpc {options.tracker} "
                     f"--device-key {options.device_key}`")


def fleet_target(options: RpcOptions) -> HardwareTarget:
    """The hardware target of the fleet's devices: as a device reports it, or as the user declared it."""
    device_queue(options)
    reported = _ask_device_info(options)
    if options.device_target is not None:
        declared = declared_target(options.device_target)
        if reported is not None and reported.key != declared.key:
            logger.warning("device %r reports target key %s but %s was declared; using the declaration",
                           options.device_key, reported.key, declared.key)
        return declared
    if reported is None:
        raise FleetError(f"devices under key {options.device_key!r} do not report their hardware (plain "
                         "`tvm.exec.rpc_server`): start them with `autotune fleet server`, or declare it with "
                         "--device-target FILE (the JSON `autotune fleet describe` prints on the device)")
    return reported


def declared_target(spec: str | os.PathLike[str] | dict[str, Any]) -> HardwareTarget:
    """A HardwareTarget from `autotune fleet describe`'s JSON (a dict or a file holding it)."""
    data = spec
    if not isinstance(spec, dict):
        try:
            data = json.loads(Path(spec).read_text())
        except (OSError, ValueError) as err:
            raise FleetError(f"cannot read the device target {os.fspath(spec)!r}: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("target"), dict):
        raise FleetError('a device target is {"target": {...TVM target...}, "fingerprint": {...}} '
                         "as `autotune fleet describe` prints it")
    fingerprint = data.get("fingerprint")
    if not isinstance(fingerprint, dict) or not fingerprint:
        raise FleetError("the device target needs a non-empty 'fingerprint' (what identifies the device model)")
    try:
        return device_target(data["target"], fingerprint)
    except TargetError as err:
        raise FleetError(f"the declared device target is not valid: {err}") from None


def describe_device(target: Any = None) -> dict[str, Any]:
    """This machine as a device of a fleet: its target, fingerprint, key and host name (plain JSON)."""
    hw = resolve_target(target)
    return {**hw.to_json(), "host": socket.gethostname()}


def _ask_device_info(options: RpcOptions) -> HardwareTarget | None:
    """What one device of the key says it is (None for servers that cannot say), asked from a worker."""
    from .measure import MeasureOptions, WorkerDied, WorkerProcess

    worker = WorkerProcess("rpc-probe", threads=1, memory_mb=MeasureOptions().worker_memory_mb())
    try:
        answer = worker.call({"job": "device_info", **options.worker_fields()},
                             timeout=options.device_wait + options.connect_timeout + 30)
    except WorkerDied as died:
        raise FleetError(f"asking a device {options.device_key!r} what it is failed: {died}") from None
    finally:
        worker.kill()
    if answer.get("status") == "no_device":
        raise FleetError(answer["error"])
    if not answer.get("ok"):
        raise FleetError(f"asking a device {options.device_key!r} what it is failed: {answer.get('error')}")
    info = answer.get("info")
    return None if info is None else _checked_report(info, answer.get("device", "?"))


def _checked_report(info: dict[str, Any], device: str) -> HardwareTarget:
    """A device's report as a HardwareTarget whose key is recomputed here (never taken on trust)."""
    try:
        return device_target(info["target"], info["fingerprint"])
    except (KeyError, TypeError, TargetError) as err:
        raise FleetError(f"the device at {device} sent a report that is not a target: {err}") from None


# ---------------------------------------------------------------------------------------------
# the tuner's side of measurement: proxy workers, one per device


class RemoteRunner:
    """Runs requests on the fleet's devices through local proxy workers, one per device, in parallel.

    A request whose device is lost (connection closed, server killed, proxy timed out) is sent
    again, to whichever device is free, up to `retries` times. Every answer names the device
    that produced it; a device that reports another target key than the session's is an error
    (a device key must name identical devices).
    """

    def __init__(self, options: RpcOptions, target: HardwareTarget, slots: int, memory_mb: int):
        from .measure import WorkerProcess

        self.options, self.target = options, target
        slots = max(1, min(slots, MAX_PROXIES))
        self.proxies = [WorkerProcess(f"rpc{i}", threads=1, memory_mb=memory_mb) for i in range(slots)]
        self.idle: queue.Queue[Any] = queue.Queue()
        for proxy in self.proxies:
            self.idle.put(proxy)
            proxy.start()
        self.threads = ThreadPoolExecutor(max_workers=len(self.proxies))
        self._lock = threading.Lock()
        self.lost: list[str] = []  # "device: reason", for the session's log
        self._verified: set[str] = set()  # device reports already checked against the session's target

    def call(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run one request ("rpc_reference" or "rpc_run") on a free device; retried on another if the device is lost."""
        from .measure import WorkerDied

        request = {**request, **self.options.worker_fields(), "session_timeout": timeout}
        limit = timeout + self.options.device_wait + self.options.connect_timeout + 30
        failures = []
        for _ in range(1 + self.options.retries):
            proxy = self.idle.get()
            try:
                answer = proxy.call(request, timeout=limit)
            except WorkerDied as died:  # the proxy itself hung or crashed: treat the device as lost
                answer = {"status": "device_lost", "error": f"proxy {died}", "device": "?"}
            finally:
                self.idle.put(proxy)
            if answer.get("status") == "no_device":
                raise FleetError(answer["error"])
            self._check_device(answer)
            if answer.get("status") != "device_lost":
                return answer
            failures.append(f"{answer.get('device', '?')}: {answer.get('error', '')}")
            with self._lock:
                self.lost.append(failures[-1])
            logger.warning("device lost while measuring (%s); trying another", failures[-1])
        return {"ok": False, "status": "run_error",
                "error": f"the device was lost {len(failures)} times while running this candidate "
                         f"(it may crash its device): {'; '.join(failures)}"[:2000]}

    def _check_device(self, answer: dict[str, Any]) -> None:
        """Stop if the answering device is not the session's; each distinct report is checked once."""
        info = answer.get("info")
        if self.options.device_target is not None or not info or not info.get("key"):
            return  # a declaration overrides what devices report; plain TVM servers report nothing
        report = json.dumps(info, sort_keys=True)
        if report in self._verified:
            return
        if _checked_report(info, answer.get("device", "?")).key != self.target.key:
            raise FleetError(f"the device at {answer.get('device')} under key {self.options.device_key!r} is not the "
                             f"device this session measures (target key {self.target.key}): a device key must name "
                             "identical devices")
        with self._lock:
            self._verified.add(report)

    def close(self) -> None:
        self.threads.shutdown(wait=True)
        for proxy in self.proxies:
            proxy.kill()


# ---------------------------------------------------------------------------------------------
# the proxy worker's side: one remote session per request


class NoDevice(Exception):
    """No device of the key became free in time."""


def request_device(req: dict[str, Any]) -> tuple[Any, str]:
    """An RPC session on a free device of the key, and its address; NoDevice after `device_wait` s.

    Asked of the tracker here rather than through TVM's `TrackerSession.request`, which waits
    without a time limit when no device is free.
    """
    from tvm import rpc
    from tvm.rpc import base

    address = (req["tracker_host"], int(req["tracker_port"]))
    try:
        value = _ask_tracker(address, [base.TrackerCode.REQUEST, req["device_key"], "", 1],
                             float(req["connect_timeout"]), float(req["device_wait"]))
    except socket.timeout:
        raise NoDevice(f"no device with key {req['device_key']!r} became free within "
                       f"{float(req['device_wait']):.0f} s (see `autotune fleet status`)") from None
    except FleetError as err:
        raise NoDevice(str(err)) from None
    url, port, match_key = value[1]
    timeout = int(float(req.get("session_timeout") or 60) + 0.999)  # the server ends the session after it
    return rpc.connect(url, port, match_key, session_timeout=timeout), f"{url}:{port}"


def device_report(session: Any) -> dict[str, Any] | None:
    """What the device says it is (autotune fleet server), or None (a plain TVM server)."""
    try:
        func = session.get_function(DEVICE_INFO_FUNC)
    except Exception:  # plain TVM servers do not have it
        return None
    return json.loads(func())


def session_alive(session: Any) -> bool:
    """Whether a remote session still answers (after an error: the candidate's fault, or the device's?).

    A real round trip (a one-byte upload, which every TVM RPC server supports): a session whose
    process died still answers local queries such as `device.exist`.
    """
    try:
        session.upload(bytearray(b"1"), "autotune-alive")
        return True
    except Exception:
        return False


# ---------------------------------------------------------------------------------------------
# the fleet's side: tracker and device servers


def run_tracker(host: str = LOOPBACK, port: int = DEFAULT_TRACKER_PORT, port_end: int | None = None,
                on_ready: Any = None) -> None:
    """Run a TVM RPC tracker in this process until it is killed (TVM's own tracker, bound to `host`)."""
    from tvm.rpc.tracker import PopenTrackerServerState

    _warn_if_exposed(host)
    state = PopenTrackerServerState(host, port=port, port_end=port_end or port + 10, silent=True)
    if on_ready is not None:
        on_ready(f"{host}:{state.port}")
    state.thread.join()


def serve(tracker: str, device_key: str, host: str = LOOPBACK, port: int = 9090, port_end: int | None = None,
          target: Any = None, on_ready: Any = None) -> None:
    """Run a TVM RPC server for this device in this process, registered with the tracker under `device_key`.

    It is TVM's own server with two additions: it answers ``autotune.device_info`` (this
    device's target and fingerprint, so records describe it), and a session whose generated
    code crashes is logged instead of stopping the server (TVM's server stops serving after a
    session process dies by a signal: one crashing candidate would take the device out of the
    fleet).
    """
    import tvm_ffi
    from tvm.rpc import server as tvm_server

    host_addr = parse_address(tracker)
    _warn_if_exposed(host)
    device = describe_device(target)
    # Kernels run in forked session processes with as many threads as the reported target says.
    os.environ["TVM_NUM_THREADS"] = str(device["target"].get("num-cores", 1))
    info = json.dumps(device)
    tvm_ffi.register_global_func(DEVICE_INFO_FUNC, lambda: info, override=True)
    _keep_serving_after_crashes(tvm_server)
    state = tvm_server.PopenRPCServerState(host, port=port, port_end=port_end or port + 100, tracker_addr=host_addr,
                                           key=device_key, silent=True)
    if on_ready is not None:
        on_ready(f"{host}:{state.port}")
    state.thread.join()


def _keep_serving_after_crashes(tvm_server: Any) -> None:
    """Wrap TVM's per-session `_serving` so that a session process killed by a signal does not end the server."""
    serving = tvm_server._serving
    if getattr(serving, "autotune_wrapped", False):
        return

    def serving_that_survives(sock: Any, addr: Any, opts: Any, load_library: Any) -> None:
        cwd = os.getcwd()
        try:
            serving(sock, addr, opts, load_library)
        except RuntimeError as err:  # "Child process N exited unsuccessfully with error code -11"
            logger.warning("a session from %s ended abnormally (%s); serving on", addr, err)
            os.chdir(cwd)
            sock.close()

    serving_that_survives.autotune_wrapped = True  # type: ignore[attr-defined]
    tvm_server._serving = serving_that_survives


def _warn_if_exposed(host: str) -> None:
    if host not in (LOOPBACK, "localhost", "::1"):
        logger.warning("binding to %s: %s", host, UNAUTHENTICATED)
