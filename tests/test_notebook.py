"""The tutorial notebook runs from top to bottom (with a small budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "tutorial.ipynb"


def test_tutorial_notebook_executes(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setenv("AUTOTUNE_TUTORIAL_TRIALS", "8")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    assert len(cells) >= 6
    namespace: dict = {"__name__": "__tutorial__"}
    for number, cell in enumerate(cells, start=1):
        source = "".join(cell["source"])
        exec(compile(source, f"{NOTEBOOK.name} code cell {number}", "exec"), namespace)  # noqa: S102 - our own notebook
    assert namespace["report"].correct
    assert namespace["resumed"].trials_done == 8
    assert len(namespace["trials"]) == 8 and set(namespace["summary"].index) == {t.name for t in namespace["extracted"].tasks}
    assert namespace["written"].summary.is_file()
