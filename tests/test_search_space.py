"""The search space: rules per block, TOML validation, and a property test that sampled
candidates of every built-in operator build and compute the right numbers."""

import copy
import json
import platform
import random
import re
from dataclasses import replace

import numpy as np
import pytest
import tvm
from tvm import te

from autotune import ops, search_space, vector_math
from autotune.errors import SearchSpaceError
from autotune.search_space import (Candidate, SearchSpace, apply_candidate, loop_vector_choices, rfactor_choices,
                                   trace_json)
from autotune.space_config import load_space_config, search_spaces_dir
from autotune.target import VectorRegisters, resolve_target
from autotune.workload import as_workload

CASES = [
    ("matmul", "33,40,24", {}),
    ("matmul", "127,100,33", {}),
    ("batch_matmul", "2,16,24,8", {}),
    ("dense", "16,32,24", {"bias": "true", "epilogue": "relu"}),
    ("dense", "8,16,16", {"epilogue": "gelu"}),
    ("dense", "4,197,16", {"bias": "true", "epilogue": "relu"}),  # no vector width divides 197: tails
    ("conv2d_nchw", "1,8,10,10,8,3,3", {"bias": "true", "relu": "true"}),
    ("conv2d_nhwc", "1,10,10,8,8,3,3", {}),
    ("depthwise_conv2d", "1,8,12,12,3,3", {}),
    ("pool2d", "1,4,8,8,2,2", {"kind": "max"}),
    ("pool2d", "1,4,9,9,3,3", {"kind": "avg", "stride": "2", "padding": "1"}),
    ("softmax", "12,40", {}),
    ("layernorm", "12,40", {}),
    # row reductions whose reduction may be vectorized by rfactor (and odd extents where it may not)
    ("softmax", "8,40", {}),
    ("softmax", "127,33", {}),
    ("layernorm", "8,40", {}),
    ("layernorm", "127,33", {}),
    ("pool2d", "1,4,8,8,2,2", {"kind": "avg"}),
    ("pool2d", "1,3,9,10,2,2", {"kind": "max", "stride": "1"}),
    ("pool2d", "1,2,8,16,2,8", {"kind": "avg"}),
    ("pool2d", "1,2,6,20,3,8", {"kind": "max", "stride": "2"}),
]
SAMPLES_PER_CASE = 10


@pytest.fixture(scope="module")
def target():
    return resolve_target("llvm").target


def _run(mod, workload, target, inputs):
    lib = tvm.compile(mod, target=target)
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in inputs]
    lib["main"](*tensors)
    return [t.numpy() for t, a in zip(tensors, workload.args) if a.is_output]


def _row_sum(m, n):
    a = te.placeholder((m, n), name="A")
    k = te.reduce_axis((0, n), name="k")
    return as_workload([a, te.compute((m,), lambda i: te.sum(a[i, k], axis=k), name="S")], name=f"row_sum_{m}x{n}")


def _window_sum(c, h, w):
    """Two reduction loops, like a global average pool: the lanes run along the inner one."""
    a = te.placeholder((c, h, w), name="A")
    r, s = te.reduce_axis((0, h), name="r"), te.reduce_axis((0, w), name="s")
    return as_workload([a, te.compute((c,), lambda i: te.sum(a[i, r, s], axis=[r, s]), name="S")], name="window_sum")


def _total_max(n):
    """No spatial loop at all: a reduction to a scalar."""
    a = te.placeholder((n,), name="A")
    k = te.reduce_axis((0, n), name="k")
    return as_workload([a, te.compute((), lambda: te.max(a[k], axis=k), name="M")], name=f"total_max_{n}")


TE_CASES = {
    "row_sum-127x40": lambda: _row_sum(127, 40),
    "row_sum-8x33": lambda: _row_sum(8, 33),
    "window_sum-6x7x8": lambda: _window_sum(6, 7, 8),
    "total_max-96": lambda: _total_max(96),
}


def _check_samples(workload, target):
    space = SearchSpace(workload)
    inputs = workload.random_inputs(seed=1)
    expected = _run(workload.mod, workload, target, inputs)
    rng = random.Random(0)
    keys, rfactored = set(), 0
    for _ in range(SAMPLES_PER_CASE):
        candidate = space.sample(rng)
        keys.add(candidate.key)
        mod = apply_candidate(space, candidate).mod
        _assert_vector_loops_are_innermost(mod.script(), candidate)
        got = _run(mod, workload, target, inputs)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-3, err_msg=json.dumps(candidate.decisions))
        rfactored += any(d.get("rfactor", 1) > 1 for d in candidate.decisions["blocks"].values())
    assert len(keys) > SAMPLES_PER_CASE // 2, "sampling should give mostly distinct candidates"
    if any(rfactor_choices(r, space.config) != [1] for r in space.rules):
        assert rfactored, "the samples should vectorize some reductions"


def _assert_vector_loops_are_innermost(script, candidate):
    """No loop inside a vectorized loop: TVM accepts vectorizing a loop around a reduction's loops
    and computes wrong numbers, so the rules must never produce one."""
    lines = script.splitlines()
    for i, line in enumerate(lines):
        if "T.vectorized(" not in line:
            continue
        indent = len(line) - len(line.lstrip())
        for inner in lines[i + 1 :]:
            if inner.strip() and len(inner) - len(inner.lstrip()) <= indent:
                break
            message = f"loop inside a vector loop: {json.dumps(candidate.decisions)}"
            assert not inner.lstrip().startswith("for "), message


