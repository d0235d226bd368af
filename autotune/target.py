"""Hardware targets: the TVM target to compile for, plus a fingerprint of the device it runs on.

Tuning results are only valid on the hardware they were measured on, so every record is keyed
by a `HardwareTarget.key`: a hash of the canonical TVM target and a device fingerprint (CPU
model, ISA flags that matter for codegen, cores used, cache sizes). Identical machines give
identical keys, anything else a different key (MetaSchedule ignores the target on lookup,
apache/tvm #15549; we do not).

The CPU name (`mcpu`) is derived from /proc/cpuinfo rather than LLVM's own host detection,
which is wrong on VMs whose CPUID lies (it says "rocketlake" on a Sapphire-Rapids-class VM):
we pick the LLVM CPU that enables the most of the host's ISA features and none it lacks, so
generated code never uses an instruction the CPU does not have.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import tvm
from tvm.target import codegen

from .errors import TargetError

logger = logging.getLogger(__name__)

# LLVM feature name -> /proc/cpuinfo flag, for the ISA extensions that change generated code.
ISA_FLAGS: dict[str, str] = {
    "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1", "sse4.2": "sse4_2", "sse4a": "sse4a",
    "popcnt": "popcnt", "lzcnt": "abm", "movbe": "movbe", "bmi": "bmi1", "bmi2": "bmi2",
    "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "fma4": "fma4", "xop": "xop", "tbm": "tbm",
    "aes": "aes", "pclmul": "pclmulqdq", "sha": "sha_ni", "gfni": "gfni", "vaes": "vaes", "vpclmulqdq": "vpclmulqdq",
    "avx512f": "avx512f", "avx512dq": "avx512dq", "avx512cd": "avx512cd", "avx512bw": "avx512bw",
    "avx512vl": "avx512vl", "avx512ifma": "avx512ifma", "avx512vbmi": "avx512vbmi",
    "avx512vbmi2": "avx512_vbmi2", "avx512vnni": "avx512_vnni", "avx512bitalg": "avx512_bitalg",
    "avx512vpopcntdq": "avx512_vpopcntdq", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
    "avx512vp2intersect": "avx512_vp2intersect", "avx512er": "avx512er", "avx512pf": "avx512pf",
    "avxvnni": "avx_vnni", "avxifma": "avx_ifma", "avxvnniint8": "avx_vnni_int8",
    "avxvnniint16": "avx_vnni_int16", "avxneconvert": "avx_ne_convert",
    "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16", "amx-fp16": "amx_fp16",
    "amx-complex": "amx_complex", "egpr": "apx",
}
HOST_SPECS = ("llvm", "cpu")
_ALIASES = {"skx", "slm", "core-avx-i", "core-avx2", "corei7-avx"}  # plus every name with "_"
_AMD_CPU = re.compile(r"^(znver|bdver|btver|amdfam|barcelona|k[68]|athlon|opteron|geode)")
_GENERIC_CPU = re.compile(r"^(generic|x86-64|i[3-6]86|c3|winchip|lakemont)")
_ACCEPTED = "accepted: 'llvm' or 'cpu' (this host's CPU), a dict such as {'kind': 'llvm', 'num-cores': 2}, a tvm.target.Target"


@dataclass(frozen=True, eq=False)
class HardwareTarget:
    """A TVM target together with the fingerprint of the device it runs on and their stable key.

    >>> ht = resolve_target("llvm")
    >>> ht.kind, len(ht.key)
    ('llvm', 20)
    """

    target: tvm.target.Target
    fingerprint: dict[str, Any]
    key: str

    @property
    def kind(self) -> str:
        return str(self.target.kind.name)

    @property
    def num_cores(self) -> int:
        return int(self.target.attrs.get("num-cores", 1))

    @property
    def vector_registers(self) -> "VectorRegisters | None":
        """The SIMD register file of an llvm target, from its ISA features (None when unknown)."""
        return vector_registers(self.target)

    def target_json(self) -> dict[str, Any]:
        """The TVM target as a canonical plain-JSON dict (sorted keys, lists instead of tuples)."""
        return _plain(dict(self.target.export()))

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "target": self.target_json(), "fingerprint": self.fingerprint}

    @staticmethod
    def from_json(data: dict[str, Any]) -> "HardwareTarget":
        return HardwareTarget(tvm.target.Target(data["target"]), dict(data["fingerprint"]), str(data["key"]))


@dataclass(frozen=True)
class VectorRegisters:
    """A CPU's SIMD register file: how many registers, and how many bytes each holds."""

    count: int
    bytes: int

    def lanes(self, bits: int) -> int:
        """Elements of `bits` bits that one register holds."""
        return max(1, self.bytes * 8 // bits)


def vector_registers(target: tvm.target.Target) -> VectorRegisters | None:
    """The architectural SIMD registers an llvm target's code can use: x86 has 32 of 64 bytes with
    AVX-512, 16 of 32 bytes with AVX, 16 of 16 bytes with SSE; AArch64 has 32 NEON registers of 16
    bytes. None for other targets, whose register tiles are then not bounded by it."""
    if str(target.kind.name) != "llvm":
        return None
    if llvm_triple(target).startswith(("aarch64", "arm64")):
        return VectorRegisters(32, 16)
    features = x86_features(target)
    if features is None:
        return None
    if "avx512f" in features:
        return VectorRegisters(32, 64)
    if "avx" in features:
        return VectorRegisters(16, 32)
    return VectorRegisters(16, 16)


def llvm_triple(target: tvm.target.Target) -> str:
    """The triple an llvm target compiles for: its mtriple, else this host's."""
    return str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())


