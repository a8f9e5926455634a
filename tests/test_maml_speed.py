"""`benchmarks.maml_speed`'s side-by-side measurement of the PyTorch reference: the driver with a
fake reference script (a tiny Python file printing JSON), its ratios, the table with and without
a reference, and the usage errors for a missing script or interpreter. No JAX compilation and no
timing assertions: the fake numbers are fixed, so every ratio is known exactly."""

import os
import stat
import sys

import pytest

from benchmarks import maml_speed

FAKE_REFERENCE = """\
import json, os, sys
log = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.log")
with open(log, "a") as f:
    f.write("reference " + " ".join(sys.argv[1:]) + "\\n")
with open(log) as f:
    n = sum(line.startswith("reference") for line in f)
print("warming up ...")  # only the last line is the result
print(json.dumps({"1x250": 400.0 + 10.0 * n, "5x50": 500.0}))
"""


@pytest.fixture
def fake_reference(tmp_path):
    """A reference directory whose timing script logs its arguments to calls.log and prints
    1x250 = 410, 420, 430 ... ms on its 1st, 2nd, 3rd ... call and 5x50 = 500 ms."""
    (tmp_path / maml_speed.REFERENCE_SCRIPT).write_text(FAKE_REFERENCE)
    return tmp_path


def _executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_side_by_side_alternates_and_gives_the_ratio_of_its_numbers(fake_reference):
    script = maml_speed.find_reference_script(str(fake_reference))
    log = fake_reference / "calls.log"
    ours_ms = {"1x250": 2.0, "1x250 remat": 4.0, "5x50": 5.0}

    def ours():
        with open(log, "a") as f:
            f.write("ours\n")
        return ours_ms

    def reference():
        return maml_speed.run_reference(sys.executable, script, threads=3, reps=7)

    lines = []
    results = maml_speed.side_by_side(reference, ours, rounds=3, log=lines.append)
    calls = log.read_text().splitlines()
    assert calls == ["reference --json --threads 3 --reps 7", "ours"] * 3
    assert [ref for ref, _ in results] == [{"1x250": 410.0, "5x50": 500.0}, {"1x250": 420.0, "5x50": 500.0},
                                           {"1x250": 430.0, "5x50": 500.0}]
    assert len(lines) == 3 and "420.0 ms" in lines[1]
    rows = maml_speed.ratio_rows(results, [("1x250", "1x250"), ("1x250 remat", "1x250"), ("5x50", "5x50")])
    # medians over the rounds: reference 1x250 420 ms, 5x50 500 ms
    assert rows == [("1x250", 420.0, 2.0, 210.0), ("1x250 remat", 420.0, 4.0, 105.0), ("5x50", 500.0, 5.0, 100.0)]


def test_ratio_rows_take_each_sides_median_over_rounds():
    results = [({"a": 100.0}, {"a": 1.0}), ({"a": 300.0}, {"a": 4.0}), ({"a": 200.0}, {"a": 2.0})]
    assert maml_speed.ratio_rows(results, [("a", "a")]) == [("a", 200.0, 2.0, 100.0)]


def _fake_steps(monkeypatch, ms):
    """ssm_workloads without JAX: four fake compiled rows, each round timed at `ms`."""
    steps = {k: (None, None, None, 1.5) for k in ms}
    steps["params"] = {"1x250": 1972, "5x50": 4554}
    monkeypatch.setattr(maml_speed, "ssm_steps", lambda: steps)
    monkeypatch.setattr(maml_speed, "time_ssm_steps", lambda steps, repeats: dict(ms))


def test_table_without_a_reference_says_the_ratio_is_not_measured(monkeypatch, capsys):
    ms = {"1x250": 2.0, "1x250 remat": 4.0, "5x50": 5.0, "5x50 remat": 8.0}
    _fake_steps(monkeypatch, ms)
    maml_speed.ssm_workloads(repeats=2, rounds=2, reference=None)
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("1x250 SSM", "5x50 SSM"))]
    assert len(rows) == 4 and all(line.endswith("ratio not measured") for line in rows)
    assert "--reference-python" in out
    assert not any(line.rstrip().endswith("x") for line in rows)


def test_table_with_a_reference_prints_the_measured_ratios(monkeypatch, capsys, fake_reference):
    ms = {"1x250": 2.0, "1x250 remat": 4.0, "5x50": 5.0, "5x50 remat": 8.0}
    _fake_steps(monkeypatch, ms)
    script = maml_speed.find_reference_script(str(fake_reference))
    maml_speed.ssm_workloads(repeats=2, rounds=3, reference=lambda: maml_speed.run_reference(
        sys.executable, script, threads=1, reps=1))
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        if line.startswith(("1x250 SSM", "5x50 SSM")):
            tokens = line.split()
            rows[tokens[0] + (" remat" if "remat" in tokens else "")] = tokens[-3:]
    assert rows == {"1x250": ["420.0", "2.000", "210x"], "1x250 remat": ["420.0", "4.000", "105x"],
                    "5x50": ["500.0", "5.000", "100x"], "5x50 remat": ["500.0", "8.000", "62x"]}
    assert "load average" in out and "not measured" not in out


