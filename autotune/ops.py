"""Built-in operators: the names the CLI offers (`autotune tune matmul --shape 512,512,512`).

Each operator is a plain function that builds TE tensors (inputs, then outputs) for a shape;
`OPERATORS` maps its name to an `OpSpec` whose `build` checks the shape, dtype and options first,
so that a typo on the command line gives one clear `ShapeError` line instead of a TVM traceback.
Epilogues (bias, relu, gelu) are separate elementwise stages after the reduction: fusing them is
the scheduler's job, and the tuner should see them as they come out of a model.

Example: ``make("dense", "128,768,768", bias=True, epilogue="gelu")``.
"""

from __future__ import annotations

import inspect
import math
import re
from numbers import Integral
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import tvm
from tvm import te, topi

from .errors import AutotuneError, ShapeError, UnknownOperatorError, last_line
from .workload import SUPPORTED_DTYPES, Workload, as_workload

Shape = tuple[int, ...]
Tensors = list[te.Tensor]


@dataclass(frozen=True)
class OpSpec:
    """One built-in operator: how to build it and what its `--shape` numbers and options mean."""

    name: str
    build: Callable[..., Workload]  # build(shape, dtype="float32", **options) -> Workload
    shape_help: str
    default_shape: Shape
    options: dict[str, str]


OPERATORS: dict[str, OpSpec] = {}


def make(name: str, shape: Sequence[int] | str | None = None, dtype: str = "float32", **options: Any) -> Workload:
    """Build the workload of a built-in operator; `shape` None means its default shape.

    Example: ``make("conv2d_nchw", "1,64,56,56,64,3,3", relu=True)``.
    """
    spec = OPERATORS.get(name)
    if spec is None:
        raise UnknownOperatorError(f"unknown operator {name!r}; known operators: {', '.join(sorted(OPERATORS))}")
    if shape is None:
        shape = spec.default_shape
    elif isinstance(shape, str):
        shape = parse_shape(shape)
    return spec.build(shape, dtype, **options)


def parse_shape(text: str) -> Shape:
    """Read "512,512,512" or "512x512x512" (spaces allowed) as (512, 512, 512)."""
    parts = [p.strip() for p in re.split(r"[,xX]", text.strip())]
    if not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
        raise ShapeError(f"cannot read shape {text!r}: expected integers separated by ',' or 'x', e.g. 512,512,512")
    return tuple(int(p) for p in parts)


# ---------------------------------------------------------------------------------------------
# private helpers: registration and validation, shared by every operator

_CHOICES = {"epilogue": ("none", "relu", "gelu"), "kind": ("max", "avg")}
_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_DENSE_OPTIONS = {
    "bias": "add a bias vector of size N (true|false)",
    "epilogue": "elementwise stage after the bias: none|relu|gelu (default none)",
}
_POOL_OPTIONS = {
    "kind": "max|avg (default max; avg divides by R*S, padded zeros included)",
    "stride": "stride in both spatial axes (default R and S: the windows tile the input)",
    "padding": "padding on each spatial side (default 0)",
}
_SOFTMAX_OPTIONS = {
    "fast_exp": "exp as TVM's topi.fast_exp, a polynomial, instead of glibc's exact vector exp (libmvec); "
                "relative error within 1e-5 for exponents near -80, 5e-7 near 0 (tests/test_ops.py) (true|false)",
}
_CONV_OPTIONS = {
    "stride": "stride in both spatial axes (default 1)",
    "padding": "zero padding on each spatial side (default (R-1)//2 and (S-1)//2, 'same' for odd kernels)",
    "bias": "add a bias per output channel (true|false)",
    "relu": "apply relu after the bias (true|false)",
}


