"""The search space: rules that turn a workload's blocks into a space of schedules.

No per-operator template: `SearchSpace.__init__` analyses the PrimFunc's blocks once and gives
each a rule, with parameter domains from search_spaces/*.toml:

- inline:     elementwise producers (padding, bias adds, the exp of a softmax) are inlined; one
              that feeds a tiled block (a conv's padding) is a decision: inlined, computed at the
              root, or computed inside the block's tile loops at a searched level;
- tile:       blocks with a reduction and data reuse (matmul, conv, ...) get multi-level tiling,
              a local accumulator and their elementwise epilogue fused at a searched level; the
              vectorized loop is a searched spatial axis (a conv's output channels as well as
              its width), and an operand that axis reads with a stride (a dense's weight rows,
              a conv's weight) or in panels a row apart per reduction step (a matmul's B[k, j])
              may be packed: copied, inside the tile loops, into a buffer whose innermost axis
              is the vector (the NCHWc / GEMM-panel layouts of vendor libraries);
- compute_at: producers without reuse (softmax's max/sum) go inside their consumer's loops at a
              searched depth, or stay at the root;
- loops:      other blocks get parallel outer loops and a vectorized inner loop; a vector
              width that does not divide the loop leaves a scalar tail (`loop_vector_tail`).

Reductions without reuse (compute_at and loops rules: row maxima and sums, mean and variance,
wide pooling windows) may also have their reduction vectorized ("rfactor" decision): the innermost
reduction loop is split by a vector width v, the inner part is rfactored into a block that
accumulates v partial results in a vector loop, and the block itself then reduces the v partial
results. An elementwise
producer read by several consumers (softmax's exp) is inlined by default, which recomputes it in
each consumer; keeping it is a decision.

A `Candidate` is plain JSON decisions; `apply_candidate` replays them deterministically with
`tvm.s_tir.Schedule` primitives. Sampling draws decisions and keeps the first that TVM accepts.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Sequence, cast

import tvm
from tvm import s_tir
from tvm.tirx.analysis import undefined_vars

from .space_config import SpaceConfig, load_space_config
from .target import VectorRegisters, available_cores
from .workload import Workload

CANDIDATE_FORMAT = 1
# TVM's loop annotation that asks its LoopPartition pass (in every build) to split a loop where a
# condition in it changes value: a vector loop's tail predicate, here.
LOOP_PARTITION_HINT = "pragma_loop_partition_hint"
_MAX_SAMPLE_ATTEMPTS = 64


@dataclass(frozen=True)
class Candidate:
    """One point of the space: JSON-able decisions per block plus global ones."""

    decisions: dict[str, Any]

    @property
    def key(self) -> str:
        text = json.dumps(self.decisions, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def to_json(self) -> dict[str, Any]:
        return self.decisions

    @staticmethod
    def from_json(data: dict[str, Any]) -> "Candidate":
        return Candidate(data)


@dataclass(frozen=True)
class BlockRule:
    """The rule chosen for one block and the facts its decisions are drawn from."""

    block: str
    rule: str  # "tile" | "compute_at" | "loops"
    spatial: tuple[int, ...] = ()  # extents of the block's spatial loops, in loop order
    reduction: tuple[int, ...] = ()  # extents of its reduction loops
    epilogue: str | None = None  # tile: the elementwise consumer fused into the tile
    epilogue_inline: bool = False  # tile: the epilogue can be inlined into the write-back
    accumulator_bits: int = 32  # tile: bits of one element of the block's output (its accumulator)
    # tile: per spatial loop, the (read index, buffer axis) of each operand that vectorizing that
    # loop would read with a stride: the loop's iterator alone indexes an axis that is not the last
    strided_reads: tuple[tuple[tuple[int, int], ...], ...] = ()
    # tile: per spatial loop, the (read index, last buffer axis) of each operand that loop's iterator
    # alone indexes along its last axis while a reduction iterator indexes another (a matmul's
    # B[k, j]): contiguous vectors, but a whole row apart at each reduction step (see `_panel_reads`)
    panel_reads: tuple[tuple[tuple[int, int], ...], ...] = ()
    depths: tuple[int, ...] = ()  # compute_at: feasible depths in the consumer (0 = root)
    rfactor_depths: tuple[int, ...] = ()  # compute_at: the depths where the reduction can be rfactored
    # compute_at: the block whose loops it goes in; loops: the tiled block it feeds, inside whose tile
    # loops it may be computed ("at" decision), when config.compute_location allows
    consumer: str | None = None
    inlinable: bool = False  # loops: an elementwise producer (e.g. padding) that may also be inlined

    @property
    def reduction_size(self) -> int:
        """Iterations of the block's reduction loops together (1 without a reduction)."""
        return _product(self.reduction)