@pytest.mark.parametrize("op,shape,options", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_sampled_candidates_build_and_compute_the_reference(op, shape, options, target):
    _check_samples(ops.make(op, shape, **options), target)


@pytest.mark.parametrize("case", sorted(TE_CASES))
def test_sampled_reductions_build_and_compute_the_reference(case, target):
    _check_samples(TE_CASES[case](), target)


def test_rules_follow_the_blocks():
    rules = {r.block: r for r in SearchSpace(ops.make("dense", "16,32,24", bias="true", epilogue="relu")).rules}
    assert rules["dense"].rule == "tile" and rules["dense"].epilogue == "relu"
    softmax = SearchSpace(ops.make("softmax", "12,40"))
    kinds = {r.block: r.rule for r in softmax.rules}
    assert "T_softmax_exp" in softmax.inlined
    assert kinds["T_softmax_expsum"] == "compute_at" and kinds["T_softmax_norm"] == "loops"
    conv = SearchSpace(ops.make("conv2d_nchw", "1,8,10,10,8,3,3"))
    pad, tile = conv.rules  # padding feeds a tiled block: inlining it is a decision, not a given
    assert pad.rule == "loops" and pad.inlinable and tile.rule == "tile" and not conv.inlined
    drawn = {conv._draw(random.Random(i))["blocks"][pad.block]["inline"] for i in range(20)}
    assert drawn == {True, False}
    pool = SearchSpace(ops.make("pool2d", "1,4,8,8,2,2"))
    assert [r.rule for r in pool.rules] == ["loops"]  # no reuse: not tiled


def test_row_reductions_may_vectorize_their_reduction():
    softmax = SearchSpace(ops.make("softmax", "8,40"))
    rules = {r.block: r for r in softmax.rules}
    # exp feeds the sum and the normalisation: inlined by default, keeping it is a decision
    assert "T_softmax_exp" in softmax.inlined and rules["T_softmax_exp"].inlinable
    assert rules["T_softmax_maxelem"].rule == "loops" and rules["T_softmax_expsum"].rule == "compute_at"
    # inside the column loop (depth 2) the sum cannot be rfactored
    assert rules["T_softmax_expsum"].rfactor_depths == (0, 1)
    draws = [softmax._draw(random.Random(i))["blocks"] for i in range(30)]
    assert {d["T_softmax_maxelem"]["rfactor"] for d in draws} == {1, 4, 8}  # the widths that divide 40
    assert {d["T_softmax_exp"]["inline"] for d in draws} == {True, False}
    for d in draws:
        for name in ("T_softmax_maxelem", "T_softmax_expsum"):
            assert d[name]["rfactor"] == 1 or d[name]["vector"] == 1  # one vector loop or the other
        assert d["T_softmax_expsum"]["rfactor"] == 1 or d["T_softmax_expsum"]["depth"] in (0, 1)
    odd = {r.block: r for r in SearchSpace(ops.make("softmax", "127,33")).rules}
    assert rfactor_choices(odd["T_softmax_maxelem"], softmax.config) == [1]  # no width divides 33
    pool = SearchSpace(ops.make("pool2d", "1,4,8,8,2,2", kind="max")).rules[0]
    assert rfactor_choices(pool, softmax.config) == [1]  # two values per window row: nothing to gain
    wide = SearchSpace(ops.make("pool2d", "1,2,8,16,2,8", kind="max")).rules[0]
    assert rfactor_choices(wide, softmax.config) == [1, 4, 8]  # lanes along the window's rows
    tiled = SearchSpace(ops.make("matmul", "16,16,16")).rules[0]
    assert rfactor_choices(tiled, softmax.config) == [1]


@pytest.mark.parametrize("op,shape", [("softmax", "8,40"), ("layernorm", "8,40")])
def test_rfactor_composes_with_compute_at_parallel_and_kept_producers(op, shape, target):
    workload = ops.make(op, shape)
    space = SearchSpace(workload)
    inputs = workload.random_inputs(seed=2)
    expected = _run(workload.mod, workload, target, inputs)
    at, root, out, kept = (r.block for r in (
        next(r for r in space.rules if r.rule == "compute_at"),
        next(r for r in space.rules if r.reduction and r.rule == "loops"),
        space.rules[-1],
        space.rules[0],
    ))
    for depth in (0, 1):
        for inline in (True, False):
            blocks = {
                kept: {"parallel": 1, "vector": 8, "inline": inline},
                root: {"parallel": 1, "vector": 1, "rfactor": 8},
                at: {"depth": depth, "parallel": 1, "vector": 1, "rfactor": 4},
                out: {"parallel": 1, "vector": 8},
            }
            candidate = Candidate({"format": 1, "blocks": blocks, "unroll": 16})
            sch = apply_candidate(space, candidate)
            script = sch.mod.script()
            assert f'T.sblock("{root}_rf")' in script and f'T.sblock("{at}_rf")' in script
            _assert_vector_loops_are_innermost(script, candidate)
            got = _run(sch.mod, workload, target, inputs)
            np.testing.assert_allclose(got[0], expected[0], rtol=1e-3, atol=1e-3, err_msg=json.dumps(blocks))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="checks x86 assembly")
def test_rfactor_gives_simd_code(target):
    workload = _row_sum(64, 256)
    space = SearchSpace(workload)

    def packed_adds(rfactor):
        blocks = {"S": {"parallel": 0, "vector": 1, "rfactor": rfactor}}
        candidate = Candidate({"format": 1, "blocks": blocks, "unroll": 0})
        asm = tvm.compile(apply_candidate(space, candidate).mod, target=target).mod.inspect_source("s")
        return len(re.findall(r"\bv?addps\b", asm))

    assert packed_adds(1) == 0 and packed_adds(16) > 0


def test_candidates_from_before_rfactor_apply_as_before():
    space = SearchSpace(ops.make("softmax", "12,40"))
    blocks = {
        "T_softmax_maxelem": {"parallel": 1, "vector": 4},
        "T_softmax_expsum": {"depth": 1, "parallel": 0, "vector": 1},
        "T_softmax_norm": {"parallel": 1, "vector": 8},
    }
    old = Candidate({"format": 1, "blocks": blocks, "unroll": 0})
    explicit = json.loads(json.dumps(blocks))
    explicit["T_softmax_exp"] = {"parallel": 0, "vector": 1, "inline": True}
    for name in ("T_softmax_maxelem", "T_softmax_expsum"):
        explicit[name]["rfactor"] = 1
    new = Candidate({"format": 1, "blocks": explicit, "unroll": 0})
    assert apply_candidate(space, old).mod.script() == apply_candidate(space, new).mod.script()
    assert 'T.sblock("T_softmax_exp")' not in apply_candidate(space, old).mod.script()  # still inlined
    # the untuned baseline is unchanged too: only the elementwise producers inlined
    default = apply_candidate(space, space.default_candidate()).mod.script()
    assert 'T.sblock("T_softmax_exp")' not in default and "_rf" not in default and "T.parallel" not in default


def test_rfactor_schedules_replay_from_their_trace():
    workload = ops.make("layernorm", "8,40")
    space = SearchSpace(workload)
    rng = random.Random(4)
    for _ in range(4):
        sch = apply_candidate(space, space.sample(rng))
        replay = tvm.s_tir.Schedule(workload.mod)
        tvm.s_tir.schedule.Trace.apply_json_to_schedule(json.loads(json.dumps(trace_json(sch))), replay)
        assert replay.mod.script() == sch.mod.script()


