"""Vector math from glibc's libmvec: vector calls lowered to it, within a few ulp, scoped to autotune's builds."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te, tirx

from autotune import vector_math
from autotune.target import resolve_target

HOST = resolve_target("llvm").target
ISAS = vector_math.register_isas(HOST)
needs_libmvec = pytest.mark.skipif(not ISAS, reason="not x86 with glibc's libmvec")
ROWS, COLS = 8, 128


def _kernel(name: str, dtype: str, lanes: int) -> tvm.IRModule:
    """out[i, j] = name(a[i, j]) (pow: a ** b), its last loop vectorized by `lanes`."""
    inputs = [te.placeholder((ROWS, COLS), dtype, name=n) for n in ("a", "b")[: 2 if name == "pow" else 1]]
    out = te.compute((ROWS, COLS), lambda i, j: getattr(tirx, name)(*(x[i, j] for x in inputs)), name="out")
    sch = tvm.s_tir.Schedule(te.create_prim_func([*inputs, out]))
    _, j = sch.get_loops(sch.get_sblock("out"))
    sch.vectorize(sch.split(j, [None, lanes])[1])
    return sch.mod


def _inputs(name: str, dtype: str) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "pow":
        return [rng.uniform(0.1, 4, (ROWS, COLS)).astype(dtype), rng.uniform(-3, 3, (ROWS, COLS)).astype(dtype)]
    low = 0.01 if name.startswith("log") else -8.0
    return [rng.uniform(low, 8, (ROWS, COLS)).astype(dtype)]


def _run(executable_module, arrays: list[np.ndarray]) -> np.ndarray:
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays] + [tvm.runtime.tensor(np.zeros_like(arrays[0]), tvm.cpu())]
    executable_module(*tensors)
    return tensors[-1].numpy()


def _ulps(got: np.ndarray, arrays: list[np.ndarray], name: str) -> float:
    reference = np.vectorize(math.erf) if name == "erf" else getattr(np, {"pow": "power", "atan": "arctan"}.get(name, name))
    want = reference(*(a.astype(np.float64) for a in arrays))
    return float((np.abs(got - want) / np.spacing(np.abs(want).astype(got.dtype))).max())


def _extern_calls(executable) -> set[str]:
    asm = executable.mod.inspect_source("asm")
    return {c for c in re.findall(r"call\w*\s+\*?([\w.]+)@PLT", asm) if "tvm" not in c.lower()}


@needs_libmvec
@pytest.mark.parametrize("name", ["exp", "log", "tanh", "sin", "pow", "erf", "log1p", "atan"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("registers", [1, 4])  # one register-wide call per vector, or a vector split in 4
def test_vector_calls_become_libmvec_calls_within_4_ulp(name: str, dtype: str, registers: int) -> None:
    widest = max(ISAS)
    lanes = widest // tvm.DataType(dtype).bits
    executable = vector_math.build(_kernel(name, dtype, lanes * registers), HOST)
    arity = 2 if name == "pow" else 1
    expected = vector_math.libmvec_name(name, tvm.DataType(f"{dtype}x{lanes}"), ISAS[widest], arity)
    assert _extern_calls(executable) == {expected}  # no scalar libm call left
    arrays = _inputs(name, dtype)
    assert _ulps(_run(executable.mod, arrays), arrays, name) <= 4  # glibc's bound for libmvec


@needs_libmvec
def test_builds_outside_autotune_keep_tvm_lowering() -> None:
    mod = _kernel("exp", "float32", 16)
    assert all(call.startswith("_ZGV") for call in _extern_calls(vector_math.build(mod, HOST)))
    plain = tvm.compile(mod, target=HOST)  # after a vector_math.build in this process
    assert _extern_calls(plain) == {"expf"}
    arrays = _inputs("exp", "float32")
    assert _ulps(_run(plain.mod, arrays), arrays, "exp") <= 1


@needs_libmvec
def test_erf_is_vectorized_only_within_autotune_builds() -> None:
    """TVM does not vectorize erf: within a build it is, with a per-lane fallback for odd widths."""
    erf = tvm.ir.Op.get("tirx.erf")
    arrays = _inputs("erf", "float32")
    odd = vector_math.build(_kernel("erf", "float32", 6), HOST)  # 6 lanes: no libmvec variant
    assert _extern_calls(odd) == {"erff"}
    assert _ulps(_run(odd.mod, arrays), arrays, "erf") <= 1
    assert erf.get_attr("TVectorizable") is None  # as TVM left it
    plain = tvm.compile(_kernel("erf", "float32", 16), target=HOST)
    assert _extern_calls(plain) == {"erff"}
    assert _ulps(_run(plain.mod, arrays), arrays, "erf") <= 1


def test_off_for_other_targets_and_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    arm = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    assert vector_math.register_isas(arm) == {}
    monkeypatch.setenv("AUTOTUNE_VECTOR_MATH", "0")
    assert vector_math.register_isas(HOST) == {}
    assert "expf" in _extern_calls(vector_math.build(_kernel("exp", "float32", 16), HOST))


@needs_libmvec
def test_an_exported_library_loads_libmvec_itself(tmp_path: Path) -> None:
    """A library written by autotune runs in a process that never imported autotune (a deployment)."""
    path = tmp_path / "exp.so"
    vector_math.export_library(vector_math.build(_kernel("exp", "float32", 64), HOST), str(path), HOST)
    arrays = _inputs("exp", "float32")
    np.save(tmp_path / "a.npy", arrays[0])
    script = (
        "import sys, numpy as np, tvm\n"
        "lib = tvm.runtime.load_module(sys.argv[1]); a = np.load(sys.argv[2])\n"
        "t = [tvm.runtime.tensor(a, tvm.cpu()), tvm.runtime.tensor(np.zeros_like(a), tvm.cpu())]\n"
        "lib['main'](*t); np.save(sys.argv[3], t[1].numpy())\n"
        "assert 'autotune' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "a.npy"), str(tmp_path / "out.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _ulps(np.load(tmp_path / "out.npy"), arrays, "exp") <= 4


def _target_flag(executable) -> str:
    """The target TVM wrote into the built LLVM module: what LLVM is set up with when it compiles it."""
    ir = executable.mod.inspect_source("ll")
    return re.search(r'!"tvm_target", !"([^"]*)"', ir).group(1)


def test_builds_carry_the_codegen_options_and_keep_a_target_s_own() -> None:
    mod = _kernel("exp", "float32", 16)
    assert "-dag-maps-huge-region:uint=100" in _target_flag(vector_math.build(mod, HOST))
    assert "cl-opt" not in _target_flag(tvm.compile(mod, target=HOST))  # scoped to autotune's builds
    own = tvm.target.Target({**HOST.export(), "cl-opt": ["-dag-maps-huge-region:uint=7", "-enable-misched:bool=false"]})
    flag = _target_flag(vector_math.build(mod, own))
    assert "-dag-maps-huge-region:uint=7" in flag and "uint=100" not in flag and "-enable-misched" in flag
    assert vector_math.codegen_target(tvm.target.Target({"kind": "c"})).export().get("cl-opt") is None
    with_host = tvm.target.Target(HOST.export(), host=HOST.export())  # TVM compiles CPU code with the host
    assert "-dag-maps-huge-region:uint=100" in _target_flag(vector_math.build(mod, with_host))
    own_with_host = tvm.target.Target(own.export(), host=HOST.export())  # the host's options are its own
    host_options = vector_math.codegen_target(own_with_host).host.export()["cl-opt"]
    assert "-dag-maps-huge-region:uint=100" in host_options


@needs_libmvec
def test_first_builds_of_many_threads_register_the_lowerings_once() -> None:
    """Threads entering `lowering` together for the first time in a process register libmvec's lowerings
    once; a second registration would wrap the first as its fallback. Registration is slowed so that
    the threads overlap in it every time."""
    script = '''
import threading, time
from autotune import vector_math
from autotune.target import resolve_target
registered = []
register = vector_math.tirx.register_intrin_lowering
def slow_register(*args, **kwargs):
    time.sleep(0.002)
    registered.append(args[0])
    return register(*args, **kwargs)
vector_math.tirx.register_intrin_lowering = slow_register
target = resolve_target("llvm").target
start = threading.Barrier(4)
def first_build():
    start.wait()
    with vector_math.lowering(target):
        pass
threads = [threading.Thread(target=first_build) for _ in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(len(registered))
'''
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) == len(vector_math.FUNCTIONS) + len(vector_math.SCALARIZED_BY_TVM)