@dataclass
class SearchSpace:
    """The schedules of one workload reachable by the rules, and how to sample and apply them."""

    workload: Workload
    config: SpaceConfig = field(default_factory=load_space_config)
    # cores of the target: sampling gives parallel loops enough iterations to occupy them (see
    # config.min_parallel_per_core); it changes which candidates are drawn, never what one means
    cores: int = 1
    # the target's SIMD registers: sampling keeps register tiles' accumulators within
    # config.accumulator_register_share of them (None: unbounded); like `cores`, it changes draws only
    registers: VectorRegisters | None = None
    inlined: tuple[str, ...] = ()
    rules: tuple[BlockRule, ...] = ()

    def __post_init__(self) -> None:
        if not self.rules:
            self.inlined, self.rules = _analyse(self.workload, self.config)

    def sample(self, rng: random.Random) -> Candidate:
        """A random candidate that TVM accepts (the default schedule if none is found)."""
        return self.sample_applied(rng)[0]

    def sample_applied(self, rng: random.Random) -> tuple[Candidate, s_tir.Schedule]:
        """`sample`, with the candidate's schedule: validating a draw applies it, and a caller that
        needs the schedule (for features) need not apply it again."""
        return self.sample_applied_many(rng, 1)[0]

    def sample_applied_many(self, rng: random.Random, n: int) -> list[tuple[Candidate, s_tir.Schedule]]:
        """n samples with their schedules, applied together (`try_apply_all`): each a draw TVM
        accepts (a rejected draw is drawn again after the others, up to _MAX_SAMPLE_ATTEMPTS
        rounds), or else the default schedule."""
        sampled: list[tuple[Candidate, s_tir.Schedule] | None] = [None] * n
        pending = list(range(n))
        for _ in range(_MAX_SAMPLE_ATTEMPTS):
            if not pending:
                break
            drawn = [Candidate(self._draw(rng)) for _ in pending]
            for i, candidate, sch in zip(pending, drawn, self.try_apply_all(drawn)):
                if sch is not None:
                    sampled[i] = (candidate, sch)
            pending = [i for i in pending if sampled[i] is None]
        for i in pending:
            sampled[i] = (self.default_candidate(), apply_candidate(self, self.default_candidate()))
        return cast(list[tuple[Candidate, s_tir.Schedule]], sampled)

    def default_candidate(self) -> Candidate:
        """Every block at the root, no tiling: always valid, the untuned baseline."""
        return Candidate({"format": CANDIDATE_FORMAT, "blocks": {}, "unroll": 0})

    def is_valid(self, candidate: Candidate) -> bool:
        return self.try_apply(candidate) is not None

    def try_apply(self, candidate: Candidate) -> s_tir.Schedule | None:
        """The candidate's schedule, or None when TVM rejects its decisions."""
        try:
            return apply_candidate(self, candidate)
        except (RuntimeError, ValueError, IndexError, KeyError, TypeError):
            return None

    def try_apply_all(self, candidates: Sequence[Candidate]) -> list[s_tir.Schedule | None]:
        """`try_apply` of each candidate, in order, on every core this process may use.

        Why threads: TVM's schedule primitives run in C++ without holding the GIL, and the model-guided
        search applies a few hundred candidates per batch to score them while the measurement workers
        wait. On 2 cores, 150 sampled candidates applied in 1.40 s one by one and in 0.91 s on two
        threads (conv2d; matmul 512³ 0.48 -> 0.34 s), with the same schedules.
        """
        if len(candidates) < 2:
            return [self.try_apply(c) for c in candidates]
        return list(_apply_threads().map(self.try_apply, candidates))

    def constrain(self, decisions: dict[str, Any]) -> dict[str, Any]:
        """Adjust decisions in place so that they never ask for code TVM accepts but gets wrong,
        and so that decisions that have no effect do not make distinct candidates."""
        blocks = decisions.get("blocks", {})
        _keep_attached_loops_serial(self.rules, blocks)
        for rule in self.rules:
            d = blocks.get(rule.block, {})
            if rule.rule == "compute_at" and _rfactor_of(d) > 1 and d["depth"] not in rule.rfactor_depths:
                d["rfactor"] = 1
            if _rfactor_of(d) > 1:
                d["vector"] = 1  # the reduction's vector loop replaces the spatial one
            if loop_vector_tail(rule, d) and _fuses_tail_loop(rule, d["parallel"]):
                d["parallel"] = len(rule.spatial) - 1
            if rule.rule == "tile" and d:
                _canonical_tile(rule, d, self.config)
            if d.get("at") and d.get("inline"):
                d.pop("at")  # inlined: there is nothing left to place
            elif d.get("at"):
                d.update(parallel=0, vector=1)  # its loops are the tile's, not its own
        return decisions

    def _draw(self, rng: random.Random) -> dict[str, Any]:
        jobs = self.cores * self.config.min_parallel_per_core
        blocks = {r.block: _draw_block(r, self.config, rng, jobs, self.registers) for r in self.rules}
        unroll = draw_unroll(self.config, rng)
        if any(r.rule == "tile" and unvectorized(blocks[r.block]) for r in self.rules):
            unroll = largest_unroll_step(self.config)  # what LLVM's vectorizer needs to see the tile's outer loop
        decisions = {"format": CANDIDATE_FORMAT, "blocks": blocks, "unroll": unroll}
        return self.constrain(decisions)


def apply_candidate(space: SearchSpace, candidate: Candidate) -> s_tir.Schedule:
    """Replay a candidate's decisions on the workload; the same candidate always gives the same schedule."""
    # Rejected decisions are routine while sampling; rendering TVM's diagnostics for them is not worth it.
    schedule = s_tir.Schedule(space.workload.mod, error_render_level="none")
    sch = cast(s_tir.Schedule, UncheckedPrimitives(schedule))  # the same methods, called without the checks
    decisions = candidate.decisions.get("blocks", {})
    # Step 1. Inline elementwise producers: always, except those feeding a tiled block, where it is a decision.
    # Blocks in `space.inlined` that have a rule (softmax's exp) are inlined unless the candidate says not.
    rules = [r for r in space.rules if r.block in decisions]
    inline = [n for n in space.inlined if decisions.get(n, {}).get("inline", True)]
    optional = [r for r in rules if r.inlinable and r.block not in space.inlined]
    inline += [r.block for r in optional if decisions[r.block].get("inline")]
    for name in inline:
        sch.compute_inline(sch.get_sblock(name))
    rules = [r for r in rules if r.block not in inline]
    # Step 2. Compute producers inside their consumers, consumers first so their loops are intact.
    for rule in reversed([r for r in rules if r.rule == "compute_at"]):
        depth = decisions[rule.block]["depth"]
        if depth > 0:
            loops = sch.get_loops(sch.get_sblock(rule.consumer))
            sch.compute_at(sch.get_sblock(rule.block), loops[depth - 1], preserve_unit_loops=True)
    # Step 3. Tile the blocks with reuse, computing producers inside their tiles where asked; give the
    # others parallel and vector loops.
    attached = {r.block: decisions[r.block]["at"] for r in rules if r.rule == "loops" and decisions[r.block].get("at")}
    for rule in rules:
        if rule.rule == "tile":
            producers = {r.block: attached[r.block] for r in rules if r.block in attached and r.consumer == rule.block}
            _apply_tiling(sch, rule, decisions[rule.block], space.config, producers)
        elif rule.block in attached:
            continue
        else:
            at_root = rule.rule == "loops" or decisions[rule.block]["depth"] == 0
            if _rfactor_of(decisions[rule.block]) > 1:
                _apply_rfactor(sch, rule, decisions[rule.block], at_root)
            elif at_root:
                _apply_loops(sch, rule, decisions[rule.block])
    # Step 4. Unroll annotations on every outermost loop.
    _annotate_unroll(sch, int(candidate.decisions.get("unroll", 0)))
    return schedule


class UncheckedPrimitives:
    """A schedule's primitives called without the Python type checks TVM wraps them in.

    Why: `tvm.s_tir.Schedule`'s methods check every argument against their type hints in Python
    (`_type_checker.type_checked`) before calling into C++. The model-guided search applies a few
    hundred candidates per batch to score them, and those checks were 25-65% of each application
    (matmul 4.8 -> 2.8 ms, softmax 4.7 -> 1.7 ms). Only `apply_candidate` uses this, with arguments
    it builds itself; a wrong one still fails in TVM's C++ checks, as a TypeError or TVMError.
    """

    __slots__ = ("schedule",)
    _unwrapped: dict[str, Any] = {}

    def __init__(self, schedule: s_tir.Schedule):
        self.schedule = schedule

    def __getattr__(self, name: str) -> Any:
        if name not in self._unwrapped:
            self._unwrapped[name] = getattr(getattr(s_tir.Schedule, name, None), "__wrapped__", None)
        raw = self._unwrapped[name]
        return functools.partial(raw, self.schedule) if raw is not None else getattr(self.schedule, name)


@functools.cache
def _apply_threads() -> ThreadPoolExecutor:
    """The threads `SearchSpace.try_apply_all` applies candidates on, one per core, made once per process."""
    return ThreadPoolExecutor(max_workers=available_cores(), thread_name_prefix="autotune-apply")


def trace_json(sch: s_tir.Schedule) -> Any:
    """TVM's trace of the schedule as plain JSON, stored beside the decisions for interop."""
    return _plain(sch.trace.as_json())


# ---------------------------------------------------------------------------------------------
# analysis: which rule applies to which block