def test_constrain_keeps_one_vector_loop_and_feasible_rfactors():
    space = SearchSpace(ops.make("softmax", "8,40"))
    blocks = {
        "T_softmax_exp": {"parallel": 0, "vector": 1, "inline": True},
        "T_softmax_maxelem": {"parallel": 1, "vector": 8, "rfactor": 8},
        "T_softmax_expsum": {"depth": 2, "parallel": 0, "vector": 1, "rfactor": 4},
        "T_softmax_norm": {"parallel": 1, "vector": 8},
    }
    constrained = space.constrain({"format": 1, "blocks": blocks, "unroll": 0})["blocks"]
    assert constrained["T_softmax_maxelem"] == {"parallel": 1, "vector": 1, "rfactor": 8}
    assert constrained["T_softmax_expsum"]["rfactor"] == 1  # not feasible inside the column loop
    assert constrained["T_softmax_norm"]["vector"] == 1  # the sum is computed inside its last loop


def test_vector_widths_that_leave_a_tail_are_drawn_where_none_divides_and_the_parallel_loop_leaves_them_alone():
    space = SearchSpace(ops.make("softmax", "12,37"))
    rules = {r.block: r for r in space.rules}
    # no width divides rows of 37: those narrower than it, each with a tail (37 = 2 x 16 + 5)
    assert loop_vector_choices(rules["T_softmax_norm"], space.config, 1) == [1, 4, 8, 16, 32]
    # a parallel loop over both loops would fuse the vector loop's outer part, which TVM then cannot partition
    assert loop_vector_choices(rules["T_softmax_norm"], space.config, 2) == [1]
    # a reduction's vector loop runs across its rows: only the widths that divide them
    assert loop_vector_choices(rules["T_softmax_maxelem"], space.config, 1) == [1, 4]
    # where a width divides, no tails: the space of a loop of 40 is what it was
    assert loop_vector_choices(SearchSpace(ops.make("softmax", "12,40")).rules[-1], space.config, 1) == [1, 4, 8]
    blocks = {"T_softmax_exp": {"parallel": 0, "vector": 1, "inline": True},
              "T_softmax_maxelem": {"parallel": 1, "vector": 4},
              "T_softmax_expsum": {"depth": 0, "parallel": 1, "vector": 1},
              "T_softmax_norm": {"parallel": 2, "vector": 16}}
    constrained = space.constrain({"format": 1, "blocks": blocks, "unroll": 0})["blocks"]
    assert constrained["T_softmax_norm"] == {"parallel": 1, "vector": 16}
    assert constrained["T_softmax_maxelem"] == {"parallel": 1, "vector": 4}
    draws = [space._draw(random.Random(seed))["blocks"]["T_softmax_norm"] for seed in range(200)]
    assert {d["vector"] for d in draws} >= {16, 32} and all(d["parallel"] < 2 for d in draws if d["vector"] > 1)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="checks x86 assembly")
def test_a_tiled_vector_loop_with_a_tail_is_built_as_vector_code(target):
    """Attention scores of 37 columns, tiled by 16: 2 full vectors of FMAs and a scalar tail of 5.
    Without the partition hint TVM scalarizes the predicated vector loop, all of it."""
    workload = ops.make("batch_matmul", "2,8,37,16")
    tile = {"spatial": [[2, 1, 1, 1], [1, 2, 1, 4], [1, 3, 1, 16]], "reduction": [[16, 1]], "write_level": 1,
            "accumulator": "local"}
    sch = apply_candidate(SearchSpace(workload), Candidate({"format": 1, "blocks": {"C": tile}, "unroll": 0}))

    def packed_fmas(mod):
        return len(re.findall(r"\bvfmadd\w*ps\b", tvm.compile(mod, target=target).mod.inspect_source("s")))

    partitioned = sch.mod
    hinted = {str(sch.get(lp).loop_var): lp for block in sch.get_child_blocks(sch.get_sblock("root"))
              for lp in sch.get_loops(block) if search_space.LOOP_PARTITION_HINT in sch.get(lp).annotations}
    assert list(hinted) == ["i2_1"]  # the vector axis's level-1 loop of 3
    for loop in hinted.values():
        sch.unannotate(loop, search_space.LOOP_PARTITION_HINT)
    assert packed_fmas(partitioned) > 10 * packed_fmas(sch.mod)  # 40 against 1 on AVX-512
    inputs = workload.random_inputs(seed=0)
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in inputs]
    tvm.compile(partitioned, target=target)["main"](*tensors)
    np.testing.assert_allclose(tensors[-1].numpy(), inputs[0] @ inputs[1], rtol=1e-5, atol=1e-5)


