"""Features of a candidate for the cost model: fixed-length vectors, deterministic.

Two parts, concatenated:
- TVM's MetaSchedule `PerStoreFeature` of the scheduled function (one 164-wide row per buffer
  store), made scale-free (see `_scale_free`), then pooled over stores by sum, max and mean so
  every workload gives the same length;
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

from .search_space import Candidate, SearchSpace, apply_candidate, vector_axis
from .target import HardwareTarget, available_cores

# 2: loops_rfactor, n_kept_producers; 3: store counts relative to the workload's size;
# 4: vector_axis_not_last, pack_level (and log2_vector of the vectorized axis, not always the last)
FEATURE_VERSION = 4
_STORE_WIDTH = 164

# Columns of a PerStoreFeature row (TVM's per_store_feature.cc; the counts are log2(1 + x)):
# 0-15 arithmetic op counts, 16-26 / 27-37 / 38-48 vectorize / unroll / parallel (num, prod, len,
# 8 loop positions), 49-56 GPU, 57-146 five buffers x 18 access features (3 access types, bytes,
# unique bytes, lines, unique lines, 3 reuse types, reuse distance in iterations and in bytes,
# reuse count, bytes / unique bytes / lines / unique lines per reuse, stride), 147-156 arithmetic
# intensity curve, 157-160 allocation sizes, 161 outer loop product, 162 loops, 163 auto-unroll.
_OP_COUNT_COLUMNS = list(range(16)) + [17, 28]  # op counts, vectorized and unrolled extents
_BUFFER_COLUMNS = [57 + 18 * b + i for b in range(5) for i in (3, 4, 5, 6, 11, 13, 14, 15, 16)]
_ALLOC_COLUMNS = [157, 158, 159, 160, 161]
_ABSENT = -32.0  # a zero count (log2 scale) after scaling: far below any real ratio
_MAX_LEVELS = 4
DECISION_FEATURES = (
    [f"log2_spatial_tile_l{i}" for i in range(_MAX_LEVELS)]
    + [f"log2_reduction_tile_l{i}" for i in range(2)]
    + ["log2_vector", "log2_register_tile", "register_tile_over_registers", "log2_l1_bytes_over_l1",
       "log2_l2_bytes_over_l2", "log2_parallel", "parallel_over_cores", "write_level", "local_accumulator",
       "epilogue_fused", "log2_unroll", "n_tiled", "n_compute_at", "loops_vector", "loops_parallel",
       "log2_flops", "log2_output_elems", "loops_rfactor", "n_kept_producers", "vector_axis_not_last",
       "pack_level"]
)
FEATURE_LENGTH = 3 * _STORE_WIDTH + len(DECISION_FEATURES)


class FeatureExtractor:
    """Turns candidates of one workload into a (n, FEATURE_LENGTH) float32 matrix."""

    def __init__(self, space: SearchSpace, target: HardwareTarget):
        self.space = space
        self.target = target
        self._context = _feature_context(space.workload.mod, target.target, threads=available_cores())
        self._extractor = ms.feature_extractor.PerStoreFeature(extract_workload=False)
        self._args_info = ms.arg_info.ArgInfo.from_prim_func(space.workload.mod["main"])
        self._scale = _workload_scale(space.workload)
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
        rows = [np.concatenate([_pool(_scale_free(t.numpy(), self._scale)), self._decision_features(c)])
                for c, t in zip(candidates, stores)]
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
        out["n_compute_at"] = float(sum(1 for d in blocks.values() if d.get("depth", 0) > 0 or d.get("at", 0) > 0))
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
        axis = vector_axis(tile)
        out["log2_vector"] = math.log2(spatial[axis][-1]) if spatial else 0.0
        out["vector_axis_not_last"] = float(axis != len(spatial) - 1)
        out["pack_level"] = float(tile.get("pack", 0))
        out["log2_register_tile"] = math.log2(register)
        out["register_tile_over_registers"] = register / (32.0 * 16.0)
        out["log2_l1_bytes_over_l1"] = math.log2(elem * (register + inner_reduce * (register ** 0.5) * 2) / self._l1)
        out["log2_l2_bytes_over_l2"] = math.log2(elem * below_writeback * max(1, inner_reduce) / self._l2 + 1e-9)
        out["log2_parallel"] = math.log2(level[0])
        out["parallel_over_cores"] = level[0] / max(1, self.target.num_cores)
        out["write_level"] = float(tile["write_level"])
        out["local_accumulator"] = float(tile["accumulator"] == "local")
        return out


def _feature_context(mod: tvm.IRModule, target: tvm.target.Target, threads: int) -> ms.TuneContext:
    """A TuneContext holding just the module, the target and a thread count, which is all
    PerStoreFeature reads: it extracts the candidates' rows on that many threads of this machine
    (the search runs while the measurement workers are idle, so their cores are free).

    TuneContext.__init__ imports tvm.s_tir.tensor_intrin first, which costs ~20-40 s on our
    machines; the FFI constructor it ends with does not need it, so we call that directly.
    """
    context = ms.TuneContext.__new__(ms.TuneContext)
    context.__init_handle_by_constructor__(
        ms._ffi_api.TuneContext, mod, target, None, None, "autotune", threads, -1, None  # type: ignore[attr-defined]
    )
    return context


def _workload_scale(workload: Any) -> dict[str, float]:
    """log2 of the workload's size: FLOPs, compulsory bytes (every argument once), output elements."""
    def nbytes(arg: Any) -> float:
        return math.prod(arg.shape) * max(1, tvm.DataType(arg.dtype).bits // 8)
    return {"flops": math.log2(1 + max(0.0, float(workload.flops))),
            "bytes": math.log2(1 + sum(nbytes(a) for a in workload.args)),
            "outputs": math.log2(1 + sum(math.prod(a.shape) for a in workload.outputs))}


def _scale_free(rows: np.ndarray, scale: dict[str, float]) -> np.ndarray:
    """Store rows with their counts relative to the workload's size, so that they transfer.

    PerStoreFeature counts ops, bytes and loop extents in absolute numbers (log2), which mostly
    tell workloads apart; a model trained on other workloads ranks a new one better on ratios:
    ops per FLOP of the workload, bytes and cache lines touched per compulsory byte, allocations
    and outer loops per output element. A zero count stays apart (_ABSENT).
    """
    rows = np.array(rows, dtype=np.float64, copy=True)
    if rows.size == 0:
        return rows
    for columns, ref in ((_OP_COUNT_COLUMNS, scale["flops"]), (_BUFFER_COLUMNS, scale["bytes"]),
                         (_ALLOC_COLUMNS, scale["outputs"])):
        values = rows[:, columns]
        rows[:, columns] = np.where(values > 0, values - ref, _ABSENT)
    return rows


def _pool(rows: np.ndarray) -> np.ndarray:
    if rows.size == 0:
        return np.zeros(3 * _STORE_WIDTH, dtype=np.float32)
    return np.concatenate([rows.sum(axis=0), rows.max(axis=0), rows.mean(axis=0)])