def test_parse_args_finds_the_script_and_checks_the_interpreter(fake_reference, tmp_path):
    python = _executable(tmp_path / "python-with-torch", "#!/bin/sh\nexit 0\n")
    args = maml_speed.parse_args(["--reference-python", python, "--reference-dir", str(fake_reference)])
    assert args.reference_script == str(fake_reference / maml_speed.REFERENCE_SCRIPT)
    assert args.reference_python == python
    assert maml_speed.parse_args([]).reference_script is None


def _usage_error(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        maml_speed.parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_missing_script_is_a_usage_error_naming_the_flag(capsys, tmp_path):
    err = _usage_error(capsys, ["--reference-python", sys.executable, "--reference-dir", str(tmp_path)])
    assert "--reference-dir" in err and maml_speed.REFERENCE_SCRIPT in err and str(tmp_path) in err
    err = _usage_error(capsys, ["--reference-dir", str(tmp_path)])
    assert "--reference-dir is only used with --reference-python" in err


def test_default_reference_dirs_go_up_from_the_repository_then_the_cwd(tmp_path, monkeypatch):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(maml_speed.__file__)))
    monkeypatch.chdir(tmp_path)
    dirs = maml_speed.default_reference_dirs()
    ups = [os.path.dirname(repo)]
    while os.path.dirname(ups[-1]) != ups[-1]:
        ups.append(os.path.dirname(ups[-1]))
    assert dirs[:len(ups)] == [os.path.join(u, "shared", "peer-reference") for u in ups]
    assert os.path.join(os.path.dirname(str(tmp_path)), "shared", "peer-reference") in dirs
    assert len(dirs) == len(set(dirs))


def test_default_reference_dir_missing_names_the_flag(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(maml_speed, "default_reference_dirs", lambda: [str(tmp_path / "nowhere")])
    err = _usage_error(capsys, ["--reference-python", sys.executable])
    assert "--reference-dir" in err and "nowhere" in err


@pytest.mark.parametrize("kind", ["missing", "not executable", "no torch", "not an interpreter"])
def test_bad_interpreter_is_a_usage_error_naming_the_flag(capsys, fake_reference, tmp_path, kind):
    path = tmp_path / "python"
    if kind == "not executable":
        path.write_text("#!/bin/sh\nexit 0\n")
    elif kind == "no torch":
        _executable(path, "#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    elif kind == "not an interpreter":  # exec fails: neither a #! script nor a binary
        _executable(path, "")
        path.write_bytes(b"\x00\x01binary junk")
    err = _usage_error(capsys, ["--reference-python", str(path), "--reference-dir", str(fake_reference)])
    assert "--reference-python" in err and str(path) in err
    expected = {"missing": "does not exist", "not executable": "is not executable",
                "no torch": "cannot import torch and numpy (ModuleNotFoundError: No module named 'torch')",
                "not an interpreter": "cannot be run"}[kind]
    assert expected in err


@pytest.mark.parametrize("flag", ["--repeats", "--rounds", "--reference-reps"])
def test_counts_must_be_positive(capsys, flag):
    assert f"{flag} must be a positive int, got 0" in _usage_error(capsys, [flag, "0"])


@pytest.mark.parametrize("body, expected", [
    ("import sys; print('boom', file=sys.stderr); sys.exit(3)", "exited with status 3:\nboom"),
    ("print('no json here')", "printed no JSON line"),
    ("print('[1, 2]')", "printed no JSON line"),
    ("print('{\"1x250\": -1}')", "printed no JSON line"),
])
def test_a_failing_reference_run_is_a_clear_runtime_error(tmp_path, body, expected):
    script = tmp_path / maml_speed.REFERENCE_SCRIPT
    script.write_text(body + "\n")
    with pytest.raises(RuntimeError, match="the reference") as exc:
        maml_speed.run_reference(sys.executable, str(script), threads=1, reps=1)
    assert expected in str(exc.value)


def test_the_reference_gets_as_many_threads_as_xla_uses():
    assert maml_speed.xla_threads(True) == 1
    assert maml_speed.xla_threads(False) == len(os.sched_getaffinity(0))


def test_no_fixed_reference_figure_remains():
    names = [n for n in vars(maml_speed) if "TORCH" in n or "REFERENCE_MS" in n]
    assert names == []
    with open(maml_speed.__file__) as f:
        source = f.read()
    assert "380" not in source and "210 ms" not in source