def x86_features(target: tvm.target.Target) -> frozenset[str] | None:
    """The LLVM CPU features (avx2, avx512f, ...) of an x86 llvm target; None for any other target."""
    if str(target.kind.name) != "llvm" or not llvm_triple(target).startswith(("x86_64", "i686", "i386")):
        return None
    return frozenset(str(f) for f in codegen.llvm_get_cpu_features(target))


def resolve_target(spec: Any = None) -> HardwareTarget:
    """Turn None, "llvm", "cpu", a dict, a tvm.target.Target or a HardwareTarget into a HardwareTarget.

    >>> resolve_target({"kind": "llvm", "num-cores": 1}).num_cores
    1
    """
    if isinstance(spec, HardwareTarget):
        return spec
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in HOST_SPECS):
        config: dict[str, Any] = {"kind": "llvm"}
    elif isinstance(spec, dict):
        config = dict(_make_target(spec, spec).export())
    elif isinstance(spec, tvm.target.Target):
        config = dict(spec.export())
    else:
        raise TargetError(f"cannot use target {spec!r}; {_ACCEPTED}")
    if config.get("kind") == "llvm":
        config = _fill_llvm(config, spec)
    target = _make_target(config, spec)
    fingerprint = host_fingerprint(int(config["num-cores"])) if config["kind"] == "llvm" else {"kind": config["kind"]}
    return HardwareTarget(target, fingerprint, make_key(_plain(dict(target.export())), fingerprint))


def device_target(target_json: dict[str, Any], fingerprint: dict[str, Any]) -> HardwareTarget:
    """The HardwareTarget of another device, exactly as described (nothing filled in from this host).

    Used for devices of a fleet, whose target and fingerprint come from the device itself or
    from the user; the key is computed here, so a description cannot claim another key.
    """
    if not isinstance(target_json, dict) or not isinstance(fingerprint, dict) or not fingerprint:
        raise TargetError("a device is described by a TVM target dict and a non-empty fingerprint dict")
    target = _make_target(dict(target_json), target_json)
    plain = _plain(dict(target.export()))
    return HardwareTarget(target, dict(fingerprint), make_key(plain, dict(fingerprint)))


def make_key(target_json: dict[str, Any], fingerprint: dict[str, Any]) -> str:
    """sha256 (first 20 hex chars) of the canonical target JSON and the canonical fingerprint JSON."""
    text = "\n".join(json.dumps(v, sort_keys=True, separators=(",", ":")) for v in (target_json, fingerprint))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@functools.lru_cache(maxsize=None)
def detect_mcpu() -> str:
    """The LLVM CPU name that enables the most of this host's ISA features and none it lacks."""
    flags = _host_flags()
    system_cpu = str(codegen.llvm_get_system_cpu())
    if not flags:
        return system_cpu
    vendor = _cpuinfo().get("vendor_id", "")
    scored = []
    for cpu, isa in _candidate_isa().items():
        if isa <= flags:  # never let codegen use an ISA the CPU lacks
            scored.append((-len(isa), cpu != system_cpu, _vendor_rank(cpu, vendor), cpu))
    if not scored:
        logger.warning("no LLVM CPU fits the host's ISA flags; using generic x86-64")
        return "x86-64"
    best = min(scored)[-1]
    if best != system_cpu:
        logger.info("LLVM detects mcpu=%s, /proc/cpuinfo flags give mcpu=%s", system_cpu, best)
    return best


def host_fingerprint(num_cores: int) -> dict[str, Any]:
    """What identifies this CPU for tuning; nothing that varies between identical machines or runs."""
    info = _cpuinfo()
    return {
        "kind": "cpu",
        "model_name": info.get("model name", ""),
        "vendor": info.get("vendor_id", ""),
        "family": _to_int(info.get("cpu family", "")),
        "model": _to_int(info.get("model", "")),
        "isa": sorted(_host_flags() & set(ISA_FLAGS.values())),
        "num_cores": int(num_cores),
        "cache": _cache_sizes(),
    }


