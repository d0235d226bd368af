"""The package's public names: all of them resolve, and a measurement worker loads only what it uses."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import autotune


def test_every_public_name_resolves_and_type_checkers_see_the_same_names() -> None:
    assert set(autotune.__all__) == set(autotune._EXPORTS)
    for name in autotune.__all__:
        assert getattr(autotune, name) is not None
    assert autotune.tune.__module__ == "autotune.tuner" and autotune.ops.__name__ == "autotune.ops"
    tree = ast.parse(Path(autotune.__file__).read_text())
    checked = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    eager = {alias.asname or alias.name for node in checked.body for alias in node.names}
    assert eager == set(autotune._EXPORTS)
    assert "tune" in dir(autotune)


def test_a_measurement_worker_does_not_load_the_database_or_the_cost_model() -> None:
    heavy = ["xgboost", "sqlite_utils", "autotune.database", "autotune.cost_model", "autotune.tuner"]
    script = ("import sys; sys.modules['torch'] = None; import autotune.worker; "
              f"print([m for m in {heavy!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