def test_tiled_vector_loops_with_a_tail_are_drawn_where_no_width_divides_and_stay_out_of_the_parallel_loop():
    rng = random.Random(0)
    space = SearchSpace(ops.make("batch_matmul", "4,19,100,8"), cores=2)
    rule = space.rules[0]
    tiles = [space.sample(rng).decisions["blocks"]["C"] for _ in range(40)]
    tailed = [d for d in tiles if search_space.vector_tail(rule, d)]
    assert len(tailed) > 10
    for d in tailed:
        factors = d["spatial"][-1]
        assert factors[0] == 1 and factors[-1] in space.config.vector_factors and "pack" not in d
        assert np.prod(factors) == -(-100 // factors[-1]) * factors[-1]  # the smallest cover of 100
    # none where a width divides the loop (96), nor where the loop can be one vector (a conv's rows of 28)
    for shape in ("4,19,96,8", "4,19,28,8"):
        plain = SearchSpace(ops.make("batch_matmul", shape), cores=2)
        assert not any(search_space.vector_tail(plain.rules[0], plain.sample(rng).decisions["blocks"]["C"])
                       for _ in range(40))


@pytest.mark.skipif(not vector_math.register_isas(resolve_target("llvm").target), reason="needs x86 and libmvec")
@pytest.mark.parametrize("shape,parallel", [((3, 197), 0), ((3, 197), 1), ((197,), 1)])
def test_a_vector_loop_with_a_tail_is_built_as_vector_calls_and_a_scalar_tail(shape, parallel, target):
    """ViT's rows of 197 (a prime): 12 vectors of 16 and 5 scalars, not 13 predicated vectors
    that TVM would turn back into 197 scalar exp calls. One loop: the vector loop's outer part is
    the parallel loop."""
    a = te.placeholder(shape, name="A")
    workload = as_workload([a, te.compute(shape, lambda *i: te.exp(a[i]), name="B")], name="exp_tail")
    candidate = Candidate({"format": 1, "blocks": {"B": {"parallel": parallel, "vector": 16}}, "unroll": 0})
    mod = apply_candidate(SearchSpace(workload), candidate).mod
    executable = vector_math.build(mod, target)
    calls = set(re.findall(r"call\w*\s+\*?([\w.]+)@PLT", executable.mod.inspect_source("asm")))
    assert any(c.startswith("_ZGV") for c in calls) and "expf" in calls, calls
    x = workload.random_inputs(seed=0)[0]
    out = tvm.runtime.tensor(np.zeros_like(x), tvm.cpu())
    executable.mod(tvm.runtime.tensor(x, tvm.cpu()), out)
    np.testing.assert_allclose(out.numpy(), np.exp(x), rtol=1e-6)


def test_strided_reads_are_the_operands_a_vector_axis_reads_with_a_stride():
    dense = next(r for r in SearchSpace(ops.make("dense", "16,32,24")).rules if r.rule == "tile")
    assert dense.strided_reads == (((0, 0),), ((1, 0),))  # data[i, k] along i, weight[j, k] along j
    matmul = next(r for r in SearchSpace(ops.make("matmul", "16,32,24")).rules if r.rule == "tile")
    assert matmul.strided_reads == (((0, 0),), ())  # B[k, j] is contiguous along j already
    conv = next(r for r in SearchSpace(ops.make("conv2d_nchw", "1,8,10,10,16,3,3")).rules if r.rule == "tile")
    assert conv.strided_reads[1] == ((1, 0),) and conv.strided_reads[3] == ()  # weight[k, c, r, s]; x[.., w + s]


def test_panel_reads_are_contiguous_operands_a_row_apart_per_reduction_step():
    matmul = next(r for r in SearchSpace(ops.make("matmul", "16,32,24")).rules if r.rule == "tile")
    assert matmul.panel_reads == ((), ((1, 1),))  # B[k, j] along j; A[i, k] is not indexed by j
    bmm = next(r for r in SearchSpace(ops.make("batch_matmul", "2,16,32,24")).rules if r.rule == "tile")
    assert bmm.panel_reads == ((), (), ((1, 2),))  # B[b, k, j]
    dense = next(r for r in SearchSpace(ops.make("dense", "16,32,24")).rules if r.rule == "tile")
    assert dense.panel_reads == ((), ())  # weight[j, k] is strided along j, not a panel
    conv = next(r for r in SearchSpace(ops.make("conv2d_nchw", "1,8,10,10,16,3,3")).rules if r.rule == "tile")
    assert conv.panel_reads[3] == ()  # x[.., w + s] is indexed by an expression


@pytest.mark.parametrize("op,shape,options,block,axis", [
    ("dense", "16,32,24", {"bias": "true", "epilogue": "relu"}, "dense", 1),
    ("matmul", "32,16,24", {}, "C", 0),
    ("matmul", "32,16,24", {}, "C", 1),  # the last axis: B's panels
    ("batch_matmul", "2,16,32,24", {}, "C", 2),
    ("conv2d_nchw", "1,8,6,6,16,3,3", {"bias": "true", "relu": "true"}, "conv2d_nchw", 1),
])
@pytest.mark.parametrize("pack", [1, 2, 3])
@pytest.mark.parametrize("accumulator", ["local", "global"])
def test_packed_operands_and_other_vector_axes_compute_the_reference(op, shape, options, block, axis, pack,
                                                                     accumulator, target):
    workload = ops.make(op, shape, **options)
    space = SearchSpace(workload)
    rule = next(r for r in space.rules if r.block == block)
    rng = random.Random(pack)
    inputs = workload.random_inputs(seed=1)
    expected = _run(workload.mod, workload, target, inputs)
    for _ in range(3):
        decisions = space._draw(rng)
        tile = decisions["blocks"][block]
        tile.update(accumulator=accumulator, vector_axis=axis, pack=pack)
        tile["spatial"][axis] = [1, 2, rule.spatial[axis] // 16, 8]
        candidate = Candidate(space.constrain(decisions))
        script = apply_candidate(space, candidate).mod.script()
        _assert_vector_loops_are_innermost(script, candidate)
        # the packed operand's innermost axis is the 8 lanes of the vector loop
        assert re.search(r"_global = T\.sblock_alloc_buffer\(\([0-9, ]+, 8\)\)", script), script
        for got, want in zip(_run(apply_candidate(space, candidate).mod, workload, target, inputs), expected):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3, err_msg=json.dumps(candidate.decisions))


@pytest.mark.parametrize("op,shape", [("depthwise_conv2d", "1,8,12,12,3,3"), ("conv2d_nchw", "1,8,10,10,8,3,3")])
def test_padding_may_be_computed_inside_the_tile_loops(op, shape, target):
    workload = ops.make(op, shape)
    space = SearchSpace(workload)
    pad = next(r for r in space.rules if r.rule == "loops" and r.consumer)
    inputs = workload.random_inputs(seed=1)
    expected = _run(workload.mod, workload, target, inputs)
    rng = random.Random(0)
    for level in range(1, len(space.config.structure)):
        decisions = space._draw(rng)
        decisions["blocks"][pad.block].update(inline=False, at=level)
        for key in ("vector_axis", "pack"):  # packing the padded input itself needs it computed first
            decisions["blocks"][pad.consumer].pop(key, None)
        candidate = Candidate(space.constrain(decisions))
        assert candidate.decisions["blocks"][pad.block]["at"] == level
        sch = space.try_apply(candidate)
        assert sch is not None, json.dumps(candidate.decisions)
        assert len(sch.get_loops(sch.get_sblock(pad.block))) > len(pad.spatial)  # under the tile's loops
        _assert_vector_loops_are_innermost(sch.mod.script(), candidate)
        for got, want in zip(_run(sch.mod, workload, target, inputs), expected):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3, err_msg=json.dumps(candidate.decisions))
    inlined = space._draw(rng)
    inlined["blocks"][pad.block].update(inline=True, at=2)
    assert "at" not in space.constrain(inlined)["blocks"][pad.block]  # nothing left to place
    drawn = [space.sample(rng).decisions["blocks"].get(pad.block, {}) for _ in range(30)]
    assert any(d.get("at") for d in drawn) and any(not d.get("at") for d in drawn)


