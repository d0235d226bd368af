"""Built-in operators: each builds, compiles on LLVM and matches a NumPy reference; bad input is one clear error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from numpy.lib.stride_tricks import sliding_window_view

from autotune import ops
from autotune.errors import ShapeError, UnknownOperatorError
from autotune.workload import Workload

LLVM = tvm.target.Target({"kind": "llvm"})

TINY = {
    "matmul": (5, 7, 3),
    "batch_matmul": (2, 5, 7, 3),
    "dense": (4, 6, 5),
    "conv2d_nchw": (2, 3, 7, 6, 4, 3, 3),
    "conv2d_nhwc": (2, 7, 6, 3, 4, 3, 3),
    "depthwise_conv2d": (2, 3, 7, 6, 3, 3),
    "pool2d": (2, 3, 8, 6, 2, 2),
    "softmax": (4, 9),
    "layernorm": (4, 9),
}


def run(workload: Workload, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Compile for LLVM, run on random inputs; return the inputs and the (last) output."""
    arrays = workload.random_inputs(seed)
    executable = tvm.compile(workload.mod, target=LLVM)
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    executable["main"](*tensors)
    assert [a.is_output for a in workload.args][-1]
    return arrays[:-1], tensors[-1].numpy()


def windows(x: np.ndarray, r: int, s: int, stride: int, pad: int, fill: float = 0.0) -> np.ndarray:
    """NCHW data -> (N, C, Ho, Wo, R, S) windows, as a convolution or pooling sees them."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=fill)
    return sliding_window_view(xp, (r, s), axis=(2, 3))[:, :, ::stride, ::stride]


def conv_nchw_ref(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    return np.einsum("nchwrs,kcrs->nkhw", windows(x, w.shape[2], w.shape[3], stride, pad), w)


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# registry


def test_tiny_shapes_cover_every_operator() -> None:
    assert set(TINY) == set(ops.OPERATORS)


@pytest.mark.parametrize("name", sorted(ops.OPERATORS))
def test_spec_is_consistent(name: str) -> None:
    spec = ops.OPERATORS[name]
    assert spec.name == name
    assert len(spec.shape_help.split(",")) == len(spec.default_shape)
    assert all(help_text for help_text in spec.options.values())


@pytest.mark.parametrize("name", sorted(ops.OPERATORS))
def test_builds_with_default_shape(name: str) -> None:
    workload = ops.make(name)
    assert workload.name.startswith(name + "_" + "x".join(map(str, ops.OPERATORS[name].default_shape)))
    assert workload.flops > 0
    assert workload.outputs and workload.inputs


@pytest.mark.parametrize("name", sorted(ops.OPERATORS))
def test_tiny_shape_compiles_and_runs(name: str) -> None:
    workload = ops.make(name, TINY[name])
    assert workload.name == f"{name}_{'x'.join(map(str, TINY[name]))}"
    _, out = run(workload)
    assert np.all(np.isfinite(out))


def test_matmul_flops_are_2mnk() -> None:
    assert ops.make("matmul", (64, 32, 16)).flops == 2 * 64 * 32 * 16
    assert ops.make("batch_matmul", (3, 64, 32, 16)).flops == 2 * 3 * 64 * 32 * 16


def test_conv_flops_are_2_per_multiply_add() -> None:
    n, c, h, w, k, r, s = 1, 8, 10, 10, 16, 3, 3  # "same" padding: output 10x10
    assert ops.make("conv2d_nchw", (n, c, h, w, k, r, s)).flops == 2 * n * k * h * w * c * r * s


# ---------------------------------------------------------------------------------------------
# numerics against NumPy


def test_matmul_matches_numpy() -> None:
    (a, b), c = run(ops.make("matmul", "5,7,3"))
    close(c, a @ b)


def test_batch_matmul_matches_numpy() -> None:
    (a, b), c = run(ops.make("batch_matmul", "2x5x7x3"))
    close(c, a @ b)


def test_int8_matmul_accumulates_in_int32() -> None:
    workload = ops.make("matmul", (4, 4, 64), dtype="int8")
    assert workload.outputs[0].dtype == "int32"
    (a, b), c = run(workload)
    np.testing.assert_array_equal(c, a.astype(np.int32) @ b.astype(np.int32))


def test_dense_bias_relu_matches_numpy() -> None:
    workload = ops.make("dense", (4, 6, 5), bias=True, epilogue="relu")
    assert [a.name for a in workload.args][:3] == ["data", "weight", "bias"]
    (x, w, bias), y = run(workload)
    close(y, np.maximum(x @ w.T + bias, 0))


def test_dense_gelu_matches_numpy() -> None:
    (x, w), y = run(ops.make("dense", (4, 6, 5), epilogue="gelu"))
    z = x @ w.T
    close(y, 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2))))


def test_dense_epilogue_stages_are_separate() -> None:
    script = ops.make("dense", (4, 6, 5), bias=True, epilogue="relu").script
    assert all(f'T.sblock("{stage}")' in script for stage in ("dense", "bias_add", "relu"))


def test_conv2d_nchw_bias_relu_matches_numpy() -> None:
    (x, w, bias), y = run(ops.make("conv2d_nchw", TINY["conv2d_nchw"], bias=True, relu=True))
    assert bias.shape == (4, 1, 1)
    close(y, np.maximum(conv_nchw_ref(x, w, 1, 1) + bias, 0))


def test_conv2d_nchw_stride_and_padding() -> None:
    (x, w), y = run(ops.make("conv2d_nchw", (1, 2, 9, 8, 3, 3, 3), stride=2, padding=0))
    close(y, conv_nchw_ref(x, w, 2, 0))


def test_conv2d_nhwc_bias_matches_numpy() -> None:
    (x, w, bias), y = run(ops.make("conv2d_nhwc", TINY["conv2d_nhwc"], bias=True))
    ref = conv_nchw_ref(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), 1, 1).transpose(0, 2, 3, 1)
    close(y, ref + bias)


def test_depthwise_conv2d_matches_numpy() -> None:
    (x, w), y = run(ops.make("depthwise_conv2d", TINY["depthwise_conv2d"]))
    close(y, np.einsum("nchwrs,crs->nchw", windows(x, 3, 3, 1, 1), w[:, 0]))


def test_pool2d_max_matches_numpy() -> None:
    (x,), y = run(ops.make("pool2d", TINY["pool2d"]))
    close(y, windows(x, 2, 2, 2, 0).max(axis=(4, 5)))


def test_pool2d_avg_matches_numpy() -> None:
    (x,), y = run(ops.make("pool2d", (1, 2, 7, 6, 3, 3), kind="avg", stride=1, padding=1))
    close(y, windows(x, 3, 3, 1, 1).mean(axis=(4, 5)))  # padded zeros count, as the help says


def test_softmax_matches_numpy() -> None:
    (x,), y = run(ops.make("softmax", (4, 9)))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    close(y, e / e.sum(axis=1, keepdims=True))


def test_softmax_with_fast_exp_matches_numpy() -> None:
    workload = ops.make("softmax", (4, 300), fast_exp="true")
    assert workload.name == "softmax_4x300_fast_exp" and workload.key != ops.make("softmax", (4, 300)).key
    arrays = workload.random_inputs(0)
    arrays[0] = arrays[0] * 40  # exponents down to about -80, near float32's smallest normal numbers
    executable = tvm.compile(workload.mod, target=LLVM)
    tensors = [tvm.runtime.tensor(a, tvm.cpu()) for a in arrays]
    executable["main"](*tensors)
    x = arrays[0].astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    got = tensors[-1].numpy()
    # one range reduction by ln 2 (topi.fast_exp): the error grows with the exponent's size
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-30)
    near_zero = x - x.max(axis=1, keepdims=True) > -5
    np.testing.assert_allclose(got[near_zero], want[near_zero], rtol=5e-7)
    with pytest.raises(ShapeError, match="fast_exp is float32 only"):
        ops.make("softmax", (4, 300), dtype="float64", fast_exp=True)


def test_layernorm_matches_numpy() -> None:
    (x, gamma, beta), y = run(ops.make("layernorm", (4, 9)))
    mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    close(y, (x - mean) / np.sqrt(var + 1e-5) * gamma + beta)


# ---------------------------------------------------------------------------------------------
# errors and keys


def test_unknown_operator_lists_known_names() -> None:
    with pytest.raises(UnknownOperatorError, match="matmul.*softmax|softmax.*matmul") as info:
        ops.make("matmull")
    assert "matmull" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("shape", ["512,512", "1,2,3,4", "0,4,4", "4,-1,4", (4, 4, 0), (4, 4.0, 4), (4, True, 4), 512])
def test_bad_shape_is_shape_error(shape: object) -> None:
    with pytest.raises(ShapeError, match="matmul.*M,N,K"):
        ops.make("matmul", shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["a,b,c", "1.5,2,3", "", "4,,4", "4;4;4"])
def test_non_numeric_shape_is_shape_error(text: str) -> None:
    with pytest.raises(ShapeError):
        ops.make("matmul", text)


def test_parse_shape_accepts_commas_x_and_spaces() -> None:
    assert ops.parse_shape("512,256,128") == (512, 256, 128)
    assert ops.parse_shape("512x256x128") == (512, 256, 128)
    assert ops.parse_shape(" 1, 2 ,3 ") == (1, 2, 3)


@pytest.mark.parametrize(
    "name, options",
    [
        ("dense", {"epilogue": "tanh"}),
        ("dense", {"bias": "maybe"}),
        ("dense", {"relu": True}),  # dense spells it epilogue=relu
        ("conv2d_nchw", {"stride": 0}),
        ("conv2d_nchw", {"padding": -1}),
        ("pool2d", {"kind": "min"}),
        ("pool2d", {"stride": "two"}),
        ("matmul", {"bias": True}),
    ],
)
def test_bad_option_is_shape_error(name: str, options: dict[str, object]) -> None:
    with pytest.raises(ShapeError, match=name):
        ops.make(name, TINY[name], **options)


def test_options_accept_cli_strings() -> None:
    from_strings = ops.make("conv2d_nchw", TINY["conv2d_nchw"], stride="2", bias="true", relu="false")
    from_values = ops.make("conv2d_nchw", TINY["conv2d_nchw"], stride=2, bias=True, relu=False)
    assert from_strings.key == from_values.key
    assert from_strings.name == from_values.name == "conv2d_nchw_2x3x7x6x4x3x3_stride2_bias"


@pytest.mark.parametrize(
    "name, shape, options",
    [
        ("conv2d_nchw", (1, 1, 2, 2, 1, 5, 5), {"padding": 0}),  # kernel larger than the input
        ("pool2d", (1, 1, 4, 4, 2, 2), {"padding": 2}),  # windows entirely in the padding
        ("softmax", (4, 4), {}),
    ],
)
def test_shapes_that_do_not_fit_are_shape_errors(name: str, shape: tuple[int, ...], options: dict) -> None:
    dtype = "int32" if name == "softmax" else "float32"
    with pytest.raises(ShapeError, match=name):
        ops.make(name, shape, dtype=dtype, **options)


def test_key_is_stable_and_tells_shapes_and_options_apart() -> None:
    first, again = ops.make("matmul", "64,64,64"), ops.make("matmul", (64, 64, 64))
    assert first.key == again.key
    assert ops.make("matmul", "64,64,32").key != first.key
    assert ops.make("dense", "8,8,8", bias=True).key != ops.make("dense", "8,8,8").key