def _analyse(workload: Workload, config: SpaceConfig) -> tuple[tuple[str, ...], tuple[BlockRule, ...]]:
    sch = s_tir.Schedule(workload.mod)
    root = sch.get_sblock("root")
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    inlined, optional, kept = [], set(), []
    for block in list(sch.get_child_blocks(root)):
        name = sch.get(block).name_hint
        if name in outputs or _reduction_iters(sch, block):
            continue
        consumers = sch.get_consumers(block)
        if any(_has_reuse(sch, c) for c in consumers):
            # Inlining padding into a tiled conv puts a branch in its inner loop; let the search decide.
            probe = sch.copy()
            if _try(probe.compute_inline, probe.get_sblock(name)):
                optional.add(name)
            continue
        # Inlined into several consumers (softmax's exp), the block is computed once per consumer:
        # it is inlined by default, and the rules of the other blocks assume so, but a candidate may keep it.
        keep = len(consumers) > 1 and _has_trivial_loops(sch, block)
        rule = BlockRule(name, "loops", *_loop_extents(sch, block), inlinable=True) if keep else None
        if _try(sch.compute_inline, block):
            inlined.append(name)
            if rule is not None:
                kept.append(rule)
    blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    tiled = {n for n in blocks if _has_reuse(sch, sch.get_sblock(n))}
    epilogues = {t: _epilogue_of(sch, t, tiled) for t in tiled}
    rules = []
    for name in blocks:
        if name in tiled:
            rules.append(_tile_rule(sch, name, epilogues[name]))
        elif name not in epilogues.values():
            rule = _placement_rule(sch, name, tiled, config)
            rules.append(replace(rule, inlinable=True) if rule and name in optional else rule)
    return tuple(inlined), tuple(r for r in [*kept, *rules] if r is not None)


def _tile_rule(sch: s_tir.Schedule, name: str, epilogue: str | None) -> BlockRule:
    spatial, reduction = _loop_extents(sch, sch.get_sblock(name))
    inline_ok = False
    if epilogue is not None:
        probe = sch.copy()
        writeback = probe.cache_write(probe.get_sblock(name), 0, "local")
        inline_ok = _try(probe.reverse_compute_inline, probe.get_sblock(epilogue)) and writeback is not None
    stmt = sch.get(sch.get_sblock(name))
    return BlockRule(name, "tile", spatial, reduction, epilogue=epilogue, epilogue_inline=inline_ok,
                     accumulator_bits=int(stmt.writes[0].source.dtype.bits),
                     strided_reads=_strided_reads(stmt, len(spatial)), panel_reads=_panel_reads(stmt, len(spatial)))


