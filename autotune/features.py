"""Features of a candidate for the cost model: fixed-length vectors, deterministic.

Two parts, concatenated:
- TVM's MetaSchedule `PerStoreFeature` of the scheduled function (one 164-wide row per buffer
  store), pooled over stores by sum, max and mean so every workload gives the same length;
- features of our own decisions that TVM's analysis does not see directly: tile sizes per level
  (log2), the working set of the register and cache tiles against the device's cache sizes, the
  vector width, the parallel extent against the cores, unroll, write-back level, and the
  workload's size, so that one model can rank candidates of different workloads.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms

from .search_space import Candidate, SearchSpace, apply_candidate
from .target import HardwareTarget

FEATURE_VERSION = 2  # 2: loops_rfactor, n_kept_producers
_STORE_WIDTH = 164
_MAX_LEVELS = 4
DECISION_FEATURES = (
    [f"log2_spatial_tile_l{i}" for i in range(_MAX_LEVELS)]
    + [f"log2_reduction_tile_l{i}" for i in range(2)]
    + ["log2_vector", "log2_register_tile", "register_tile_over_registers", "log2_l1_bytes_over_l1",
       "log2_l2_bytes_over_l2", "log2_parallel", "parallel_over_cores", "write_level", "local_accumulator",
       "epilogue_fused", "log2_unroll", "n_tiled", "n_compute_at", "loops_vector", "loops_parallel",
       "log2_flops", "log2_output_elems", "loops_rfactor", "n_kept_producers"]
)
FEATURE_LENGTH = 3 * _STORE_WIDTH + len(DECISION_FEATURES)


class FeatureExtractor:
    """Turns candidates of one workload into a (n, FEATURE_LENGTH) float32 matrix."""

    def __init__(self, space: SearchSpace, target: HardwareTarget):
        self.space = space
        self.target = target
        self._context = _feature_context(space.workload.mod, target.target)
        self._extractor = ms.feature_extractor.PerStoreFeature(extract_workload=False)
        self._args_info = ms.arg_info.ArgInfo.from_prim_func(space.workload.mod["main"])
        cache = target.fingerprint.get("cache") or {}
        self._l1 = float(cache.get("l1d") or 32 * 1024)
        self._l2 = float(cache.get("l2") or 1024 * 1024)

    def extract(self, candidates: Sequence[Candidate], schedules: Sequence[Any] | None = None) -> np.ndarray:
        """Features of each candidate; pass the schedules when the caller already applied them."""
        if not candidates:
            return np.zeros((0, FEATURE_LENGTH), dtype=np.float32)
        if schedules is None:
            schedules = [apply_candidate(self.space, c) for c in candidates]
        measure = [ms.MeasureCandidate(s, self._args_info) for s in schedules]
        stores = self._extractor.extract_from(self._context, measure)
        rows = [np.concatenate([_pool(t.numpy()), self._decision_features(c)]) for c, t in zip(candidates, stores)]
        return np.asarray(rows, dtype=np.float32)

    def _decision_features(self, candidate: Candidate) -> np.ndarray:
        blocks = candidate.decisions.get("blocks", {})
        tiles = [d for d in blocks.values() if "spatial" in d]
        loops = [d for d in blocks.values() if "vector" in d]
        out = dict.fromkeys(DECISION_FEATURES, 0.0)
        if tiles:
            out.update(self._tile_features(tiles[0]))
        out["epilogue_fused"] = float(any(r.epilogue for r in self.space.rules if r.rule == "tile"))
        out["log2_unroll"] = math.log2(1 + candidate.decisions.get("unroll", 0))
        out["n_tiled"] = float(len(tiles))
        out["n_compute_at"] = float(sum(1 for d in blocks.values() if d.get("depth", 0) > 0))
        out["loops_vector"] = math.log2(max([d["vector"] for d in loops] or [1]))
        out["loops_parallel"] = float(max([d["parallel"] for d in loops] or [0]))
        out["loops_rfactor"] = math.log2(max([int(d.get("rfactor", 1)) for d in blocks.values()] or [1]))
        out["n_kept_producers"] = float(sum(1 for d in blocks.values() if d.get("inline") is False))
        workload = self.space.workload
        out["log2_flops"] = math.log2(1 + workload.flops)
        out["log2_output_elems"] = math.log2(1 + sum(math.prod(a.shape) for a in workload.outputs))
        return np.array([out[name] for name in DECISION_FEATURES], dtype=np.float32)

    def _tile_features(self, tile: dict[str, Any]) -> dict[str, float]:
        spatial, reduction = tile["spatial"], tile["reduction"]
        level = [math.prod(f[i] for f in spatial) for i in range(len(spatial[0]))] if spatial else [1]
        rlevel = [math.prod(f[i] for f in reduction) for i in range(len(reduction[0]))] if reduction else [1]
        out = {f"log2_spatial_tile_l{i}": math.log2(v) for i, v in enumerate(level[:_MAX_LEVELS])}
        out.update({f"log2_reduction_tile_l{i}": math.log2(v) for i, v in enumerate(rlevel[:2])})
        register = level[-1]  # elements of the innermost (register) tile
        inner_reduce = rlevel[-1]
        below_writeback = math.prod(level[tile["write_level"]:])
        elem = 4.0
        out["log2_vector"] = math.log2(spatial[-1][-1]) if spatial else 0.0
        out["log2_register_tile"] = math.log2(register)
        out["register_tile_over_registers"] = register / (32.0 * 16.0)
        out["log2_l1_bytes_over_l1"] = math.log2(elem * (register + inner_reduce * (register ** 0.5) * 2) / self._l1)
        out["log2_l2_bytes_over_l2"] = math.log2(elem * below_writeback * max(1, inner_reduce) / self._l2 + 1e-9)
        out["log2_parallel"] = math.log2(level[0])
        out["parallel_over_cores"] = level[0] / max(1, self.target.num_cores)
        out["write_level"] = float(tile["write_level"])
        out["local_accumulator"] = float(tile["accumulator"] == "local")
        return out


def _feature_context(mod: tvm.IRModule, target: tvm.target.Target) -> ms.TuneContext:
    """A TuneContext holding just the module and target, which is all PerStoreFeature reads.

    TuneContext.__init__ imports tvm.s_tir.tensor_intrin first, which costs ~20-40 s on our
    machines; the FFI constructor it ends with does not need it, so we call that directly.
    """
    context = ms.TuneContext.__new__(ms.TuneContext)
    context.__init_handle_by_constructor__(
        ms._ffi_api.TuneContext, mod, target, None, None, "autotune", 1, -1, None  # type: ignore[attr-defined]
    )
    return context


def _pool(rows: np.ndarray) -> np.ndarray:
    if rows.size == 0:
        return np.zeros(3 * _STORE_WIDTH, dtype=np.float32)
    return np.concatenate([rows.sum(axis=0), rows.max(axis=0), rows.mean(axis=0)])

