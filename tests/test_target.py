"""Hardware targets: mcpu detection from /proc/cpuinfo, stable keys, clear errors, a real compile."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.target import codegen

from autotune import target as T
from autotune.errors import TargetError
from autotune.target import HardwareTarget, detect_mcpu, host_fingerprint, make_key, resolve_target

REPO = Path(__file__).resolve().parents[1]
SPR_FLAGS = (
    "fpu sse sse2 ht lm pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand "
    "hypervisor lahf_lm abm fsgsbase bmi1 avx2 bmi2 erms invpcid avx512f avx512dq rdseed adx avx512ifma "
    "clflushopt clwb avx512cd sha_ni avx512bw avx512vl avx_vnni avx512_bf16 wbnoinvd avx512vbmi pku waitpkg "
    "avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid cldemote movdiri "
    "movdir64b serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8"
)


def _proc_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


@pytest.fixture
def fake_cpuinfo(monkeypatch):
    """Pretend to run on another CPU: replaces the parsed /proc/cpuinfo, clears the detection cache."""

    def install(info: dict[str, str]) -> None:
        monkeypatch.setattr(T, "_cpuinfo", lambda: info)
        detect_mcpu.cache_clear()

    yield install
    detect_mcpu.cache_clear()


def test_llvm_cpu_and_none_give_the_same_key():
    keys = {resolve_target(spec).key for spec in ("llvm", "cpu", None, "LLVM")}
    assert len(keys) == 1
    assert len(keys.pop()) == 20


def test_key_is_stable_across_fresh_processes():
    code = "from autotune.target import resolve_target; print(resolve_target('llvm').key)"
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    outs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
        .stdout.strip()
        .splitlines()[-1]
        for _ in range(2)
    ]
    assert outs[0] == outs[1] == resolve_target("llvm").key


def test_detected_mcpu_is_valid_and_uses_only_host_isa():
    flags = _proc_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this platform")
    mcpu = detect_mcpu()
    assert codegen.llvm_is_valid_cpu(mcpu, codegen.llvm_get_system_triple())
    features = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
    implied = {T._flag_for(str(f)) for f in features} - {None}
    assert implied <= flags, f"{mcpu} implies ISA the host lacks: {sorted(implied - flags)}"
    assert "avx2" in implied or "avx2" not in flags  # it is not a needlessly old CPU either


def test_detection_is_fast():
    detect_mcpu.cache_clear()
    T._candidate_isa.cache_clear()
    start = time.perf_counter()
    detect_mcpu()
    assert time.perf_counter() - start < 1.0


def test_sapphire_rapids_flags_pick_an_amx_cpu(fake_cpuinfo):
    fake_cpuinfo({"vendor_id": "GenuineIntel", "flags": SPR_FLAGS})
    # LLVM gives both names the same feature set; what matters is AMX/AVX512-FP16 and no AMD-only ISA.
    assert detect_mcpu() in ("sapphirerapids", "emeraldrapids")


def test_zen4_flags_pick_znver4(fake_cpuinfo):
    zen4 = set(SPR_FLAGS.split()) - {"amx_bf16", "amx_tile", "amx_int8", "avx512_fp16", "avx_vnni"} | {"sse4a"}
    fake_cpuinfo({"vendor_id": "AuthenticAMD", "flags": " ".join(sorted(zen4))})
    assert detect_mcpu() == "znver4"


def test_unreadable_cpuinfo_falls_back_to_llvm(fake_cpuinfo):
    fake_cpuinfo({})
    assert detect_mcpu() == codegen.llvm_get_system_cpu()


def test_dict_and_target_inputs_get_mcpu_and_cores():
    host = resolve_target("llvm")
    from_dict = resolve_target({"kind": "llvm"})
    from_target = resolve_target(tvm.target.Target({"kind": "llvm", "num-cores": 1}))
    assert from_dict.key == host.key
    assert from_dict.target.attrs["mcpu"] == detect_mcpu()
    assert from_dict.num_cores == T.available_cores() >= 1
    assert from_target.target.attrs["mcpu"] == detect_mcpu()
    assert from_target.num_cores == 1
    assert resolve_target({"kind": "llvm", "mcpu": "x86-64-v3"}).target.attrs["mcpu"] == "x86-64-v3"
    assert resolve_target(host) is host


def test_key_changes_with_cores_and_fingerprint():
    one = resolve_target({"kind": "llvm", "num-cores": 1})
    two = resolve_target({"kind": "llvm", "num-cores": 2})
    assert one.key != two.key
    other_cpu = dict(one.fingerprint, model_name="Some Other CPU")
    assert make_key(one.target_json(), other_cpu) != one.key
    assert make_key(one.target_json(), dict(one.fingerprint)) == one.key


@pytest.mark.parametrize(
    "spec",
    ["cuda", "llvm -mcpu=x", "nonsense", 42, {"kind": "nonsense"}, {"kind": "llvm", "bogus": 1},
     {"kind": "llvm", "mcpu": "foo"}, {"kind": "llvm", "num-cores": 0}],
)
def test_bad_inputs_raise_one_line_target_error(spec):
    with pytest.raises(TargetError) as info:
        resolve_target(spec)
    message = str(info.value)
    assert "\n" not in message and repr(spec) in message
    err = info.value  # no TVM traceback chained onto ours
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_fingerprint_is_json_and_has_no_volatile_fields():
    fp = host_fingerprint(2)
    assert json.loads(json.dumps(fp)) == fp
    assert set(fp) == {"kind", "model_name", "vendor", "family", "model", "isa", "num_cores", "cache"}
    assert set(fp["cache"]) == {"l1d", "l2", "l3"}
    assert fp["num_cores"] == 2 and fp["isa"] == sorted(fp["isa"])
    text = json.dumps(fp).lower()
    for volatile in ("mhz", "bogomips", "microcode", "apicid", "core id", "hostname"):
        assert volatile not in text
    assert host_fingerprint(2) == fp


def test_to_json_round_trip():
    ht = resolve_target("llvm")
    data = json.loads(json.dumps(ht.to_json()))
    back = HardwareTarget.from_json(data)
    assert back.key == ht.key and back.to_json() == data
    assert data["target"]["mcpu"] == detect_mcpu() and ht.kind == "llvm"


def test_non_cpu_target_object_is_accepted():
    ht = resolve_target(tvm.target.Target({"kind": "cuda", "arch": "sm_80"}))
    assert ht.kind == "cuda" and ht.fingerprint == {"kind": "cuda"}


def test_compile_and_run_with_resolved_target():
    n = 64
    a = te.placeholder((n,), "float32", name="A")
    b = te.compute((n,), lambda i: a[i] * 2.0 + 1.0, name="B")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
    lib = tvm.compile(mod, target=resolve_target("llvm").target)
    x = np.random.rand(n).astype("float32")
    out = tvm.runtime.tensor(np.zeros(n, "float32"))
    lib["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_allclose(out.numpy(), x * 2 + 1, rtol=1e-6)


@pytest.mark.parametrize("config,registers", [
    ({"kind": "llvm", "mcpu": "skylake-avx512"}, T.VectorRegisters(32, 64)),
    ({"kind": "llvm", "mcpu": "haswell"}, T.VectorRegisters(16, 32)),
    ({"kind": "llvm", "mcpu": "x86-64"}, T.VectorRegisters(16, 16)),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}, T.VectorRegisters(32, 16)),
    ({"kind": "c"}, None),
])
def test_vector_register_file_follows_the_isa(config, registers):
    assert T.vector_registers(tvm.target.Target(config)) == registers
    if registers is not None:
        assert registers.lanes(32) == registers.bytes // 4 and registers.lanes(8) == registers.bytes
