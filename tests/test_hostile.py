"""Hostile input: property-based tests that bad files and arguments give one clear error and change nothing."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autotune
from autotune import ops
from autotune.cli import main
from autotune.database import Database
from autotune.errors import AutotuneError, LogError, SearchSpaceError
from autotune.logs import export_log, import_log
from autotune.space_config import load_space_config

CPU_TOML = Path(__file__).parents[1] / "search_spaces" / "cpu.toml"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

toml_values = st.recursive(
    st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.booleans(), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=4), max_leaves=8,
)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if value == value and abs(value) != float("inf") else "0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")  # TOML, unlike JSON, escapes DEL
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


@FAST
@given(section=st.sampled_from(["tiling", "loops", "compute_location", "unroll", "extra"]),
       key=st.one_of(st.sampled_from(["structure", "vector_factors", "max_steps", "enabled", "typo"]),
                     st.from_regex(r"[a-z_]{1,12}", fullmatch=True)),
       value=toml_values)
def test_a_search_space_file_with_any_changed_key_loads_or_names_the_key(tmp_path_factory, section, key, value):
    """Replace or add one key of cpu.toml with any value: it loads, or the error names the key (or section)."""
    data = tomllib.loads(CPU_TOML.read_text())
    data.setdefault(section, {})[key] = value
    text = "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in keys.items())
                     for s, keys in data.items())
    path = tmp_path_factory.mktemp("toml") / "space.toml"
    path.write_text(text)
    try:
        config = load_space_config(path)
    except SearchSpaceError as err:
        message = str(err)
        assert "\n" not in message and (key in message or section in message), message
    else:
        assert config.structure  # loaded: the value was of the right type and range


cli_tokens = st.sampled_from([
    "tune", "best", "ops", "cache", "ls", "stats", "prune", "export", "import", "sessions", "resume", "report",
    "compile-model", "tune-model", "matmul", "softmax", "conv2d_nchw", "nosuchop", "--shape", "1,2,3", "0,0,0",
    "-5,4,4", "16,16,16", "a,b", "--trials", "0", "-1", "--keep", "--db", "--target", '{"kind": "cuda"}',
    '{"kind": "llvm", "num-cores": 0}', "nonsense", "--dtype", "bfloat7", "-o", "bias=maybe", "--out", "--time",
    "soon", "--similar", "--exact", "7",
])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(cli_tokens, min_size=1, max_size=7))
def test_any_command_line_exits_cleanly(tmp_path_factory, capsys, argv):
    """Random command lines never raise: 0/1 exit codes, or 2 with one line on stderr; nothing is tuned."""
    if "tune" in argv[:1] and "--trials" not in argv:
        argv = [*argv, "--trials", "0"]  # never start a real tuning run from a random command line
    if argv[0] in ("tune-model", "resume"):
        argv = [*argv, "--trials", "0"]
    root = tmp_path_factory.mktemp("cli")
    db = root / "fuzz.db"
    argv = [a if a != "--out" else "--out" for a in argv] + ["--db", str(db)]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2), (argv, code)
    if code == 2 and err.startswith("autotune: error:"):
        assert err.count("\n") == 1, err
    with Database(db) as database:
        assert database.stats()["trials"] == 0


@pytest.fixture(scope="module")
def real_log(tmp_path_factory):
    root = tmp_path_factory.mktemp("log")
    autotune.tune(ops.make("matmul", "16,16,16"), trials=2, database=root / "src.db", seed=0)
    with Database(root / "src.db") as db:
        export_log(db, root / "log.jsonl")
    return (root / "log.jsonl").read_text().splitlines()


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_fuzzed_log_is_imported_whole_or_refused_with_its_line(tmp_path_factory, real_log, data):
    """Change one field of one line (or the bytes of a line) of a real log: import gives LogError or succeeds."""
    lines = list(real_log)
    index = data.draw(st.integers(0, len(lines) - 1))
    record = json.loads(lines[index])
    how = data.draw(st.sampled_from(["value", "drop", "bytes", "add"]))
    if how == "value":
        record[data.draw(st.sampled_from(sorted(record)))] = data.draw(json_values)
        lines[index] = json.dumps(record)
    elif how == "drop":
        record.pop(data.draw(st.sampled_from(sorted(record))))
        lines[index] = json.dumps(record)
    elif how == "add":
        record[data.draw(st.text(max_size=6))] = data.draw(json_values)
        lines[index] = json.dumps(record)
    else:
        cut = data.draw(st.integers(0, len(lines[index])))
        lines[index] = lines[index][:cut] + data.draw(st.text(max_size=5)) + lines[index][cut:]
    path = tmp_path_factory.mktemp("fuzz") / "log.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with Database(path.parent / "t.db") as db:
        try:
            summary = import_log(db, path)
        except LogError as err:
            assert "\n" not in str(err) and str(path) in str(err)
            assert db.stats()["trials"] == 0  # nothing written
        else:
            assert summary.added == db.stats()["trials"]


def test_a_truncated_or_foreign_database_file_is_a_clear_error(tmp_path):
    good = tmp_path / "good.db"
    autotune.tune(ops.make("matmul", "16,16,16"), trials=1, database=good, seed=0)
    data = good.read_bytes()
    for name, content in (("truncated.db", data[: len(data) // 3]), ("zeros.db", b"\0" * 4096),
                          ("text.db", b"hello, not a database\n")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(AutotuneError):
            with Database(path) as db:
                db.trials()
        assert path.read_bytes() == content  # not "repaired", not overwritten
        assert main(["cache", "stats", "--db", str(path)]) == 2
