"""The command line: every command has help, bad input is one line and exit code 2, tune → best works."""

import re
import subprocess
import sys

import pytest

from autotune import cli
from autotune.records import ms_text

COMMANDS = ["tune", "best", "demo", "ops"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert "usage: autotune " + command in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["tune", "matmulx"], "unknown operator 'matmulx'"),
        (["tune", "matmul", "--shape", "1,a"], "cannot read shape"),
        (["tune", "matmul", "--shape", "4,4"], "matmul"),
        (["tune", "matmul", "--shape", "8,8,8", "--target", "cuda"], "cannot use target 'cuda'"),
        (["tune", "matmul", "--shape", "8,8,8", "--target", "{bad json"], "--target JSON is malformed"),
        (["tune", "dense", "--shape", "8,8,8", "-o", "epilogue=tanh"], "epilogue"),
        (["tune", "dense", "--shape", "8,8,8", "-o", "bias"], "KEY=VALUE"),
        (["tune", "matmul", "--shape", "8,8,8", "--trials", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, tmp_path, capsys):
    code = cli.main([*argv, "--db", str(tmp_path / "t.db")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("autotune: error:") and message in err and "\n" not in err


def test_unreadable_database(tmp_path, capsys):
    bad = tmp_path / "bad.db"
    bad.write_text("not a database")
    assert cli.main(["best", "matmul", "--shape", "8,8,8", "--db", str(bad)]) == 2
    assert "not a readable autotune database" in capsys.readouterr().err
    assert bad.read_text() == "not a database"


def test_tune_then_best(tmp_path, capsys):
    db = str(tmp_path / "t.db")
    assert cli.main(["best", "matmul", "--shape", "32,32,16", "--db", db]) == 1
    assert "has no record for this device" in capsys.readouterr().out
    assert cli.main(["tune", "matmul", "--shape", "32,32,16", "--trials", "3", "--db", db, "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "3 trials" in out and "GFLOPS" in out
    best_ms = re.search(r"best ([0-9.]+)", out).group(1)  # a few microseconds: not printed as 0.000
    assert float(best_ms) > 0 and len(best_ms.replace(".", "").lstrip("0")) == 4
    assert cli.main(["best", "matmul", "--shape", "32,32,16", "--db", db, "--show"]) == 0
    out = capsys.readouterr().out
    assert "best" in out and "T.prim_func" in out


def test_console_script_runs_as_a_module(tmp_path):
    done = subprocess.run([sys.executable, "-m", "autotune.cli", "ops"], capture_output=True, text=True)
    assert done.returncode == 0 and "matmul" in done.stdout and "softmax" in done.stdout


def test_demo_times_its_best_side_by_side_with_numpy(tmp_path, capsys):
    assert cli.main(["demo", "--trials", "4", "--db", str(tmp_path / "t.db")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0] + " " + line.split()[1]: line.split() for line in out.splitlines()
            if line.startswith(("untuned TVM", "autotune best", "NumPy (BLAS)"))}
    assert set(rows) == {"untuned TVM", "autotune best", "NumPy (BLAS)"}
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows.values())
    assert "timed in turn just now; recorded while tuning:" in out
    assert "speed-up over untuned:" in out


def test_latencies_print_with_four_significant_digits():
    assert [ms_text(s) for s in (5.123e-6, 1.259e-3, 0.0101, 9.99996e-4, 0.0)] == ["0.005123", "1.259", "10.10", "1.000", "0.000"]