def _strided_reads(stmt: Any, n_spatial: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """For each spatial iterator, the reads it alone indexes along one axis that is not the buffer's last.

    Those are the operands packing can make contiguous (see `_pack_operands`); an operand the
    iterator does not index is broadcast, and one it indexes inside an expression (a conv's
    input h + r) is left as it is.
    """
    return _reads_by_iterator(stmt, n_spatial, lambda used, axis: axis < len(used) - 1)


def _panel_reads(stmt: Any, n_spatial: int) -> tuple[tuple[tuple[int, int], ...], ...]:
    """For each spatial iterator, the reads it alone indexes along the buffer's last axis while a
    reduction iterator indexes another axis (a matmul's B[k, j] for j, a batch matmul's B[b, k, j]).

    Vectorized along that iterator, such a read is contiguous within a reduction step, but the
    steps are a whole row apart: a tile's panel of B spans as many cache lines as it has rows,
    and with power-of-two rows they fall in few cache sets. Packed as B[j // v, k, j % v] (see
    `_pack_operands`) the panel is contiguous, as in the GEMM kernels of vendor libraries.
    """
    reduction_vars = [iv.var for iv in stmt.iter_vars[n_spatial:]]

    def along_reduction(used: list[list[Any]], axis: int) -> bool:
        others = used[:axis] + used[axis + 1:]
        return axis == len(used) - 1 and any(v.same_as(r) for vs in others for v in vs for r in reduction_vars)
    return _reads_by_iterator(stmt, n_spatial, along_reduction)


def _reads_by_iterator(stmt: Any, n_spatial: int, keep: Any) -> tuple[tuple[tuple[int, int], ...], ...]:
    """For each spatial iterator, the (read index, axis) of every read whose `axis` it alone indexes,
    as the whole index there (B[k, j], not x[.., w + s]) and on no other axis, and for which
    `keep(variables of each axis's index, axis)` holds."""
    out = []
    for iv in stmt.iter_vars[:n_spatial]:
        reads = []
        for index, region in enumerate(stmt.reads):
            used = [undefined_vars(r.min) for r in region.region]
            axes = [a for a, vs in enumerate(used) if any(v.same_as(iv.var) for v in vs)]
            if len(axes) == 1 and region.region[axes[0]].min.same_as(iv.var) and keep(used, axes[0]):
                reads.append((index, axes[0]))
        out.append(tuple(reads))
    return tuple(out)


def _placement_rule(sch: s_tir.Schedule, name: str, tiled: set[str], config: SpaceConfig) -> BlockRule | None:
    block = sch.get_sblock(name)
    if not _has_trivial_loops(sch, block):
        return None
    spatial, reduction = _loop_extents(sch, block)
    consumers = [sch.get(c).name_hint for c in sch.get_consumers(block)]
    if config.compute_location and len(consumers) == 1 and consumers[0] not in tiled:
        depths = _feasible_depths(sch, name, consumers[0])
        if len(depths) > 1:
            rule = BlockRule(name, "compute_at", spatial, reduction, depths=depths, consumer=consumers[0])
            return replace(rule, rfactor_depths=_rfactor_depths(sch, rule, config))
    if config.compute_location and len(consumers) == 1 and consumers[0] in tiled and not reduction:
        return BlockRule(name, "loops", spatial, reduction, consumer=consumers[0])  # may go inside its tiles
    return BlockRule(name, "loops", spatial, reduction)


def _feasible_depths(sch: s_tir.Schedule, name: str, consumer: str) -> tuple[int, ...]:
    depths = [0]
    n_loops = len(sch.get_loops(sch.get_sblock(consumer)))
    for depth in range(1, n_loops + 1):
        probe = sch.copy()
        loop = probe.get_loops(probe.get_sblock(consumer))[depth - 1]
        if _try(probe.compute_at, probe.get_sblock(name), loop, True):
            depths.append(depth)
    return tuple(depths)


def _rfactor_depths(sch: s_tir.Schedule, rule: BlockRule, config: SpaceConfig) -> tuple[int, ...]:
    """The compute-at depths at which TVM can rfactor the block (not under a consumer loop that
    none of its iterators uses: computed inside softmax's column loop, rfactor fails)."""
    lanes = max(rfactor_choices(rule, config))
    if lanes == 1:
        return ()
    feasible = []
    for depth in rule.depths:
        probe = sch.copy()
        if depth > 0:
            loop = probe.get_loops(probe.get_sblock(rule.consumer))[depth - 1]
            probe.compute_at(probe.get_sblock(rule.block), loop, preserve_unit_loops=True)
        if _try(_apply_rfactor, probe, rule, {"parallel": 0, "rfactor": lanes}, depth == 0):
            feasible.append(depth)
    return tuple(feasible)


def _epilogue_of(sch: s_tir.Schedule, name: str, tiled: set[str]) -> str | None:
    """The single elementwise consumer of a tiled block, fused into its tile."""
    consumers = sch.get_consumers(sch.get_sblock(name))
    if len(consumers) != 1:
        return None
    consumer = consumers[0]
    cname = sch.get(consumer).name_hint
    producers = [sch.get(p).name_hint for p in sch.get_producers(consumer)]
    if cname in tiled or _reduction_iters(sch, consumer) or producers != [name]:
        return None
    return cname if _has_trivial_loops(sch, consumer) else None


def _has_reuse(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """A reduction whose inputs are each indexed by only some spatial iterators: tiling pays."""
    stmt = sch.get(block)
    if not _reduction_iters(sch, block) or not _has_trivial_loops(sch, block):
        return False
    spatial = {iv.var.name for iv in stmt.iter_vars if int(iv.iter_type) == 0}
    for region in stmt.reads:
        used = {v.name for r in region.region for v in undefined_vars(r.min)}
        if spatial - used:
            return True
    return False


def _reduction_iters(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> list[Any]:
    return [iv for iv in sch.get(block).iter_vars if int(iv.iter_type) != 0]


def _has_trivial_loops(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """One loop per block iterator, spatial loops first: the shape our rules know how to transform."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    if len(loops) != len(stmt.iter_vars) or not loops:
        return False
    kinds = [int(iv.iter_type) != 0 for iv in stmt.iter_vars]
    return kinds == sorted(kinds) and all(isinstance(sch.get(lp).extent, tvm.tirx.IntImm) for lp in loops)


def _loop_extents(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> tuple[tuple[int, ...], tuple[int, ...]]:
    loops = [int(sch.get(lp).extent) for lp in sch.get_loops(block)]
    n_reduce = len(_reduction_iters(sch, block))
    return tuple(loops[: len(loops) - n_reduce]), tuple(loops[len(loops) - n_reduce :])


def _try(fn: Any, *args: Any) -> bool:
    try:
        fn(*args)
    except (RuntimeError, ValueError, IndexError):
        return False
    return True


# ---------------------------------------------------------------------------------------------
# sampling


def _draw_block(rule: BlockRule, config: SpaceConfig, rng: random.Random, jobs: int = 1,
                registers: VectorRegisters | None = None) -> dict[str, Any]:
    """One block's decisions; `jobs`: iterations its parallel loop should have where extents allow;
    `registers`: the target's SIMD registers, which a register tile's accumulators should fit in."""
    if rule.rule == "tile":
        axis = rng.choice(vector_axes(rule, config))
        last = len(rule.spatial) - 1  # never padded: it is the vector loop when another axis's falls back to it
        spatial = [_draw_tile(e, config.spatial_levels, config, rng, vectorized=(i == axis),
                              may_pad=(i not in (axis, last)), may_tail=(i == last))
                   for i, e in enumerate(rule.spatial)]
        if config.unvectorized_tile_probability and rng.random() < config.unvectorized_tile_probability:
            leave_to_llvm_vectorizer(spatial)
        _widen_outer_tiles(spatial, jobs, axis, rng,
                           vector_axis_serial=_has_tail(spatial[axis], rule.spatial[axis]))
        _fit_register_share(rule, spatial, axis, config, registers)
        return {
            "spatial": spatial,
            "reduction": [_draw_tile(e, config.reduction_levels, config, rng) for e in rule.reduction],
            "write_level": rng.choice(config.write_levels),
            "accumulator": rng.choice(config.accumulator_scopes),
            "vector_axis": axis,
            "pack": _draw_pack(rule, config, axis, rng),
        }
    loops = _draw_loops(rule, config, rng, jobs)
    if rule.inlinable:
        loops["inline"] = rng.random() < 0.5
    if rule.rule == "loops" and rule.consumer and (at := draw_tile_level(config, rng)):
        loops["at"] = at
    if rule.rule == "compute_at":
        return {"depth": rng.choice(rule.depths), **loops}
    return loops


def draw_unroll(config: SpaceConfig, rng: random.Random) -> int:
    """An unroll pragma's max step, drawn by the config's weights. Why weights: the largest step
    makes LLVM's builds 2-3x slower, and builds are most of a tune's time, so a space may trade
    some of the kernels it finds for wall time (search_spaces/cpu.toml says what that cost)."""
    return rng.choices(config.unroll_steps, weights=config.unroll_weights)[0]


def largest_unroll_step(config: SpaceConfig) -> int:
    """The largest unroll step the config draws at all (a weight of 0 means never)."""
    return max(step for step, weight in zip(config.unroll_steps, config.unroll_weights) if weight > 0)


def draw_tile_level(config: SpaceConfig, rng: random.Random) -> int:
    """Where an elementwise producer of a tiled block is computed: 0 at the root, once for the whole
    output; L inside the tile loops, after the structure's first L letters (for each tile of those
    loops: the region it reads, in cache). Never after the last letter, whose loop is the vector."""
    return rng.randrange(len(config.structure))


def vector_axes(rule: BlockRule, config: SpaceConfig) -> list[int]:
    """The spatial loops of a tiled block that may be its vectorized loop: the last always, and
    with vector_axes = "any" every other one that some vector factor divides."""
    last = len(rule.spatial) - 1
    if config.vector_axes == "last":
        return [last]
    others = [i for i, e in enumerate(rule.spatial[:-1]) if any(e % v == 0 for v in config.vector_factors)]
    return [*others, last]


def redraw_vector_axis(rule: BlockRule, d: dict[str, Any], config: SpaceConfig, rng: random.Random) -> None:
    """Move a tiled block's vector loop to another allowed axis, with a vector-friendly innermost tile there."""
    axis = rng.choice(vector_axes(rule, config))
    d["vector_axis"] = axis
    d["spatial"][axis] = _draw_tile(rule.spatial[axis], config.spatial_levels, config, rng, vectorized=True,
                                    may_tail=(axis == len(rule.spatial) - 1))


def redraw_register_tile(rule: BlockRule, d: dict[str, Any], config: SpaceConfig, rng: random.Random,
                         registers: VectorRegisters | None = None) -> None:
    """Give one spatial loop of a tiled block, other than its vector loop and the last, a new innermost
    tile: another divisor, or, half the time where the loop may pad (see `_draw_tile`) and the
    config pads at all, a padded factor.

    Moving prime factors between levels keeps a loop's product, so it never pads a loop nor unpads
    one: without this the search could not go from the 4 x 16 register tiles it finds to the 6 x 16
    ones that hold 12 accumulators. The outer levels keep, from the inside out, what of their
    factors divides what is left; the outermost takes the rest. With `registers`, the tile is then
    fitted to the register file as a draw is (`_fit_register_share`)."""
    axis, last = vector_axis(d), len(rule.spatial) - 1
    loops = [i for i in range(len(rule.spatial)) if i not in (axis, last)]
    if not loops:
        return
    i = rng.choice(loops)
    extent, old = rule.spatial[i], d["spatial"][i]
    choices = [f for f in _divisors(extent) if f <= config.max_innermost_factor and f != old[-1]]
    padded = [f for f in _padded_inner_factors(extent, config) if f != old[-1]] if config.padded_tile_probability > 0 else []
    if padded and (not choices or rng.random() < 0.5):
        choices = padded
    if not choices:
        return
    d["spatial"][i] = _refactored(old, extent, rng.choice(choices))
    _fit_register_share(rule, d["spatial"], axis, config, registers)


def redraw_micro_kernel(rule: BlockRule, d: dict[str, Any], config: SpaceConfig, rng: random.Random,
                        registers: VectorRegisters | None = None) -> None:
    """Redraw a tiled block's register kernel in one move: the vector loop's width (another of
    config.vector_factors that divides it), one other loop's innermost tile (`redraw_register_tile`,
    which then fits the tile to the register file) and one reduction loop's innermost step.

    Why in one move: the three decide together what the unroll pragma unrolls and how many
    accumulators stay in registers; one of them changed alone often measures worse, so a search
    that moves one factor at a time, keeping what scores well, stays near the kernel it found
    (search_spaces/cpu.toml, micro_kernel_probability). A vector loop with a tail keeps its width."""
    axis = vector_axis(d)
    extent, factors = rule.spatial[axis], d["spatial"][axis]
    widths = [v for v in config.vector_factors if extent % v == 0 and v != factors[-1]]
    if widths and not vector_tail(rule, d):
        d["spatial"][axis] = _refactored(factors, extent, rng.choice(widths))
    redraw_register_tile(rule, d, config, rng, registers)
    loops = [i for i, e in enumerate(rule.reduction) if e > 1]
    if not loops:
        return
    i = rng.choice(loops)
    steps = [f for f in _divisors(rule.reduction[i]) if f <= config.max_innermost_factor and f != d["reduction"][i][-1]]
    if steps:
        d["reduction"][i] = _refactored(d["reduction"][i], rule.reduction[i], rng.choice(steps))


def _refactored(factors: list[int], extent: int, inner: int) -> list[int]:
    """Tile factors (outermost first) with innermost `inner` covering `extent` (padded when `inner`
    does not divide it), the middle levels keeping what of their old factors divides what is left."""
    rest, inside_out = -(-extent // inner), [inner]
    for old in reversed(factors[1:-1]):
        inside_out.append(math.gcd(old, rest))
        rest //= inside_out[-1]
    return [rest, *reversed(inside_out)]


def vector_axis(d: dict[str, Any]) -> int:
    """A tiled block's vectorized spatial loop; candidates from before the decision existed: the last."""
    return int(d.get("vector_axis", len(d["spatial"]) - 1))


def _canonical_tile(rule: BlockRule, d: dict[str, Any], config: SpaceConfig) -> None:
    """Keep a tiled block's vector-axis and pack decisions to those that mean something.

    A vector axis whose innermost tile is 1 is no vector axis, and the last axis is the default:
    both are dropped, so such a candidate keeps the key it had before these decisions existed.
    Another axis accumulates in a local buffer whose innermost axis it is: accumulating in the
    output itself would scatter every vector (and such code takes LLVM minutes to compile), and
    its register tile is kept to config.max_transposed_register_tile elements.
    Packing needs a strided or panel operand and a vector of more than one lane; another axis
    than the last always packs its strided operands (see `_pack_levels`).
    """
    axis = vector_axis(d)
    if d["spatial"][axis][-1] == 1:
        axis = len(rule.spatial) - 1
    if axis == len(rule.spatial) - 1:
        d.pop("vector_axis", None)
    else:
        d["accumulator"] = "local"
        _shrink_register_tile(d["spatial"], axis, config.max_transposed_register_tile)
    _keep_tail_out_of_parallel(rule, d)
    # a packed panel of v lanes would need a padded layout where v does not divide the axis
    if not (_packed_reads(rule, axis) and d["spatial"][axis][-1] > 1) or vector_tail(rule, d):
        d.pop("pack", None)
    elif d.get("pack", 0) not in (levels := _pack_levels(rule, config, axis)):
        d["pack"] = min(levels)
    if d.get("pack") == 0:
        d.pop("pack")


def _packed_reads(rule: BlockRule, axis: int) -> tuple[tuple[int, int], ...]:
    """The operands a pack decision copies when `axis` is the vector loop: strided and panel reads."""
    return (rule.strided_reads[axis] if rule.strided_reads else ()) + (rule.panel_reads[axis] if rule.panel_reads else ())


def _draw_pack(rule: BlockRule, config: SpaceConfig, axis: int, rng: random.Random) -> int:
    """A pack level for a tiled block vectorized along `axis`. Panels alone (contiguous vectors) are
    packed with config.panel_pack_probability: in paired timings of random candidates, packing
    sped up the bad ones (up to 2.9x) and slowed some good ones (its copy is redone for every tile
    of the loops above it that do not index the panel), so most draws leave them unpacked."""
    levels = _pack_levels(rule, config, axis)
    if not (rule.strided_reads and rule.strided_reads[axis]) and rule.panel_reads and rule.panel_reads[axis]:
        packed = [level for level in levels if level > 0]
        return rng.choice(packed) if packed and rng.random() < config.panel_pack_probability else 0
    return rng.choice(levels)


def _pack_levels(rule: BlockRule, config: SpaceConfig, axis: int) -> tuple[int, ...]:
    """The pack levels of a tiled block vectorized along `axis`. Another axis than the last, when
    it reads an operand with a stride, always packs (if the config packs at all): unpacked, every
    vector load of that operand is a gather of scalars, slow to run, and once unrolled LLVM took
    10 s to minutes to compile it (a 64-lane gather unrolled 64 times: over 120 s)."""
    if axis == len(rule.spatial) - 1 or not (rule.strided_reads and rule.strided_reads[axis]):
        return config.pack_levels
    return tuple(level for level in config.pack_levels if level > 0) or config.pack_levels


def leave_to_llvm_vectorizer(spatial: list[list[int]]) -> None:
    """Move every spatial loop's innermost factor one level out: a register tile of one element,
    which the schedule does not vectorize (`_canonical_tile` drops the vector axis of a 1-lane
    tile). Why: with an unroll step that covers the inner loops, TVM unrolls them and LLVM's loop
    vectorizer vectorizes the loop outside them, the last spatial loop of the level above; for a
    stencil it then keeps each tap's (padded) inputs in registers, where an explicit vector loop
    reads them from a padded buffer (search_spaces/cpu.toml, unvectorized_tile_probability).
    Without that unroll the tile stays scalar code (13x slower on a depthwise conv), so such draws
    take the largest unroll step drawn at all (`SearchSpace._draw`, and the model-guided search's
    mutation that leaves a tile to LLVM); other mutations may still change it."""
    for factors in spatial:
        if len(factors) > 1:
            factors[-2] *= factors[-1]
            factors[-1] = 1


def unvectorized(d: dict[str, Any]) -> bool:
    """Whether a tiled block's register tile is one element: the schedule vectorizes none of its loops."""
    return all(factors[-1] == 1 for factors in d["spatial"])


def _shrink_register_tile(spatial: list[list[int]], vector_axis: int, limit: int) -> None:
    """Move prime factors of the other axes' innermost tiles one level out (largest tile first)
    until the register tile has at most `limit` elements; the vector loop is left as it is."""
    others = [i for i in range(len(spatial)) if i != vector_axis]
    while _product(f[-1] for f in spatial) > limit:
        axis = max(others, key=lambda i: spatial[i][-1])
        if spatial[axis][-1] == 1:
            return
        prime = smallest_prime_factor(spatial[axis][-1])
        spatial[axis][-1] //= prime
        spatial[axis][-2] *= prime


def _fit_register_share(rule: BlockRule, spatial: list[list[int]], vector_axis: int, config: SpaceConfig,
                        registers: VectorRegisters | None) -> None:
    """Fit a register tile's accumulators in config.accumulator_register_share of the target's SIMD
    registers (`_fit_register_file`); nothing to do for an unknown register file or a zero share."""
    if registers is not None and config.accumulator_register_share > 0:
        accumulators = max(1, int(registers.count * config.accumulator_register_share))
        _fit_register_file(spatial, vector_axis, accumulators, registers.lanes(rule.accumulator_bits))


def _fit_register_file(spatial: list[list[int]], vector_axis: int, registers: int, lanes: int) -> None:
    """Shrink the register tile (see `_shrink_register_tile`) until its accumulators fit in
    `registers` SIMD registers of `lanes` elements: each row of the vector loop takes
    ceil(vector factor / lanes) of them, and the other axes' innermost factors count the rows."""
    vector = spatial[vector_axis][-1]
    rows = max(1, registers // -(-vector // lanes))
    _shrink_register_tile(spatial, vector_axis, rows * vector)


def smallest_prime_factor(n: int) -> int:
    return next(p for p in range(2, n + 1) if n % p == 0)


def _keep_attached_loops_serial(rules: tuple[BlockRule, ...], blocks: dict[str, Any]) -> None:
    """A consumer's loops that hold a computed-at producer may be fused for parallelism but not vectorized.

    TVM accepts vectorizing a loop around a reduction block and then computes wrong numbers,
    so the draw never asks for it.
    """
    for rule in rules:
        if rule.block not in blocks:
            continue
        depth = blocks[rule.block].get("depth", 0)
        if rule.rule != "compute_at" or depth == 0:
            continue
        consumer = blocks[rule.consumer]
        consumer["parallel"] = min(consumer["parallel"], depth)
        consumer_rule = next(r for r in rules if r.block == rule.consumer)
        if depth >= len(consumer_rule.spatial):
            consumer["vector"] = 1


def _widen_outer_tiles(spatial: list[list[int]], jobs: int, vector_axis: int, rng: random.Random,
                       vector_axis_serial: bool = False) -> None:
    """Move prime factors of inner tile levels out to level 0, whose loops are fused into the
    parallel loop, until it has at least `jobs` iterations or nothing is left to move. Other
    axes give first; the vector axis never gives its innermost (vector) factor, and nothing
    at all when `vector_axis_serial` (a vector loop with a tail, see `vector_tail`)."""
    while _product(f[0] for f in spatial) < jobs:
        movable = [(axis, level) for axis, factors in enumerate(spatial)
                   if not (vector_axis_serial and axis == vector_axis)
                   for level in range(1, len(factors) - (axis == vector_axis)) if factors[level] > 1]
        if not movable:
            return
        axis, level = rng.choice([m for m in movable if m[0] != vector_axis] or movable)
        prime = smallest_prime_factor(spatial[axis][level])
        spatial[axis][level] //= prime
        spatial[axis][0] *= prime


def _draw_loops(rule: BlockRule, config: SpaceConfig, rng: random.Random, jobs: int = 1) -> dict[str, Any]:
    """Parallel depth (leading loops fused: among the depths with at least `jobs` iterations when
    some have and there is more than one core, else any depth, serial included), vector width, and
    the reduction's vector width where there is a choice."""
    depths = range(len(rule.spatial) + 1)
    busy = [d for d in depths if d and _product(rule.spatial[:d]) >= jobs]
    parallel = rng.choice(busy if busy and jobs > 1 else depths)
    drawn = {"parallel": parallel, "vector": rng.choice(loop_vector_choices(rule, config, parallel))}
    widths = rfactor_choices(rule, config)
    if widths != [1]:  # no key where there is no choice: such candidates stay as they were before rfactor
        drawn["rfactor"] = rng.choice(widths)
    return drawn


def loop_vector_choices(rule: BlockRule, config: SpaceConfig, parallel: int) -> list[int]:
    """Vector widths of a no-reuse block's last spatial loop (1 = scalar) with this parallel depth:
    the configured widths that divide it, and, where none above 1 does, config.loop_vector_tails
    and the parallel loop would not fuse the vector loop's outer part with others, those narrower
    than it (see `loop_vector_tail`, `vector_tail_widths`). Not for a reduction: its vector loop
    runs across rows, each lane a gather a row apart, and such candidates with 8 to 64 lanes
    (softmax's row maxima of 2364 rows) took LLVM 2 to 30 s to build, for kernels no faster."""
    last = rule.spatial[-1] if rule.spatial else 1
    dividing = [v for v in config.loop_vector_factors if last % v == 0]
    if config.loop_vector_tails and not rule.reduction and not _fuses_tail_loop(rule, parallel):
        return dividing + vector_tail_widths(last, config.loop_vector_factors) or [1]
    return dividing or [1]


def loop_vector_tail(rule: BlockRule, d: dict[str, Any]) -> bool:
    """Whether the block's vector width leaves a tail: its last spatial loop is then split with a
    predicate, which TVM's vectorizer would scalarize whole (ViT's softmax rows of 197, a prime,
    stayed scalar). The split's outer loop is marked for TVM's loop partitioning instead, which
    builds it as a vector loop over the full vectors and a scalar loop over the tail
    (`_apply_loops`). TVM fuses no marked loop, and partitions no fused one,
    so that loop is parallel only on its own (`_fuses_tail_loop`)."""
    vector = int(d.get("vector", 1))
    return rule.rule != "tile" and bool(rule.spatial) and vector > 1 and rule.spatial[-1] % vector != 0


def _fuses_tail_loop(rule: BlockRule, parallel: int) -> bool:
    """Whether a parallel loop this deep would fuse the vector loop's outer part with other loops."""
    return len(rule.spatial) > 1 and parallel >= len(rule.spatial)


def rfactor_choices(rule: BlockRule, config: SpaceConfig) -> list[int]:
    """Vector widths of a no-reuse reduction's vectorized reduction (1 = scalar): the configured
    widths that divide its innermost reduction loop (no predicate, lanes along that loop) and
    leave each lane at least two values to accumulate (a 2x2 pooling window gets none)."""
    if rule.rule == "tile" or not rule.reduction:
        return [1]
    inner, size = rule.reduction[-1], rule.reduction_size
    return [v for v in config.reduction_vector_factors if inner % v == 0 and size >= 2 * v] or [1]


def _rfactor_of(d: dict[str, Any]) -> int:
    """The candidate's rfactor width of a block; candidates from before the decision existed have none."""
    return int(d.get("rfactor", 1))


def _draw_tile(extent: int, levels: int, config: SpaceConfig, rng: random.Random, vectorized: bool = False,
               may_pad: bool = False, may_tail: bool = False) -> list[int]:
    """Factors (outermost first) whose product is the extent, so every shape tiles exactly; or,
    when `may_pad` (a spatial loop that is not the vector loop), with config.padded_tile_probability,
    an innermost factor that does not divide it (`_padded_inner_factors`) and outer factors whose
    product makes the padded extent: the smallest multiple of that factor above the extent; or,
    when `vectorized` and `may_tail` (the last loop as the vector loop) and config.vector_tails,
    a vector width that does not divide it among the preferred ones (`vector_tail`), where the
    loop is too long to be one vector: a conv's rows of 28 or 14 vectorize whole (LLVM splits a
    vector of 28 into 16 + 8 + 4 lanes), and tails of 16 there ran 1.28x slower (bench/RESULTS.md)."""
    divisors = _divisors(extent)
    inner_choices = [d for d in divisors if d <= config.max_innermost_factor]
    preferred = [d for d in config.vector_factors if extent % d == 0]
    if vectorized and may_tail and config.vector_tails and extent > config.max_innermost_factor:
        preferred += vector_tail_widths(extent, config.vector_factors)
    padded = _padded_inner_factors(extent, config) if may_pad else []
    if vectorized and preferred and rng.random() < config.vector_factor_probability:
        inner_choices = preferred
    elif padded and rng.random() < config.padded_tile_probability:
        inner_choices = padded
    factors = [rng.choice(inner_choices)]
    rest = -(-extent // factors[0])
    for _ in range(levels - 2):
        factors.append(rng.choice(_divisors(rest)))
        rest //= factors[-1]
    factors.append(rest)
    return list(reversed(factors))


def vector_tail_widths(extent: int, widths: Sequence[int]) -> list[int]:
    """The vector widths of `widths` (above 1) narrower than `extent`, where none of them divides it:
    then the only vector loops are ones with a tail (`vector_tail`, `loop_vector_tail`). Where one
    divides, it is the width drawn, as before tails were: a space for a loop of 56 stays as it was."""
    vectors = [v for v in widths if v > 1]
    if any(extent % v == 0 for v in vectors):
        return []
    return [v for v in vectors if v < extent]


def vector_tail(rule: BlockRule, d: dict[str, Any]) -> bool:
    """Whether a tiled block's vector loop leaves a tail: its innermost tile does not divide the extent.

    Its split then has a predicate, which TVM's vectorizer would scalarize whole. Its outer tile
    loops are marked for TVM's loop partitioning instead (`_apply_tiling`), which builds the full
    vectors as vector code and the tail as scalars; TVM fuses no marked loop and partitions no
    fused one, so the axis keeps a level-0 tile of 1 (`_keep_tail_out_of_parallel`)."""
    axis = vector_axis(d)
    return _has_tail(d["spatial"][axis], rule.spatial[axis])


def _has_tail(factors: list[int], extent: int) -> bool:
    """Whether a vector loop's tiles (innermost the vector width) cover more than its extent."""
    return factors[-1] > 1 and _product(factors) != extent


def _keep_tail_out_of_parallel(rule: BlockRule, d: dict[str, Any]) -> None:
    """Move a vector loop's level-0 tile, with a tail, one level in: level 0 is fused into the parallel loop."""
    factors = d["spatial"][vector_axis(d)]
    if vector_tail(rule, d) and factors[0] > 1:
        factors[1] *= factors[0]
        factors[0] = 1


def _padded_inner_factors(extent: int, config: SpaceConfig) -> list[int]:
    """The configured innermost tiles that do not divide `extent` and whose last tile runs past it by at
    most config.max_padding_waste of it (the loop is then split with a predicate on the rest)."""
    return [f for f in config.padded_inner_factors
            if extent % f and f < extent and (-extent % f) <= config.max_padding_waste * extent]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------------------------
# application


def _apply_tiling(sch: s_tir.Schedule, rule: BlockRule, d: dict[str, Any], config: SpaceConfig,
                  producers: dict[str, int] | None = None) -> None:
    """Tile the block as `d` decides; `producers` (name -> L) are computed after the structure's
    first L letters' loops, each with its innermost loop vectorized (a conv's padding: the padded
    region of one tile, built where it is used instead of a padded copy of the whole input)."""
    block = sch.get_sblock(rule.block)
    loops = sch.get_loops(block)
    n_spatial = len(rule.spatial)
    axis = vector_axis(d)
    s_tiles = [sch.split(lp, factors=f) for lp, f in zip(loops[:n_spatial], d["spatial"])]
    r_tiles = [sch.split(lp, factors=f) for lp, f in zip(loops[n_spatial:], d["reduction"])]
    s_tiles = [t for i, t in enumerate(s_tiles) if i != axis] + [s_tiles[axis]]  # the vector loop innermost
    order, s_level, r_level, anchors, ends = [], 0, 0, {}, []
    for kind in config.structure:
        if kind == "S":
            order += [t[s_level] for t in s_tiles]
            s_level += 1
            anchors[s_level] = order[-1]
        else:
            order += [t[r_level] for t in r_tiles]
            r_level += 1
        ends.append(order[-1])  # ends[L - 1]: the innermost loop of the structure's first L letters
    sch.reorder(*order)
    for producer, level in (producers or {}).items():
        sch.compute_at(sch.get_sblock(producer), ends[level - 1], preserve_unit_loops=True)
        _vectorize_innermost(sch, sch.get_sblock(producer), config)
    lanes = d["spatial"][axis][-1]
    if d.get("pack", 0) > 0:
        _pack_operands(sch, block, _packed_reads(rule, axis), lanes, ends[d["pack"] - 1])
    anchor = anchors[d["write_level"]]
    writeback = None
    if d["accumulator"] == "local":
        writeback = sch.cache_write(block, 0, "local")
        if axis != n_spatial - 1:  # the accumulator's vector axis innermost, as the vector loop is
            accumulator = sch.get(block).writes[0].source
            sch.transform_layout(block, ("write", 0), _moved_last(n_spatial, axis, str(accumulator.shape[0].ty)))
        sch.reverse_compute_at(writeback, anchor, preserve_unit_loops=True)
    if rule.epilogue is not None:
        epilogue = sch.get_sblock(rule.epilogue)
        if writeback is not None and rule.epilogue_inline:
            sch.reverse_compute_inline(epilogue)
        else:
            sch.reverse_compute_at(epilogue, anchor, preserve_unit_loops=True)
            _vectorize_innermost(sch, epilogue, config)
    # The write-back of an accumulator transposed for another vector axis stays scalar: vectorized,
    # it gathers, and LLVM then takes seconds to minutes to compile it, for no faster code.
    if writeback is not None and axis == n_spatial - 1:
        _vectorize_innermost(sch, writeback, config)
    # Vectorize before decomposing the reduction: TVM only vectorizes blocks that still have their init.
    if lanes > 1:
        sch.vectorize(s_tiles[-1][-1])
    outer = [t[0] for t in s_tiles]
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if _product(f[0] for f in d["spatial"]) > 1:
        sch.parallel(fused)
    if vector_tail(rule, d):  # after the fusion, which refuses annotated loops
        for loop, factor in zip(s_tiles[-1][1:-1], d["spatial"][axis][1:-1]):
            if factor > 1:
                sch.annotate(loop, LOOP_PARTITION_HINT, 1)
    if r_tiles:
        init = sch.decompose_reduction(block, r_tiles[0][0])
        _vectorize_innermost(sch, init, config)


def _pack_operands(sch: s_tir.Schedule, block: Any, reads: tuple[tuple[int, int], ...], lanes: int, loop: Any) -> None:
    """Copy each operand of `reads` (strided or panel reads, see `_packed_reads`), inside `loop`,
    into a buffer whose innermost axis is the vector axis split by the vector width
    (W[n, k] -> W[n // v, k, n % v], B[k, j] -> B[j // v, k, j % v]): a panel of v rows or columns
    becomes contiguous, so the block's vector loads are too. TVM shrinks the copy to the region
    the block reads under `loop` and allocates it there (per parallel iteration, when inside one).

    The copy loops run in the packed order (written contiguously). A panel's copy reads
    contiguous vectors too and is vectorized. A strided operand's copy is not: its reads are
    strided, so a vector would be a gather of scalars. Vectorized, such 32- and 64-lane copies
    under an unroll pragma took LLVM over 30 s to compile (a batch matmul: 33 s, against 0.1 s
    scalar), and those kernels ran no faster (measured within ±10% either way)."""
    for read_index, buffer_axis in reads:
        packed = sch.cache_read(block, read_index, "global")
        buffer = sch.get(packed).writes[0].source
        ndim = len(buffer.shape)
        sch.transform_layout(packed, ("write", 0), _moved_last(ndim, buffer_axis, str(buffer.shape[0].ty), lanes))
        sch.compute_at(packed, loop, preserve_unit_loops=True)
        copy_loops = sch.get_loops(packed)[-ndim:]
        outer, inner = sch.split(copy_loops[buffer_axis], factors=[None, lanes])
        sch.reorder(outer, *[lp for i, lp in enumerate(copy_loops) if i != buffer_axis], inner)
        if buffer_axis == ndim - 1:  # a panel: contiguous reads
            sch.vectorize(inner)


def _moved_last(ndim: int, axis: int, dtype: str, lanes: int = 0) -> tvm.tirx.IndexMap:
    """(i0, .., i_axis, .., in) -> (the others, i_axis), or with lanes (i_axis // lanes, the others,
    i_axis % lanes), in the buffer's index type."""
    def mapping(*i: Any) -> list[Any]:
        others = [*i[:axis], *i[axis + 1:]]
        return [i[axis] // lanes, *others, i[axis] % lanes] if lanes else [*others, i[axis]]
    return tvm.tirx.IndexMap.from_func(mapping, ndim=ndim, index_dtype=dtype)


def _apply_loops(sch: s_tir.Schedule, rule: BlockRule, d: dict[str, Any]) -> None:
    block = sch.get_sblock(rule.block)
    loops = sch.get_loops(block)
    n_spatial = len(rule.spatial)
    if d["vector"] > 1 and n_spatial:
        outer, inner = sch.split(loops[n_spatial - 1], factors=[None, d["vector"]])
        if len(loops) > n_spatial:
            sch.reorder(outer, *loops[n_spatial:], inner)
        sch.vectorize(inner)
        loops = sch.get_loops(block)
    if d["parallel"] >= 1 and n_spatial:
        lead = loops[: d["parallel"]]
        fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        sch.parallel(fused)
    if loop_vector_tail(rule, d):  # after the fusion, which refuses annotated loops
        sch.annotate(outer, LOOP_PARTITION_HINT, 1)


def _apply_rfactor(sch: s_tir.Schedule, rule: BlockRule, d: dict[str, Any], at_root: bool) -> None:
    """Vectorize a reduction without reuse through rfactor.

    The block's innermost reduction loop is split by the width v; `rfactor` of the inner part
    creates a block `<name>_rf` whose v partial results are spatial (a v-wide vector accumulator
    per output element, the rf buffer's last axis), and the block itself then reduces the v
    partial results. The rf block is computed inside the block's innermost spatial loop, so its
    buffer shrinks to v elements per output and a parallel loop around both stays race-free, and
    its partial-result loop is moved innermost and vectorized: the only loop vectorized is the
    innermost loop of the rf block itself, never a loop around a reduction block.
    """
    lanes = _rfactor_of(d)
    block = sch.get_sblock(rule.block)
    inner = sch.split(sch.get_loops(block)[-1], factors=[None, lanes])[1]
    factor_axis = len(sch.get(block).writes[0].region)  # the rf buffer's last axis
    rf = sch.rfactor(inner, factor_axis)
    outer = sch.get_loops(block)[:-1]  # the block now reduces over the partial results only
    if outer:
        sch.compute_at(rf, outer[-1], preserve_unit_loops=True)
    sch.vectorize(_innermost_rf_loop(sch, rf, factor_axis, len(outer)))
    if at_root and d["parallel"] >= 1 and rule.spatial:
        lead = outer[: d["parallel"]]
        sch.parallel(sch.fuse(*lead) if len(lead) > 1 else lead[0])


def _innermost_rf_loop(sch: s_tir.Schedule, rf: s_tir.schedule.SBlockRV, factor_axis: int, n_outer: int) -> Any:
    """Move the rf block's loop over the partial results innermost (compute_at rebuilds the loops in
    the order of the block's iterators, where rfactor put it first) and return it."""
    stmt = sch.get(rf)
    rf_var = stmt.writes[0].region[factor_axis].min
    index = next((i for i, iv in enumerate(stmt.iter_vars) if iv.var.same_as(rf_var)), None)
    loops = sch.get_loops(rf)
    realize = sch.get(loops[-1]).body  # the rf block is alone in its loop nest
    lane = None
    if index is not None and isinstance(realize, s_tir.stmt.SBlockRealize):
        binding = realize.iter_values[index]
        lane = next((lp for lp in loops if sch.get(lp).loop_var.same_as(binding)), None)
    if lane is None:
        raise ValueError(f"no loop of its own runs over the partial results of {stmt.name_hint}")
    others = [lp for lp in loops[n_outer:] if not sch.get(lp).same_as(sch.get(lane))]
    if others:
        sch.reorder(*others, lane)
    return lane


def _vectorize_innermost(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, config: SpaceConfig) -> None:
    """Vectorize a copy/epilogue block's last loop, split so that the vector is at most 64 lanes."""
    loop = sch.get_loops(block)[-1]
    extent = int(sch.get(loop).extent)
    if extent <= 1 or sch.get(loop).kind != tvm.tirx.ForKind.SERIAL:
        return
    lanes = max(d for d in _divisors(extent) if d <= max(config.vector_factors))
    if lanes < extent:
        loop = sch.split(loop, factors=[None, lanes])[1]
    if lanes > 1:
        sch.vectorize(loop)


def _annotate_unroll(sch: s_tir.Schedule, max_step: int) -> None:
    if max_step <= 0:
        return
    seen: list[Any] = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        if loops and not any(sch.get(loops[0]).same_as(s) for s in seen):
            seen.append(sch.get(loops[0]))
            sch.annotate(loops[0], "pragma_auto_unroll_max_step", max_step)
            sch.annotate(loops[0], "pragma_unroll_explicit", 1)


def _product(values: Any) -> int:
    out = 1
    for v in values:
        out *= v
    return out


def _plain(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tvm.tirx.IntImm):
        return int(obj.value)
    if isinstance(obj, tvm.tirx.FloatImm):
        return float(obj.value)
    if hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if hasattr(obj, "__iter__"):
        return [_plain(v) for v in obj]
    return str(obj)