def test_candidates_applied_together_give_the_schedules_applied_one_by_one():
    """try_apply_all (threads) keeps the order and the rejections of try_apply, and the schedules."""
    space = SearchSpace(ops.make("conv2d_nchw", "1,8,10,10,8,3,3", bias="true", relu="true"))
    rng = random.Random(3)
    candidates = [space.sample(rng) for _ in range(12)]
    rejected = copy.deepcopy(candidates[0].decisions)
    rejected["blocks"]["conv2d_nchw"]["spatial"][1] = [7, 1, 1, 1]  # 7 does not divide the 8 output channels
    candidates.insert(5, Candidate(rejected))
    together = space.try_apply_all(candidates)
    alone = [space.try_apply(c) for c in candidates]
    assert together[5] is None and alone[5] is None
    assert [s is None for s in together] == [s is None for s in alone]
    assert [s.mod.script() for s in together if s] == [s.mod.script() for s in alone if s]
    sampled = space.sample_applied_many(random.Random(4), 10)
    assert len(sampled) == 10
    assert all(sch.mod.script() == apply_candidate(space, c).mod.script() for c, sch in sampled)


def test_draws_pack_panels_with_the_configured_probability():
    space = SearchSpace(ops.make("matmul", "64,64,64"))
    rng = random.Random(0)

    def packed_share(probability: float) -> float:
        # only the last axis vectorized: a pack drawn for A's strided rows (axis 0) is not drawn here
        space.config = replace(space.config, panel_pack_probability=probability, vector_axes="last")
        drawn = [space.constrain(space._draw(rng))["blocks"]["C"] for _ in range(200)]
        vectorized = [d for d in drawn if d["spatial"][1][-1] > 1]
        return sum("pack" in d for d in vectorized) / len(vectorized)

    assert packed_share(0.0) == 0 and packed_share(1.0) == 1
    assert 0.1 < packed_share(0.25) < 0.4


def test_unroll_steps_are_drawn_by_their_weights():
    space = SearchSpace(ops.make("matmul", "64,64,64"))
    rng = random.Random(0)
    space.config = replace(space.config, unroll_steps=(0, 512), unroll_weights=(3.0, 1.0), unvectorized_tile_probability=0.0)
    drawn = [space._draw(rng)["unroll"] for _ in range(400)]
    assert set(drawn) == {0, 512} and 0.15 < drawn.count(512) / len(drawn) < 0.35
    space.config = replace(space.config, unroll_weights=(1.0, 0.0), unvectorized_tile_probability=1.0)
    assert {space._draw(rng)["unroll"] for _ in range(50)} == {0}  # even where the tile is left to LLVM


def test_candidates_from_before_vector_axes_and_packing_keep_their_keys():
    space = SearchSpace(ops.make("dense", "16,32,24"))
    tile = {"spatial": [[1, 2, 4, 2], [1, 2, 2, 8]], "reduction": [[3, 8]], "write_level": 1, "accumulator": "local"}
    old = Candidate({"format": 1, "blocks": {"dense": dict(tile)}, "unroll": 0})
    spelled_out = {"format": 1, "blocks": {"dense": {**tile, "vector_axis": 1, "pack": 0}}, "unroll": 0}
    assert Candidate(space.constrain(spelled_out)).key == old.key
    no_lanes = {"format": 1, "blocks": {"dense": {**tile, "spatial": [[1, 2, 4, 2], [2, 2, 8, 1]], "pack": 2}}}
    assert "pack" not in space.constrain(no_lanes)["blocks"]["dense"]  # nothing to pack without a vector


def test_another_vector_axis_always_packs_its_strided_operands():
    """Unpacked, its vector loads would be gathers of scalars: slow, and minutes of LLVM once unrolled."""
    space = SearchSpace(ops.make("dense", "16,32,24"))
    tile = {"spatial": [[1, 2, 1, 8], [1, 2, 4, 4]], "reduction": [[3, 8]], "write_level": 1,
            "accumulator": "local", "vector_axis": 0, "pack": 0}
    assert space.constrain({"format": 1, "blocks": {"dense": dict(tile)}, "unroll": 0})["blocks"]["dense"]["pack"] == 1
    rng = random.Random(0)
    drawn = [space.constrain(space._draw(rng))["blocks"]["dense"] for _ in range(100)]
    other_axis = [d for d in drawn if d.get("vector_axis") == 0]
    assert other_axis and all(d["pack"] in (1, 2, 3) for d in other_axis)
    assert any("pack" not in d for d in drawn if "vector_axis" not in d)  # the last axis may still gather
    unpacked = SearchSpace(space.workload, replace(space.config, pack_levels=(0,)))
    assert "pack" not in unpacked.constrain({"format": 1, "blocks": {"dense": dict(tile)}, "unroll": 0})["blocks"]["dense"]


def test_a_transposed_register_tile_is_kept_small():
    space = SearchSpace(ops.make("batch_matmul", "12,128,128,64"))
    tile = {"spatial": [[1, 1, 2, 6], [1, 1, 2, 64], [1, 1, 2, 64]], "reduction": [[16, 4]],
            "write_level": 1, "accumulator": "global", "vector_axis": 1}
    constrained = space.constrain({"format": 1, "blocks": {"C": copy.deepcopy(tile)}, "unroll": 0})["blocks"]["C"]
    inner = [f[-1] for f in constrained["spatial"]]
    assert inner[1] == 64 and int(np.prod(inner)) <= space.config.max_transposed_register_tile
    assert [int(np.prod(f)) for f in constrained["spatial"]] == [12, 128, 128]  # still tiles the loops
    assert constrained["accumulator"] == "local"
    last = dict(copy.deepcopy(tile), vector_axis=2)  # the last axis: the space as it was, large tiles included
    assert space.constrain({"format": 1, "blocks": {"C": last}, "unroll": 0})["blocks"]["C"]["spatial"] == tile["spatial"]
    assert int(np.prod([f[-1] for f in tile["spatial"]])) > space.config.max_transposed_register_tile


def test_the_vector_axis_can_be_kept_last():
    config = load_space_config("cpu")
    space = SearchSpace(ops.make("conv2d_nchw", "1,16,6,6,16,3,3"), replace(config, vector_axes="last"))
    rng = random.Random(0)
    assert all("vector_axis" not in space._draw(rng)["blocks"]["conv2d_nchw"] for _ in range(20))
    space = SearchSpace(ops.make("conv2d_nchw", "1,16,6,6,16,3,3"), config)
    assert {space._draw(rng)["blocks"]["conv2d_nchw"].get("vector_axis", 3) for _ in range(40)} == {1, 3}


