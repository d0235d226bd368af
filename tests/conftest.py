"""Shared fixtures: small workloads and a temporary database."""

from __future__ import annotations

import pytest
from tvm import te

from autotune.database import Database


def te_matmul(m: int = 64, n: int = 48, k: int = 32) -> list[te.Tensor]:
    A = te.placeholder((m, k), name="A")
    B = te.placeholder((k, n), name="B")
    r = te.reduce_axis((0, k), name="k")
    C = te.compute((m, n), lambda i, j: te.sum(A[i, r] * B[r, j], axis=r), name="C")
    return [A, B, C]


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "tuning.db"


@pytest.fixture
def db(db_path):
    with Database(db_path) as database:
        yield database