def _operator(
    name: str, shape_help: str, default_shape: Shape, options: dict[str, str] | None = None, float_only: bool = False
) -> Callable[[Callable[..., Tensors]], Callable[..., Tensors]]:
    """Register a tensor builder; its keyword-only parameters are its options, their defaults the defaults."""

    def register(fn: Callable[..., Tensors]) -> Callable[..., Tensors]:
        params = inspect.signature(fn).parameters.values()
        defaults = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert set(defaults) == set(options or {}), f"{name}: options and keyword parameters differ"

        def build(shape: Sequence[int], dtype: str = "float32", **opts: Any) -> Workload:
            shape = _check_shape(name, shape_help, shape)
            _check_dtype(name, dtype, float_only)
            values = {**defaults, **{k: _parse_option(name, defaults, k, v) for k, v in opts.items() if v is not None}}
            try:
                return as_workload(fn(shape, dtype, **values), name=_label(name, shape, dtype, values, defaults))
            except ShapeError as err:  # raised by the operator itself, which does not know its name
                raise ShapeError(f"{name} with shape {_dims(shape)}: {err}") from None
            except AutotuneError:
                raise
            except Exception as err:  # a TVM error here means the shape does not fit the operator
                raise ShapeError(f"cannot build {name} with shape {_dims(shape)}: {last_line(err)}") from err

        OPERATORS[name] = OpSpec(name, build, shape_help, default_shape, dict(options or {}))
        return fn

    return register


def _check_shape(name: str, shape_help: str, shape: Sequence[int]) -> Shape:
    arity = len(shape_help.split(","))
    shape = tuple(shape) if isinstance(shape, Sequence) else (shape,)
    ok = len(shape) == arity and all(isinstance(d, Integral) and not isinstance(d, bool) and d > 0 for d in shape)
    if not ok:
        raise ShapeError(f"{name} takes {arity} positive integers {shape_help}, got {tuple(shape)!r}")
    return tuple(int(d) for d in shape)


def _check_dtype(name: str, dtype: str, float_only: bool) -> None:
    allowed = [d for d in SUPPORTED_DTYPES if d.startswith("float") or not float_only]
    if dtype not in allowed:
        raise ShapeError(f"{name} does not support dtype {dtype!r}; supported: {', '.join(allowed)}")


def _parse_option(name: str, defaults: dict[str, Any], key: str, value: Any) -> Any:
    """CLI options arrive as strings and Python callers pass values; both are checked the same way."""
    if key not in defaults:
        raise ShapeError(f"{name} has no option {key!r}; its options: {', '.join(defaults) or 'none'}")
    text = str(value).strip().lower()
    if isinstance(defaults[key], bool):  # bias, relu, fast_exp: the switches
        expected, ok = "true or false", text in _BOOLS
        result: Any = _BOOLS.get(text)
    elif key in _CHOICES:
        expected, ok, result = "one of " + "|".join(_CHOICES[key]), text in _CHOICES[key], text
    else:
        minimum = 1 if key == "stride" else 0
        expected = f"an integer >= {minimum}"
        ok = not isinstance(value, bool) and text.isdigit() and int(text) >= minimum
        result = int(text) if ok else None
    if not ok:
        raise ShapeError(f"option {key}={value!r} of {name}: expected {expected}")
    return result


def _label(name: str, shape: Shape, dtype: str, values: dict[str, Any], defaults: dict[str, Any]) -> str:
    """A readable name that tells variants apart: non-default options and the dtype become suffixes."""
    parts = [name, _dims(shape)]
    for key, value in values.items():
        if value != defaults[key]:
            parts.append(key if value is True else value if isinstance(value, str) else f"{key}{value}")
    return "_".join(parts + ([dtype] if dtype != "float32" else []))


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


# ---------------------------------------------------------------------------------------------
# private helpers: pieces the operators share


def _accum(dtype: str) -> str:
    """Sums of 8-bit products overflow 8 bits, so they accumulate (and are stored) in int32."""
    return "int32" if dtype in ("int8", "uint8") else dtype


def _contract(
    a: te.Tensor, b: te.Tensor, out_shape: Shape, k: int, index: Callable[..., tuple], name: str
) -> te.Tensor:
    """sum_r a[ia] * b[ib] where `index(*out_axes, r)` gives (ia, ib): the one reduction of matmul-like ops."""
    r = te.reduce_axis((0, k), name="k")
    acc = _accum(a.dtype)

    def body(*axes: Any) -> Any:
        ia, ib = index(*axes, r)
        return te.sum(a[ia].astype(acc) * b[ib].astype(acc), axis=r)

    return te.compute(out_shape, body, name=name)