def test_tiles_of_the_vectorized_loop_multiply_to_the_extent():
    space = SearchSpace(ops.make("matmul", "127,100,33"))
    rng = random.Random(5)
    waste = space.config.max_padding_waste
    for _ in range(20):
        tile = space._draw(rng)["blocks"]["C"]
        axis = tile.get("vector_axis", 1)
        for i, (factors, extent) in enumerate(zip(tile["spatial"] + tile["reduction"], (127, 100, 33))):
            if i == 1 and search_space.vector_tail(space.rules[0], tile):  # no width divides 100: a tail
                assert int(np.prod(factors)) == -(-extent // factors[-1]) * factors[-1]
            elif i in (axis, 1, 2):  # the vector loop, the last loop and the reduction tile exactly
                assert int(np.prod(factors)) == extent
            else:  # another loop's last tile may run past its end (a padded register tile)
                assert extent <= int(np.prod(factors)) <= extent * (1 + waste)


def test_draws_pad_other_loops_than_the_vector_loop_with_the_configured_probability():
    space = SearchSpace(ops.make("matmul", "512,512,64"))
    rng = random.Random(0)

    def padded_share(probability: float) -> float:
        space.config = replace(space.config, padded_tile_probability=probability, vector_axes="last")
        drawn = [space.constrain(space._draw(rng))["blocks"]["C"] for _ in range(200)]
        assert all(int(np.prod(d["spatial"][1])) == 512 for d in drawn)  # the vector loop: exact
        rows = [int(np.prod(d["spatial"][0])) for d in drawn]
        assert all(512 <= r <= 512 * (1 + space.config.max_padding_waste) for r in rows)
        return sum(r > 512 for r in rows) / len(rows)

    assert padded_share(0.0) == 0 and padded_share(1.0) == 1
    assert 0.1 < padded_share(0.25) < 0.4
    assert SearchSpace(ops.make("matmul", "10,16,8")).config.padded_inner_factors  # the default file pads
    assert search_space._padded_inner_factors(10, space.config) == []  # 12 > 10; 3, 6, 7 waste over 1/8
    assert search_space._padded_inner_factors(512, space.config) == [3, 5, 6, 7, 12, 24]


def test_a_register_tile_mutation_pads_and_unpads_a_loop_keeping_the_inner_levels():
    """Moving factors keeps each loop's product, so only this mutation goes from 4 x 16 to 6 x 16 and back."""
    space = SearchSpace(ops.make("matmul", "512,512,64"))
    rule = space.rules[0]
    rng = random.Random(0)
    start = {"spatial": [[8, 16, 4], [8, 4, 16]], "reduction": [[4, 16]], "write_level": 1, "accumulator": "local"}
    seen = set()
    for _ in range(60):
        d = json.loads(json.dumps(start))
        search_space.redraw_register_tile(rule, d, space.config, rng)
        rows, cols = d["spatial"]
        assert cols == start["spatial"][1]  # the vector loop is not touched
        assert 512 <= int(np.prod(rows)) <= 512 * (1 + space.config.max_padding_waste)
        assert rows[-1] != 4 and (512 % rows[-1] == 0 or rows[-1] in space.config.padded_inner_factors)
        seen.add(rows[-1])
    assert {6, 12} <= seen and 2 in seen  # padded ones and exact ones
    assert search_space._refactored([8, 16, 4], 512, 6) == [43, 2, 6]  # 86 rows of 6: the middle keeps gcd(16, 86)
    assert search_space._refactored([43, 2, 6], 512, 4) == [64, 2, 4]  # and back to an exact tile
    # A config that never pads (padded_tile_probability 0) is never padded by the mutation either.
    exact = replace(space.config, padded_tile_probability=0.0)
    for _ in range(30):
        d = json.loads(json.dumps(start))
        search_space.redraw_register_tile(rule, d, exact, rng)
        assert int(np.prod(d["spatial"][0])) == 512
    # With AVX2's register file (12 of its 16 registers for accumulators, 2 per row of 16 lanes),
    # a tile of 12 or 24 rows is shrunk as a draw's would be: 6 rows at most.
    avx2 = VectorRegisters(count=16, bytes=32)
    for _ in range(40):
        d = json.loads(json.dumps(start))
        search_space.redraw_register_tile(rule, d, space.config, rng, avx2)
        assert d["spatial"][0][-1] <= 6 and 512 <= int(np.prod(d["spatial"][0])) <= 576


def _mutated_candidates_compute_the_reference(op: str, shape: str, mutation, seed: int, target) -> list[Candidate]:
    """Five drawn candidates of a workload, each given `mutation` (a search_space function of
    (rule, block decisions, config, rng, registers)) on its tiled block, then constrained; each is
    checked against the untuned reference. Returns them."""
    workload = ops.make(op, shape)
    space = SearchSpace(workload, registers=VectorRegisters(count=16, bytes=32))
    inputs = workload.random_inputs(seed=2)
    expected = _run(workload.mod, workload, target, inputs)
    rng = random.Random(seed)
    candidates = []
    for _ in range(5):
        decisions = space.sample(rng).decisions
        mutation(space.rules[0], decisions["blocks"][space.rules[0].block], space.config, rng, space.registers)
        candidate = search_space.Candidate(space.constrain(decisions))
        for got, want in zip(_run(apply_candidate(space, candidate).mod, workload, target, inputs), expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=json.dumps(candidate.decisions))
        candidates.append(candidate)
    return candidates


def test_register_tile_mutations_of_drawn_candidates_compute_the_reference(target):
    candidates = _mutated_candidates_compute_the_reference("matmul", "32,16,24", search_space.redraw_register_tile, 3,
                                                           target)
    rows = {int(np.prod(c.decisions["blocks"]["C"]["spatial"][0])) for c in candidates}
    assert len(rows) > 1  # some padded, some exact


def test_a_micro_kernel_mutation_redraws_the_vector_width_a_row_tile_and_the_inner_reduction_step():
    """From a batch matmul 8x256x256x64 kernel of 8 x 32 with k 1 x 64, one move reaches MetaSchedule's
    4 x 64 with k 16 x 4; every child tiles each loop exactly (no padding here) and fits the registers."""
    space = SearchSpace(ops.make("batch_matmul", "8,256,256,64"), registers=VectorRegisters(count=32, bytes=64))
    space.config = replace(space.config, padded_tile_probability=0.0)
    rule = space.rules[0]
    start = {"spatial": [[8, 1, 1, 1], [2, 4, 4, 8], [2, 2, 2, 32]], "reduction": [[1, 64]], "write_level": 1,
             "accumulator": "global", "vector_axis": 2}
    rng = random.Random(0)
    kernels = set()
    for _ in range(400):
        d = json.loads(json.dumps(start))
        search_space.redraw_micro_kernel(rule, d, space.config, rng, space.registers)
        assert [int(np.prod(f)) for f in d["spatial"]] == [8, 256, 256] and int(np.prod(d["reduction"][0])) == 64
        rows, lanes, step = d["spatial"][1][-1] * d["spatial"][0][-1], d["spatial"][2][-1], d["reduction"][0][-1]
        assert lanes in space.config.vector_factors and lanes != 32 and step != 64
        assert rows * -(-lanes // 16) <= 24  # accumulators within 0.75 of the 32 registers
        kernels.add((rows, lanes, step))
    assert (4, 64, 4) in kernels
    assert len({lanes for _, lanes, _ in kernels}) == 3 and len({step for *_, step in kernels}) == 6


def test_micro_kernel_mutations_of_drawn_candidates_compute_the_reference(target):
    _mutated_candidates_compute_the_reference("batch_matmul", "2,16,24,8", search_space.redraw_micro_kernel, 5, target)


@pytest.mark.parametrize("op,shape,options", [
    ("matmul", "32,16,24", {}),
    ("dense", "20,32,24", {"bias": "true", "epilogue": "relu"}),
    ("batch_matmul", "2,20,16,24", {}),
    ("conv2d_nchw", "1,8,10,10,16,3,3", {"bias": "true", "relu": "true"}),
    ("depthwise_conv2d", "1,8,10,10,3,3", {}),
])
def test_register_tiles_that_do_not_divide_their_loop_compute_the_reference(op, shape, options, target):
    workload = ops.make(op, shape, **options)
    space = SearchSpace(workload)
    space.config = replace(space.config, padded_tile_probability=1.0, max_padding_waste=0.5)
    inputs = workload.random_inputs(seed=1)
    expected = _run(workload.mod, workload, target, inputs)
    rng = random.Random(0)
    padded = 0
    for _ in range(6):
        candidate = space.sample(rng)
        for rule in space.rules:
            tile = candidate.decisions["blocks"].get(rule.block, {})
            padded += any(int(np.prod(f)) > e for f, e in zip(tile.get("spatial", []), rule.spatial))
        sch = apply_candidate(space, candidate)
        _assert_vector_loops_are_innermost(sch.mod.script(), candidate)
        for got, want in zip(_run(sch.mod, workload, target, inputs), expected):
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3, err_msg=json.dumps(candidate.decisions))
    assert padded >= 3


@pytest.mark.parametrize("op,shape", [("depthwise_conv2d", "1,8,12,12,3,3"), ("matmul", "12,40,24"), ("softmax", "12,40")])
def test_draws_give_the_parallel_loop_an_iteration_for_each_core(op, shape):
    """Without the target's cores, a fifth of draws had one outer iteration (one core busy)."""
    workload = ops.make(op, shape)
    serial, cores4 = SearchSpace(workload), SearchSpace(workload, cores=4)
    rng = random.Random(0)
    outer_iterations = {"serial": [], "cores4": []}
    for name, space in (("serial", serial), ("cores4", cores4)):
        for _ in range(60):
            for rule, d in zip(space.rules, space._draw(rng)["blocks"].values()):
                if "spatial" in d:
                    outer_iterations[name].append(int(np.prod([f[0] for f in d["spatial"]])))
                elif rule.rule == "loops" and "at" not in d:  # a producer inside the tiles has no loops of its own
                    outer_iterations[name].append(int(np.prod(rule.spatial[: d["parallel"]])) if d["parallel"] else 1)
    assert min(outer_iterations["cores4"]) >= 4 and min(outer_iterations["serial"]) == 1
    for _ in range(20):  # factors only moved between levels: still the extents, vector loop kept
        candidate = cores4.sample(rng)
        assert apply_candidate(cores4, candidate).mod.script() == apply_candidate(serial, candidate).mod.script()
    tiny = SearchSpace(ops.make("matmul", "2,3,4"), cores=64)  # fewer iterations than cores: all but the vector
    for _ in range(5):
        tile = tiny._draw(rng)["blocks"]["C"]
        lanes = tile["spatial"][tile.get("vector_axis", 1)][-1]
        assert int(np.prod([f[0] for f in tile["spatial"]])) == 6 // lanes


@pytest.mark.parametrize("op,shape", [("batch_matmul", "8,64,64,32"), ("dense", "24,96,64"), ("conv2d_nchw", "1,16,14,14,32,3,3")])
def test_draws_keep_the_register_tiles_accumulators_in_the_register_file(op, shape):
    """Uniform innermost factors mostly asked for more accumulators than a CPU has registers."""
    workload = ops.make(op, shape)
    avx512, unbounded = SearchSpace(workload, registers=VectorRegisters(32, 64)), SearchSpace(workload)
    limit = int(32 * avx512.config.accumulator_register_share)
    rng = random.Random(1)

    def accumulators(space: SearchSpace) -> list[int]:
        counts = []
        for _ in range(60):
            for d in space._draw(rng)["blocks"].values():
                if "spatial" in d:
                    inner = [f[-1] for f in d["spatial"]]
                    vector = inner.pop(d.get("vector_axis", len(inner) - 1))
                    counts.append(int(np.prod(inner)) * -(-vector // 16))
        return counts

    bounded = accumulators(avx512)
    assert max(bounded) <= limit < max(accumulators(unbounded))
    for _ in range(10):  # factors only moved between levels: any space applies the candidate the same way
        candidate = avx512.sample(rng)
        assert apply_candidate(avx512, candidate).mod.script() == apply_candidate(unbounded, candidate).mod.script()


def test_apply_is_deterministic_and_candidates_round_trip():
    space = SearchSpace(ops.make("matmul", "64,64,64"))
    candidate = space.sample(random.Random(3))
    again = Candidate.from_json(json.loads(json.dumps(candidate.to_json())))
    assert again.key == candidate.key
    assert apply_candidate(space, candidate).mod.script() == apply_candidate(space, again).mod.script()
    trace = trace_json(apply_candidate(space, candidate))
    assert json.loads(json.dumps(trace)) == trace and "Split" in json.dumps(trace)


class _CheckedPrimitives:
    """The schedule's own (type-checked) methods: what apply_candidate called before UncheckedPrimitives."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __getattr__(self, name):
        return getattr(self.schedule, name)


@pytest.mark.parametrize("op,shape,options", [CASES[0], CASES[3], CASES[5], CASES[10]], ids=lambda v: str(v))
def test_unchecked_primitives_give_the_schedules_and_rejections_of_the_checked_ones(op, shape, options, monkeypatch):
    space = SearchSpace(ops.make(op, shape, **options))
    rng = random.Random(5)
    drawn = [Candidate(space._draw(rng)) for _ in range(24)]  # raw draws, before sampling drops those TVM rejects
    unchecked = [space.try_apply(c) for c in drawn]
    monkeypatch.setattr(search_space, "UncheckedPrimitives", _CheckedPrimitives)
    checked = [space.try_apply(c) for c in drawn]
    assert [s is None for s in unchecked] == [s is None for s in checked]
    assert any(s is not None for s in checked)
    for a, b in zip(unchecked, checked):
        if a is not None:
            tvm.ir.assert_structural_equal(a.mod, b.mod)
            assert json.dumps(trace_json(a)) == json.dumps(trace_json(b))


def test_default_candidate_is_the_untuned_function():
    workload = ops.make("matmul", "16,16,16")
    space = SearchSpace(workload)
    assert apply_candidate(space, space.default_candidate()).mod.script() == workload.mod.script()


def test_shipped_cpu_space_loads():
    config = load_space_config("cpu")
    assert config.spatial_levels == 4 and config.reduction_levels == 2
    assert config.source.endswith("cpu.toml")


def _write_variant(tmp_path, old, new):
    text = (search_spaces_dir() / "cpu.toml").read_text()
    assert old in text
    path = tmp_path / "variant.toml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("max_innermost_factor = 64", "max_innermost_factor = 64\nmax_inner_factor = 3", "unknown key tiling.max_inner_factor"),
        ("max_innermost_factor = 64", 'max_innermost_factor = "64"', "tiling.max_innermost_factor must be int"),
        ("\nvector_factors = [1, 4, 8, 16, 32, 64]", "\nvector_factors = []", "loops.vector_factors must be"),
        ("reduction_vector_factors = [1, 4, 8, 16, 32, 64]", "reduction_vector_factors = [1, 4.0]",
         "loops.reduction_vector_factors must be a non-empty list of int"),
        ("reduction_vector_factors = [1, 4, 8, 16, 32, 64]", "reduction_vector_factors = [0, 8]",
         "loops.reduction_vector_factors has an invalid value"),
        ("reduction_vector_factors = [1, 4, 8, 16, 32, 64]", "reduction_vector_factor = [1, 8]",
         "unknown key loops.reduction_vector_factor"),
        ("reduction_vector_factors = [1, 4, 8, 16, 32, 64]\n", "", "missing key loops.reduction_vector_factors"),
        ("[unroll]", "[unrolling]", "unknown section"),
        ("weights = [1, 1, 1, 1]", "weights = [1, 1]", "unroll.weights has an invalid value"),
        ("weights = [1, 1, 1, 1]", "weights = [0, 0, 0, 0]", "unroll.weights has an invalid value"),
        ("weights = [1, 1, 1, 1]", 'weights = ["2", 2, 2, 1]', "unroll.weights must be a non-empty list of float"),
        ('structure = "SSRSRS"', 'structure = "SXR"', "tiling.structure"),
        ("write_levels = [1, 2]", "write_levels = [7]", "tiling.write_levels"),
        ("enabled = true\n", "", "missing key compute_location.enabled"),
        ('vector_axes = "any"', 'vector_axes = "first"', "tiling.vector_axes has an invalid value"),
        ("pack_levels = [0, 1, 2, 3]", "pack_levels = [0, 6]", "tiling.pack_levels has an invalid value"),
        ("max_transposed_register_tile = 512\n", "", "missing key tiling.max_transposed_register_tile"),
        ("min_iterations_per_core = 1", "min_iterations_per_core = 0", "parallel.min_iterations_per_core has an invalid"),
        ("accumulator_register_share = 0.75", "accumulator_register_share = 1.5",
         "tiling.accumulator_register_share has an invalid value"),
        ("[tiling]", "[tiling", "cannot read"),
    ],
)
def test_bad_space_files_name_the_key(tmp_path, old, new, message):
    with pytest.raises(SearchSpaceError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_space_config(_write_variant(tmp_path, old, new))


def test_missing_space_file():
    with pytest.raises(SearchSpaceError, match="not found"):
        load_space_config("no-such-family")


def test_draws_leave_some_tiles_to_llvm_vectorizer_and_they_compute_the_reference(target):
    """unvectorized_tile_probability: a register tile of one element, no vector loop in the tiled
    block (LLVM vectorizes the unrolled tile's outer loop), numerically the untuned result."""
    workload = ops.make("depthwise_conv2d", "1,16,12,32,3,3")
    space = SearchSpace(workload)
    rng = random.Random(0)

    def drawn(probability: float) -> list[dict]:
        space.config = replace(space.config, unvectorized_tile_probability=probability)
        candidates = [space.constrain(space._draw(rng)) for _ in range(100)]
        tiles = [c["blocks"]["DepthwiseConv2d"] for c in candidates]
        assert all(c["unroll"] == 512 for c, d in zip(candidates, tiles) if unvectorized(d))
        return tiles

    def unvectorized(d: dict) -> bool:
        return all(factors[-1] == 1 for factors in d["spatial"])

    assert not any(unvectorized(d) for d in drawn(0.0))
    always = drawn(1.0)
    assert all(unvectorized(d) and "vector_axis" not in d and "pack" not in d for d in always)
    conv_rule = next(r for r in space.rules if r.block == "DepthwiseConv2d")
    assert all(int(np.prod(f)) >= e for d in always for f, e in zip(d["spatial"], conv_rule.spatial))
    assert 0.05 < sum(map(unvectorized, drawn(0.15))) / 100 < 0.3
    inputs = workload.random_inputs(seed=1)
    expected = _run(workload.mod, workload, target, inputs)
    for d in always[:3]:
        candidate = space.sample(random.Random(0))  # the other blocks' decisions
        decisions = copy.deepcopy(candidate.decisions)
        decisions["blocks"]["DepthwiseConv2d"] = d
        mod = apply_candidate(space, Candidate(decisions)).mod
        conv = mod.script().split('T.sblock("DepthwiseConv2d')[0].rsplit("T.parallel", 1)[-1]
        assert "T.vectorized" not in conv  # no vector loop around the conv block
        np.testing.assert_allclose(_run(mod, workload, target, inputs)[0], expected[0], rtol=1e-4, atol=1e-4)
