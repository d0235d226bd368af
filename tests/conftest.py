"""Shared fixtures: small workloads and a temporary database; the --soak option for the long fault tests."""

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


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", help="also run the long fault-injection and kill soaks")


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long fault-injection / kill soak; runs with --soak")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with `python -m pytest --soak -m soak`")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