def fingerprint_similarity(a: dict[str, Any], b: dict[str, Any]) -> float:
    """How alike two device fingerprints are, from 0 (different kinds) to 1 (identical).

    Used only to pick starting points for tuning on a new device (`tune(..., similar=True)`):
    the ISA sets count most (they decide which instructions the schedules can use), then the
    CPU identity, core count and cache sizes (they decide which tile sizes fit).
    """
    if a.get("kind") != b.get("kind"):
        return 0.0
    if a == b:
        return 1.0
    isa_a, isa_b = set(a.get("isa", ())), set(b.get("isa", ()))
    isa = len(isa_a & isa_b) / len(isa_a | isa_b) if isa_a | isa_b else 1.0
    identity = sum(a.get(k) == b.get(k) for k in ("vendor", "model_name", "family", "model")) / 4
    cores = min(a.get("num_cores", 1), b.get("num_cores", 1)) / max(a.get("num_cores", 1), b.get("num_cores", 1), 1)
    caches_a, caches_b = a.get("cache") or {}, b.get("cache") or {}
    levels = set(caches_a) | set(caches_b)
    cache = sum(min(caches_a.get(k, 0), caches_b.get(k, 0)) / max(caches_a.get(k, 0), caches_b.get(k, 0), 1)
                for k in levels) / len(levels) if levels else 1.0
    return 0.4 * isa + 0.2 * identity + 0.2 * cores + 0.2 * cache


def fingerprint_differences(here: dict[str, Any], there: dict[str, Any]) -> list[str]:
    """What differs between two device fingerprints, in words, for errors that refuse a record."""
    out = []
    for key in sorted(set(here) | set(there)):
        a, b = here.get(key), there.get(key)
        if a == b:
            continue
        if key == "isa":
            missing, extra = sorted(set(b or ()) - set(a or ())), sorted(set(a or ()) - set(b or ()))
            parts = ([f"it needs {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} which this CPU lacks"]
                     if missing else []) + ([f"this CPU also has {', '.join(extra[:6])}"] if extra else [])
            out.append("ISA: " + "; ".join(parts))
        else:
            out.append(f"{key}: {a!r} here, {b!r} there")
    return out


def available_cores() -> int:
    """Physical cores this process may run on: the affinity mask, capped by the physical core count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False)  # None where unknown
    return max(1, min(cores, physical) if physical else cores)


# ---------------------------------------------------------------- private helpers


def _fill_llvm(config: dict[str, Any], spec: Any) -> dict[str, Any]:
    config = dict(config)
    system_triple = str(codegen.llvm_get_system_triple())
    if config.get("mtriple") == system_triple:
        config.pop("mtriple")  # TVM adds the host triple only when mcpu is missing: keep keys equal
    triple = config.get("mtriple", system_triple)
    if config.get("mcpu") in (None, "", "native") and triple == system_triple:
        config["mcpu"] = detect_mcpu()
    mcpu = config.get("mcpu")
    if mcpu and not codegen.llvm_is_valid_cpu(mcpu, triple):
        raise TargetError(f"target {spec!r}: LLVM does not know mcpu {mcpu!r} for {triple}; {_ACCEPTED}")
    if "num-cores" not in config:
        config["num-cores"] = available_cores()
    if int(config["num-cores"]) < 1:
        raise TargetError(f"target {spec!r}: num-cores must be at least 1")
    return config


def _make_target(config: dict[str, Any], spec: Any) -> tvm.target.Target:
    try:
        return tvm.target.Target(config)
    except Exception as exc:  # TVM raises ValueError / TVMError with multi-line text
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        first = first.split(". Target creation from")[0]
        raise TargetError(f"cannot use target {spec!r} ({first}); {_ACCEPTED}") from None


@functools.lru_cache(maxsize=None)
def _candidate_isa() -> dict[str, frozenset[str]]:
    """cpuinfo flags each LLVM CPU name enables (64-bit, non-alias names only)."""
    out = {}
    for cpu in codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm"})):
        cpu = str(cpu)
        if "_" in cpu or cpu in _ALIASES:
            continue
        features = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))
        if "64bit" in features:
            out[cpu] = frozenset(flag for feat in features if (flag := _flag_for(str(feat))))
    return out


def _flag_for(feature: str) -> str | None:
    if feature in ISA_FLAGS:
        return ISA_FLAGS[feature]
    if feature.startswith("avx10"):
        return "avx10"  # no host we know reports it: a CPU that needs it is never chosen
    if feature.startswith("amx-"):
        return feature.replace("-", "_")
    return None


def _vendor_rank(cpu: str, vendor: str) -> int:
    if _GENERIC_CPU.match(cpu):
        return 2
    is_amd = bool(_AMD_CPU.match(cpu))
    return 0 if is_amd == (vendor == "AuthenticAMD") else 1


@functools.lru_cache(maxsize=None)
def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo; empty when unreadable (non-Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            block = f.read().split("\n\n")[0]
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in block.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def _host_flags() -> frozenset[str]:
    return frozenset(_cpuinfo().get("flags", "").split())


@functools.lru_cache(maxsize=None)
def _cache_sizes() -> dict[str, int | None]:
    sizes: dict[str, int | None] = {"l1d": None, "l2": None, "l3": None}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / name).read_text().strip() for name in ("level", "type", "size"))
        except OSError:
            continue
        name = "l1d" if level == "1" and kind == "Data" else f"l{level}" if kind == "Unified" else None
        if name in sizes:
            sizes[name] = _parse_size(size)
    return sizes


def _parse_size(text: str) -> int | None:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)", text.strip().upper())
    if not match:
        return None
    return int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2)]


def _to_int(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _plain(value: Any) -> Any:
    """Make TVM's export() JSON-able: tuples -> lists, keys as str, unknown objects as str."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "Array":
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
