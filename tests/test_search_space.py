"""The search space: rules per block, TOML validation, and a property test that sampled
candidates of every built-in operator build and compute the right numbers."""

import json
import random

import numpy as np
import pytest
import tvm

from autotune import ops
from autotune.errors import SearchSpaceError
from autotune.search_space import Candidate, SearchSpace, apply_candidate, trace_json
from autotune.space_config import load_space_config, search_spaces_dir
from autotune.target import resolve_target

CASES = [
    ("matmul", "33,40,24", {}),
    ("matmul", "127,100,33", {}),
    ("batch_matmul", "2,16,24,8", {}),
    ("dense", "16,32,24", {"bias": "true", "epilogue": "relu"}),
    ("dense", "8,16,16", {"epilogue": "gelu"}),
    ("conv2d_nchw", "1,8,10,10,8,3,3", {"bias": "true", "relu": "true"}),
    ("conv2d_nhwc", "1,10,10,8,8,3,3", {}),
    ("depthwise_conv2d", "1,8,12,12,3,3", {}),
    ("pool2d", "1,4,8,8,2,2", {"kind": "max"}),
    ("pool2d", "1,4,9,9,3,3", {"kind": "avg", "stride": "2", "padding": "1"}),
    ("softmax", "12,40", {}),
    ("layernorm", "12,40", {}),
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


@pytest.mark.parametrize("op,shape,options", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_sampled_candidates_build_and_compute_the_reference(op, shape, options, target):
    workload = ops.make(op, shape, **options)
    space = SearchSpace(workload)
    inputs = workload.random_inputs(seed=1)
    expected = _run(workload.mod, workload, target, inputs)
    rng = random.Random(0)
    keys = set()
    for _ in range(SAMPLES_PER_CASE):
        candidate = space.sample(rng)
        keys.add(candidate.key)
        got = _run(apply_candidate(space, candidate).mod, workload, target, inputs)
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-3, err_msg=json.dumps(candidate.decisions))
    assert len(keys) > SAMPLES_PER_CASE // 2, "sampling should give mostly distinct candidates"


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


def test_tiles_of_the_vectorized_loop_multiply_to_the_extent():
    space = SearchSpace(ops.make("matmul", "127,100,33"))
    rng = random.Random(5)
    for _ in range(20):
        tile = space._draw(rng)["blocks"]["C"]
        for factors, extent in zip(tile["spatial"] + tile["reduction"], (127, 100, 33)):
            assert int(np.prod(factors)) == extent


def test_apply_is_deterministic_and_candidates_round_trip():
    space = SearchSpace(ops.make("matmul", "64,64,64"))
    candidate = space.sample(random.Random(3))
    again = Candidate.from_json(json.loads(json.dumps(candidate.to_json())))
    assert again.key == candidate.key
    assert apply_candidate(space, candidate).mod.script() == apply_candidate(space, again).mod.script()
    trace = trace_json(apply_candidate(space, candidate))
    assert json.loads(json.dumps(trace)) == trace and "Split" in json.dumps(trace)


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
        ("vector_factors = [1, 4, 8, 16, 32, 64]", "vector_factors = []", "loops.vector_factors must be"),
        ("[unroll]", "[unrolling]", "unknown section"),
        ('structure = "SSRSRS"', 'structure = "SXR"', "tiling.structure"),
        ("write_levels = [1, 2]", "write_levels = [7]", "tiling.write_levels"),
        ("enabled = true\n", "", "missing key compute_location.enabled"),
        ("[tiling]", "[tiling", "cannot read"),
    ],
)
def test_bad_space_files_name_the_key(tmp_path, old, new, message):
    with pytest.raises(SearchSpaceError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_space_config(_write_variant(tmp_path, old, new))


def test_missing_space_file():
    with pytest.raises(SearchSpaceError, match="not found"):
        load_space_config("no-such-family")