def _epilogue(inputs: Tensors, out: te.Tensor, bias_shape: Shape | None, axis: int, act: str) -> Tensors:
    """Inputs, the bias placeholder (indexed by output axis `axis`) if any, and `out` after bias and `act`."""
    bias = te.placeholder(bias_shape, out.dtype, name="bias") if bias_shape else None
    if bias is not None:
        src, zeros = out, [0] * (len(bias.shape) - 1)
        out = te.compute(src.shape, lambda *i: src(*i) + bias(i[axis], *zeros), name="bias_add")
    src = out
    if act == "relu":
        out = te.compute(src.shape, lambda *i: tvm.tirx.max(src(*i), tvm.tirx.const(0, src.dtype)), name="relu")
    elif act == "gelu":  # exact gelu: 0.5 x (1 + erf(x / sqrt 2)), as torch.nn.GELU() computes it
        half, root = tvm.tirx.const(0.5, src.dtype), tvm.tirx.const(1 / math.sqrt(2), src.dtype)
        out = te.compute(src.shape, lambda *i: half * src(*i) * (1 + te.erf(src(*i) * root)), name="gelu")
    return [*inputs, *([bias] if bias is not None else []), out]


def _conv_padding(padding: int | None, r: int, s: int, hw: tuple[int, int]) -> tuple[int, int]:
    """Default padding keeps the output of odd kernels the size of the input ("same")."""
    pad = ((r - 1) // 2, (s - 1) // 2) if padding is None else (padding, padding)
    _check_windows(hw, (r, s), pad)
    return pad


def _check_windows(hw: tuple[int, int], kernel: tuple[int, int], pad: tuple[int, int]) -> None:
    """Reject windows larger than the padded input here, where the message can say so plainly."""
    for size, k, p in zip(hw, kernel, pad):
        if size + 2 * p < k:
            raise ShapeError(f"a window of {k} with padding {p} does not fit an input of size {size}")


# ---------------------------------------------------------------------------------------------
# the operators: each returns TE tensors, inputs then outputs


@_operator("matmul", "M,N,K", (512, 512, 512))
def matmul(shape: Shape, dtype: str = "float32") -> Tensors:
    """C[i,j] = sum_k A[i,k] * B[k,j]."""
    m, n, k = shape
    a, b = te.placeholder((m, k), dtype, name="A"), te.placeholder((k, n), dtype, name="B")
    return [a, b, _contract(a, b, (m, n), k, lambda i, j, r: ((i, r), (r, j)), "C")]


@_operator("batch_matmul", "B,M,N,K", (16, 128, 128, 64))
def batch_matmul(shape: Shape, dtype: str = "float32") -> Tensors:
    """C[b,i,j] = sum_k A[b,i,k] * B[b,k,j]."""
    bs, m, n, k = shape
    a, b = te.placeholder((bs, m, k), dtype, name="A"), te.placeholder((bs, k, n), dtype, name="B")
    return [a, b, _contract(a, b, (bs, m, n), k, lambda p, i, j, r: ((p, i, r), (p, r, j)), "C")]


@_operator("dense", "M,N,K", (128, 768, 768), _DENSE_OPTIONS)
def dense(shape: Shape, dtype: str = "float32", *, bias: bool = False, epilogue: str = "none") -> Tensors:
    """Y[i,j] = sum_k X[i,k] * W[j,k], the weight laid out N x K as in torch.nn.Linear."""
    m, n, k = shape
    if epilogue == "gelu" and not dtype.startswith("float"):
        raise ShapeError(f"epilogue gelu needs a float dtype, not {dtype}")
    x, w = te.placeholder((m, k), dtype, name="data"), te.placeholder((n, k), dtype, name="weight")
    y = _contract(x, w, (m, n), k, lambda i, j, r: ((i, r), (j, r)), "dense")
    return _epilogue([x, w], y, (n,) if bias else None, 1, epilogue)


@_operator("conv2d_nchw", "N,C,H,W,K,R,S", (1, 64, 56, 56, 64, 3, 3), _CONV_OPTIONS)
def conv2d_nchw(
    shape: Shape, dtype: str = "float32", *, stride: int = 1, padding: int | None = None,
    bias: bool = False, relu: bool = False,
) -> Tensors:
    """2-D convolution, data NCHW, weight KCRS (OIHW); the bias has shape (K,1,1)."""
    n, c, h, w, k, r, s = shape
    pad = _conv_padding(padding, r, s, (h, w))
    data, weight = te.placeholder((n, c, h, w), dtype, name="data"), te.placeholder((k, c, r, s), dtype, name="weight")
    out = topi.nn.conv2d_nchw(data, weight, stride, pad, 1, out_dtype=_accum(dtype))
    return _epilogue([data, weight], out, (k, 1, 1) if bias else None, 1, "relu" if relu else "none")


@_operator("conv2d_nhwc", "N,H,W,C,K,R,S", (1, 56, 56, 64, 64, 3, 3), _CONV_OPTIONS)
def conv2d_nhwc(
    shape: Shape, dtype: str = "float32", *, stride: int = 1, padding: int | None = None,
    bias: bool = False, relu: bool = False,
) -> Tensors:
    """2-D convolution, data NHWC, weight RSCK (HWIO); the bias has shape (K,)."""
    n, h, w, c, k, r, s = shape
    pad = _conv_padding(padding, r, s, (h, w))
    data, weight = te.placeholder((n, h, w, c), dtype, name="data"), te.placeholder((r, s, c, k), dtype, name="weight")
    out = topi.nn.conv2d_nhwc(data, weight, stride, pad, 1, out_dtype=_accum(dtype))
    return _epilogue([data, weight], out, (k,) if bias else None, 3, "relu" if relu else "none")


@_operator("depthwise_conv2d", "N,C,H,W,R,S", (1, 128, 56, 56, 3, 3), _CONV_OPTIONS)
def depthwise_conv2d(
    shape: Shape, dtype: str = "float32", *, stride: int = 1, padding: int | None = None,
    bias: bool = False, relu: bool = False,
) -> Tensors:
    """Depthwise 2-D convolution, NCHW, channel multiplier 1 (weight C,1,R,S); the bias has shape (C,1,1)."""
    n, c, h, w, r, s = shape
    pad = _conv_padding(padding, r, s, (h, w))
    data, weight = te.placeholder((n, c, h, w), dtype, name="data"), te.placeholder((c, 1, r, s), dtype, name="weight")
    out = topi.nn.depthwise_conv2d_nchw(data, weight, stride, pad, 1, out_dtype=_accum(dtype))
    return _epilogue([data, weight], out, (c, 1, 1) if bias else None, 1, "relu" if relu else "none")


@_operator("pool2d", "N,C,H,W,R,S", (1, 64, 112, 112, 2, 2), _POOL_OPTIONS)
def pool2d(
    shape: Shape, dtype: str = "float32", *, kind: str = "max", stride: int | None = None, padding: int = 0
) -> Tensors:
    """Max or average pooling over R x S windows of NCHW data."""
    n, c, h, w, r, s = shape
    if 2 * padding > min(r, s):  # else whole windows could lie in the padding (max would give -inf)
        raise ShapeError(f"padding {padding} is more than half the {r}x{s} window")
    _check_windows((h, w), (r, s), (padding, padding))
    strides = (r, s) if stride is None else (stride, stride)
    data = te.placeholder((n, c, h, w), dtype, name="data")
    return [data, topi.nn.pool2d(data, (r, s), strides, (1, 1), (padding,) * 4, kind)]


@_operator("softmax", "M,N", (256, 1024), _SOFTMAX_OPTIONS, float_only=True)
def softmax(shape: Shape, dtype: str = "float32", *, fast_exp: bool = False) -> Tensors:
    """Softmax over the last axis. autotune's builds turn a vectorized exp into one call of glibc's
    vector exp (autotune.vector_math); fast_exp uses TVM's polynomial (topi.nn.fast_softmax)
    instead, float32 only."""
    if fast_exp and dtype != "float32":
        raise ShapeError(f"fast_exp is float32 only (topi.fast_exp), not {dtype}")
    data = te.placeholder(shape, dtype, name="data")
    return [data, (topi.nn.fast_softmax if fast_exp else topi.nn.softmax)(data, axis=-1)]


@_operator("layernorm", "M,N", (128, 768), float_only=True)
def layernorm(shape: Shape, dtype: str = "float32") -> Tensors:
    """Layer normalisation over the last axis (epsilon 1e-5), scaled by gamma and shifted by beta."""
    data = te.placeholder(shape, dtype, name="data")
    gamma, beta = te.placeholder(shape[1:], dtype, name="gamma"), te.placeholder(shape[1:], dtype, name="beta")
    return [data, gamma, beta, topi.nn.layer_norm(data, gamma, beta, [1], 1e-5)]
