import subprocess
import sys

import pytest
import tvm
from tvm import te

from autotune.errors import WorkloadError
from autotune.workload import as_workload

from conftest import te_matmul


def test_te_primfunc_and_irmodule_give_the_same_workload():
    tensors = te_matmul()
    from_te = as_workload(tensors)
    func = te.create_prim_func(tensors)
    assert as_workload(func).key == from_te.key
    assert as_workload(tvm.IRModule({"main": func})).key == from_te.key
    assert from_te.flops == 2 * 64 * 48 * 32
    assert [a.is_output for a in from_te.args] == [False, False, True]


def test_key_is_stable_across_fresh_processes():
    code = (
        "import sys; sys.path.insert(0, 'tests'); from conftest import te_matmul; "
        "from autotune.workload import as_workload; print(as_workload(te_matmul()).key)"
    )
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)}
    assert keys == {as_workload(te_matmul()).key}


def test_key_changes_with_shape():
    assert as_workload(te_matmul(64, 48, 32)).key != as_workload(te_matmul(64, 48, 16)).key


@pytest.mark.parametrize("bad", [42, "matmul", [], [1, 2]])
def test_wrong_types_are_rejected(bad):
    with pytest.raises(WorkloadError):
        as_workload(bad)


def test_symbolic_shapes_are_rejected():
    n = te.var("n")
    A = te.placeholder((n, 8), name="A")
    B = te.compute((n, 8), lambda i, j: A[i, j] * 2.0, name="B")
    with pytest.raises(WorkloadError, match="symbolic"):
        as_workload([A, B])


def test_unsupported_dtype_is_rejected():
    A = te.placeholder((8,), name="A", dtype="bool")
    B = te.compute((8,), lambda i: A[i], name="B")
    with pytest.raises(WorkloadError, match="dtype"):
        as_workload([A, B])


def test_module_with_two_functions_is_rejected():
    f = te.create_prim_func(te_matmul())
    with pytest.raises(WorkloadError, match="exactly one"):
        as_workload(tvm.IRModule({"a": f, "b": f}))


def test_random_inputs_are_deterministic():
    w = as_workload(te_matmul())
    a, b = w.random_inputs(3), w.random_inputs(3)
    assert all((x == y).all() for x, y in zip(a, b))
    assert not a[-1].any()  # outputs start zeroed
