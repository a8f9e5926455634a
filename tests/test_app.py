"""The web page `python -m benchmarks.app`: its checks without a server (fast), and each endpoint
through gradio_client against a server on 127.0.0.1 (slow, the shared `app_server` fixture)."""

import json
import os
import time

import pytest

from benchmarks import app_core as core
from benchmarks.config import BenchmarkConfig



def _make_run(path, results=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(BenchmarkConfig.quick_preset().to_dict(), f)
    if results is not None:
        with open(os.path.join(path, "results.json"), "w") as f:
            f.write(results if isinstance(results, str) else json.dumps(results))
    return str(path)


RESULTS = {"suite": "standard", "command": "python -m benchmarks.cartpole --quick", "timing": {"wall_s": 12.0},
           "methods": {"non_adaptive": {"return_mean": 20.5, "return_ci95_low": 10.0, "return_ci95_high": 31.0,
                                        "return_by_task_kind": {"normal": {"mean": 25.0}, "inverted": {"mean": 16.0}}},
                       "maml_adapted": {"return_mean": 40.0, "return_ci95_low": None,
                                        "return_by_task_kind": {"normal": {"mean": 41.0}, "inverted": {"mean": 39.0}},
                                        "return_by_inner_step": [10.0, 20.0, 40.0]}}}


# ------------------------------------------------------------------------------------ fast
def test_importing_the_library_imports_no_gradio_and_the_page_module_no_jax(fresh_python):
    code = ("import sys\n"
            "import benchmarks.app, benchmarks.app_core\n"
            "print(sorted(m for m in ('jax', 'gradio') if m in sys.modules))\n"
            "import ssm_jax, maml, adapt, envs, benchmarks, benchmarks.cli, benchmarks.cartpole\n"
            "print(sorted(m for m in sys.modules if m == 'gradio' or m.startswith('gradio.')))\n")
    assert fresh_python(code, timeout=120) == ["[]", "[]"]


def test_flags_defaults_and_bad_values(tmp_path, capsys):
    o = core.parse_flags(["--runs_root", str(tmp_path)])
    assert (o.runs_root, o.host, o.port, o.share) == (os.path.realpath(tmp_path), "127.0.0.1", 7860, False)
    assert core.parse_flags([]).runs_root == os.path.realpath("results")
    assert core.parse_flags(["--share", "--port", "8000"]).share is True
    (tmp_path / "file").write_text("x")
    for argv, message in ((["--port", "0"], "--port must be a positive int"),
                          (["--port", "70000"], "--port must be <= 65535"),
                          (["--port", "x"], "invalid int value"),
                          (["--host", "a b"], "--host must be a host name"),
                          (["--runs_root", str(tmp_path / "file")], "exists and is not a directory"),
                          (["--runs_root", ""], "--runs_root must be a directory path")):
        with pytest.raises(SystemExit) as exc:
            core.parse_flags(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    from benchmarks import app

    with pytest.raises(SystemExit) as exc:  # the command checks its flags before anything starts
        app.main(["--port", "99999"])
    assert exc.value.code == 2 and "--port must be <= 65535" in capsys.readouterr().err


def test_run_directories_must_lie_under_the_runs_root(tmp_path):
    root = tmp_path / "root"
    run = _make_run(root / "a", RESULTS)
    outside = _make_run(tmp_path / "outside", RESULTS)
    assert core.resolve_run(str(root), "a") == os.path.realpath(run)
    assert core.resolve_run(str(root), run) == os.path.realpath(run)  # absolute, but under the root
    os.symlink(outside, root / "link")
    os.symlink(run, root / "inside_link")
    assert core.resolve_run(str(root), "inside_link") == os.path.realpath(run)
    for name in ("../outside", outside, "link", "a/../../outside", "/etc", ".", "", None, 3):
        with pytest.raises(ValueError, match="not a directory under the runs root|choose a run"):
            core.resolve_run(str(root), name)
    os.makedirs(root / "empty")
    with pytest.raises(ValueError, match="not a benchmark run directory"):
        core.resolve_run(str(root), "empty")


def test_list_runs_newest_first_finished_only(tmp_path):
    old = _make_run(tmp_path / "old", RESULTS)
    new = _make_run(tmp_path / "suites" / "standard", RESULTS)
    _make_run(tmp_path / "unfinished")
    _make_run(tmp_path / "a" / ".previous-run", RESULTS)
    os.utime(os.path.join(old, "results.json"), (1e9, 1e9))
    os.utime(os.path.join(new, "results.json"), (2e9, 2e9))
    assert core.list_runs(str(tmp_path)) == [os.path.join("suites", "standard"), "old"]
    assert set(core.list_runs(str(tmp_path), finished=False)) == {os.path.join("suites", "standard"), "old",
                                                                   "unfinished"}
    assert core.list_runs(str(tmp_path / "missing")) == []


def test_run_summary_reads_results_and_refuses_a_corrupted_file(tmp_path):
    s = core.run_summary(_make_run(tmp_path / "r", RESULTS))
    assert s["rows"] == [["non_adaptive", "20.5", "[10.0, 31.0]", "25.0", "16.0", ""],
                         ["maml_adapted", "40.0", "", "41.0", "39.0", "10.0, 20.0, 40.0"]]
    assert json.loads(s["config"])["quick"] is True and "wall 12 s" in s["text"]
    for bad in ("{not json", json.dumps({"methods": [1, 2]}), json.dumps({"suite": "standard"})):
        with pytest.raises(core.AppError, match="not a readable results file"):
            core.run_summary(_make_run(tmp_path / "bad", bad))
    with pytest.raises(core.AppError, match="unfinished: resume it"):
        core.run_summary(_make_run(tmp_path / "unfinished"))
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text('{"num_seeds": -1}')
    with pytest.raises(ValueError, match="not a valid benchmark config"):
        core.run_summary(str(tmp_path / "cfg"))


GOOD_PHYSICS = {"length": 0.9, "masspole": 0.2, "masscart": 1.5, "gravity": 9.8, "force_mag": 10.0}


def test_physics_controls_are_checked_with_named_messages():
    assert core.check_physics(GOOD_PHYSICS, True) == {**GOOD_PHYSICS, "inverted": True}
    cases = [({"masscart": -1.0}, "masscart must be >= 0.1, got -1.0"),
             ({"length": float("nan")}, "length must be finite"),
             ({"gravity": "9.8"}, "gravity must be a real number"),
             ({"masspole": True}, "masspole must be a real number"),
             ({"force_mag": 31.0}, "force_mag must be <= 30.0"),
             ({"length": float("inf")}, "length must be finite")]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            core.check_physics({**GOOD_PHYSICS, **change}, False)
    with pytest.raises(ValueError, match="gravity is missing"):
        core.check_physics({k: v for k, v in GOOD_PHYSICS.items() if k != "gravity"}, False)
    with pytest.raises(ValueError, match="inverted must be a bool"):
        core.check_physics(GOOD_PHYSICS, 1)


def test_try_and_compare_controls_are_checked():
    methods = ("non_adaptive", "maml_adapted", "test_time_within_episode")
    assert core.check_try_inputs("maml_adapted", methods, "inner_steps", 3.0, 1.0, 2, 7) == ("maml_adapted", 3, 1, 7)
    assert core.check_try_inputs("non_adaptive", methods, "none", 0, 0, 2, 0)[1] == 0
    cases = [("nope", "inner_steps", 1, 0, 0, "method must be one of"),
             ("maml_adapted", "inner_steps", 6, 0, 0, "adaptation steps must be <= 5, got 6"),
             ("maml_adapted", "inner_steps", 2.5, 0, 0, "adaptation steps must be an int >= 0"),
             ("maml_adapted", "inner_steps", -1, 0, 0, "adaptation steps must be an int >= 0"),
             ("non_adaptive", "none", 2, 0, 0, "adaptation steps must be 0 for non_adaptive"),
             ("test_time_within_episode", "within_episode", 1, 0, 0, "adapts during the episode"),
             ("maml_adapted", "inner_steps", 1, 2, 0, "training seed must be <= 1, got 2"),
             ("maml_adapted", "inner_steps", 1, 0, -3, "episode seed must be an int >= 0"),
             ("maml_adapted", "inner_steps", 1, 0, None, "episode seed must be an int >= 0")]
    for method, kind, steps, seed_index, key, message in cases:
        with pytest.raises(ValueError, match=message):
            core.check_try_inputs(method, methods, kind, steps, seed_index, 2, key)
    assert core.check_compare_inputs(16.0, 3) == (16, 3)
    for n, seed, message in ((1, 0, "number of tasks must be an int >= 2"), (257, 0, "must be <= 256"),
                             (4, 2**31, "task seed must be <="), (4, "x", "task seed must be an int")):
        with pytest.raises(ValueError, match=message):
            core.check_compare_inputs(n, seed)


def test_try_task_checks_its_controls_before_loading_anything(tmp_path):
    run = _make_run(tmp_path / "r", RESULTS)  # no checkpoints: any load would fail differently
    cache = core.RunCache()
    with pytest.raises(ValueError, match="masscart must be >= 0.1"):
        core.try_task(cache, run, "maml_adapted", {**GOOD_PHYSICS, "masscart": -2.0}, False, 1)
    with pytest.raises(ValueError, match="method must be one of"):
        core.try_task(cache, run, "maml_adapted_mlp_x", GOOD_PHYSICS, False, 1)
    with pytest.raises(ValueError, match="adaptation steps must be 0 for in_context|<= 5"):
        core.try_task(cache, run, "maml_adapted", GOOD_PHYSICS, False, 9)
    with pytest.raises(ValueError, match=r"suite must be one of \['standard', 'extreme', 'switching', 'goal'\]"):
        core.try_task(cache, run, "maml_adapted", GOOD_PHYSICS, False, 1, suite="partial")
    with pytest.raises(ValueError, match="number of tasks"):
        core.compare(cache, run, 0, 0)


def test_train_job_refuses_bad_names_and_existing_runs(tmp_path):
    (tmp_path / "taken").mkdir()
    for name, message in (("../x", "run name must be"), ("", "run name must be"), (".hidden", "run name must be"),
                          ("a/b", "run name must be"), (None, "run name must be"), ("x" * 65, "run name must be"),
                          ("taken", "already exists")):
        with pytest.raises(ValueError, match=message):
            core.TrainJob(str(tmp_path), name, "quick")
    with pytest.raises(ValueError, match="configuration must be one of"):
        core.TrainJob(str(tmp_path), "ok", "huge")
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_prune_outputs_deletes_only_the_pages_old_outputs(tmp_path):
    now = 1_000_000.0
    files = {"before-1.gif": 4000, "after-1.gif": 10, "compare-1.png": 3601, "after-2.gif": 3599,
             "notes.txt": 9000, "before-new.gif": 0}
    for name, age in files.items():
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (now - age, now - age))
    (tmp_path / "before-dir").mkdir()
    os.utime(tmp_path / "before-dir", (now - 9000, now - 9000))
    assert core.prune_outputs(str(tmp_path), max_age_s=3600, now=now) == 2
    assert sorted(os.listdir(tmp_path)) == ["after-1.gif", "after-2.gif", "before-dir", "before-new.gif",
                                            "notes.txt"]
    assert core.prune_outputs(str(tmp_path / "gone"), now=now) == 0


def test_a_cancellable_child_stops_on_sigint_even_when_its_parent_ignores_sigint():
    """A shell's background job (`pytest &`, `python -m benchmarks.app &`) starts with SIGINT
    ignored and its children inherit that: a plain `python` child ignores the page's Cancel,
    `interruptible_command`'s child raises KeyboardInterrupt."""
    import signal
    import subprocess
    import sys

    ready = "print('ready', flush=True)"
    sleep = "import time; time.sleep(60)"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:  # both children inherit the ignored SIGINT
        plain = subprocess.Popen([sys.executable, "-c", f"{ready}\n{sleep}"], stdout=subprocess.PIPE, text=True)
        child = subprocess.Popen(core.interruptible_command("timeit", ["-n", "1", "-r", "1", sleep], prelude=ready),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert plain.stdout.readline() == "ready\n" and child.stdout.readline() == "ready\n"
        plain.send_signal(signal.SIGINT)
        child.send_signal(signal.SIGINT)
        child.wait(timeout=30)
        # an uncaught KeyboardInterrupt ends Python by SIGINT, or with status 1 where it cannot
        assert child.returncode in (-signal.SIGINT, 1) and "KeyboardInterrupt" in child.stderr.read()
        time.sleep(0.5)
        assert plain.poll() is None  # the inherited disposition is real: the plain child slept on
    finally:
        for p in (plain, child):
            p.kill()
            p.wait()


# ------------------------------------------------------------------------------------ slow
@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


def _error(fn):
    with pytest.raises(Exception) as exc:
        fn()
    text = str(exc.value)
    assert "Traceback" not in text
    return text


PHYS_ARGS = (0.9, 0.2, 1.5, 9.8, 10.0)


@pytest.mark.slow
def test_endpoints_return_numbers_in_range(client, app_server):
    import jax

    from PIL import Image

    runs, _notice = client.predict(None, api_name="/list_runs")
    assert runs["value"] == "quick" and {c[0] for c in runs["choices"]} == {"quick", "broken"}
    method, suites, _info, text, table, plots, config = client.predict("quick", api_name="/run_summary")
    assert method["value"] == "maml_adapted" and "suite standard" in text
    # tasks of the suites whose observations the run's policies read (not partial's [x, theta])
    assert suites["value"] == "standard"
    assert [c[0] for c in suites["choices"]] == ["standard", "extreme", "switching", "goal"]
    assert [r[0] for r in table["data"]] == list(json.loads(config)["methods"])
    assert all(0 <= float(r[1]) <= 500 for r in table["data"]) and len(plots) >= 2

    traces, active = [], [True]

    def listener(event, duration, **_):
        if active and event.endswith("jaxpr_trace_duration"):
            traces.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    timings, traced = [], []
    for physics, inverted, key, steps in ((PHYS_ARGS, False, 0, 2), ((0.3, 0.05, 0.8, 12.0, 15.0), True, 1, 4)):
        t0 = time.perf_counter()
        ret, returns, gif_before, gif_after, status = client.predict(
            "quick", "maml_adapted", *physics, inverted, steps, 0, key, "standard", api_name="/try_task")
        timings.append(time.perf_counter() - t0)
        traced.append(len(traces))
        assert 0 <= float(ret) <= 500
        assert [r[0] for r in returns["data"]] == [f"support batch after {i} inner steps" for i in range(steps + 1)] + [
            f"episode after {steps} MAML inner steps"]
        assert all(0 <= float(r[1]) <= 500 for r in returns["data"])
        assert float(returns["data"][-1][1]) == float(ret)
        for gif in (gif_before, gif_after):
            with Image.open(gif) as im:
                assert im.format == "GIF" and im.n_frames >= 2
    # test-time updates (1, then 3) and context episodes (one context episode, then the measured
    # one; then 3): one program for each method
    for method, steps in (("test_time_adapted", 1), ("test_time_adapted", 3), ("in_context", 1), ("in_context", 3)):
        ret, returns, *_ = client.predict("quick", method, *PHYS_ARGS, False, steps, 0, 0, "standard",
                                          api_name="/try_task")
        traced.append(len(traces))
        assert len(returns["data"]) == steps + 1 and 0 <= float(ret) <= 500
    active.clear()
    # the run's policy on a task of another suite: the goal's distance-shaped reward, in [0, 500]
    ret, returns, _, _, status = client.predict("quick", "maml_adapted", *PHYS_ARGS, False, 1, 0, 0, "goal",
                                                api_name="/try_task")
    assert 0 <= float(ret) <= 500 and "goal task" in status and len(returns["data"]) == 3
    # the first Run of a method traced whatever the session had not traced yet; other physics and
    # other step counts are data (one program up to MAX_ADAPT_STEPS steps)
    assert traced[1] == traced[0], f"a second Run with other physics and steps traced again: {traced}"
    assert traced[3] == traced[2] and traced[5] == traced[4], f"a Run with other steps traced again: {traced}"
    print(f"try_task via gradio_client: first {timings[0]:.1f} s (2 inner steps), second {timings[1]:.1f} s "
          f"(4 inner steps; load average {os.getloadavg()[0]:.1f})")

    num_tasks = json.loads(config)["evaluation"]["num_tasks"]  # the run's own: its programs are cached
    t0 = time.perf_counter()
    table, plot, status = client.predict("quick", num_tasks, 5, api_name="/compare")
    print(f"compare via gradio_client: {time.perf_counter() - t0:.1f} s")
    assert [r[0] for r in table["data"]] == list(json.loads(config)["methods"])
    assert all(0 <= float(r[1]) <= 500 for r in table["data"]) and os.path.getsize(plot) > 0
    assert f"{num_tasks} held-out tasks" in status


@pytest.mark.slow
def test_endpoints_refuse_bad_input_with_a_readable_message(client, app_server):
    # the page's sliders check their range before the handler and name themselves
    bad = [(("quick", "maml_adapted", 0.9, 0.2, -1.0, 9.8, 10.0, False, 2, 0, 0),
            "cart mass (kg): Value -1.0 is less than minimum value 0.1"),
           (("../..", "maml_adapted", *PHYS_ARGS, False, 2, 0, 0), "not a directory under the runs root"),
           (("quick", "maml_adapted", *PHYS_ARGS, False, 9, 0, 0),
            "adaptation steps (MAML inner steps, test-time updates or context episodes): Value 9 is greater than "
            "maximum value 5"),
           (("quick", "maml_adapted", *PHYS_ARGS, False, 2, 5, 0), "training seed must be <= 1, got 5"),
           (("/etc", "maml_adapted", *PHYS_ARGS, False, 2, 0, 0), "not a directory under the runs root"),
           (("quick", "non_adaptive", *PHYS_ARGS, False, 1, 0, 0), "adaptation steps must be 0 for non_adaptive"),
           (("quick", "nonsense", *PHYS_ARGS, False, 1, 0, 0), "method must be one of"),
           (("broken", "maml_adapted", *PHYS_ARGS, False, 1, 0, 0), "cannot load maml_adapted")]
    for args, message in bad:
        assert message in _error(lambda: client.predict(*args, "standard", api_name="/try_task")), message
    assert "suite must be one of ['standard', 'extreme', 'switching', 'goal']" in _error(
        lambda: client.predict("quick", "maml_adapted", *PHYS_ARGS, False, 1, 0, 0, "partial", api_name="/try_task"))
    assert "number of tasks" in _error(lambda: client.predict("quick", 1, 0, api_name="/compare"))
    assert "run name must be" in _error(lambda: client.predict("../evil", "quick", api_name="/train_start"))
    assert "no run of this tab" in _error(lambda: client.predict(api_name="/train_cancel"))
    # the page still works after the errors
    ret, *_ = client.predict("quick", "non_adaptive", *PHYS_ARGS, False, 0, 0, 0, "standard", api_name="/try_task")
    assert 0 <= float(ret) <= 500


@pytest.mark.slow
def test_train_starts_and_cancels_without_a_results_file(client, app_server, tmp_path, monkeypatch):
    # its own empty compilation cache: with the session's, this --quick job reads quick_run's
    # programs back and can finish (about 36 s) before the Cancel below arrives
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "cold_cache"))
    progress, status, _log = client.predict("cancelled", "quick", api_name="/train_start")
    assert "running" in status and "%" in progress
    out = os.path.join(app_server.root, "cancelled")
    deadline = time.time() + 120
    while not os.path.isfile(os.path.join(out, "config.json")) and time.time() < deadline:
        time.sleep(0.5)
    # another browser tab (another session) neither sees nor cancels this tab's run
    from gradio_client import Client

    other = Client(app_server.url, verbose=False)
    assert "no run of this tab" in _error(lambda: other.predict(api_name="/train_cancel"))
    progress, status, _log = client.predict(api_name="/train_cancel")
    assert "cancelled" in status and "--resume" in status
    assert os.path.isfile(os.path.join(out, "config.json"))
    assert not os.path.exists(os.path.join(out, "results.json"))
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    assert "cancelled" not in core.list_runs(app_server.root)


@pytest.mark.slow
def test_a_finished_train_job_is_added_to_the_run_list_by_the_tabs_poll_once(client, app_server):
    """The Train tab's timer poll: progress while the job runs, then, on the first poll after it
    finished, the run list with the new run (and the selected run kept); later polls leave the
    list alone. The --quick job reads quick_run's programs from the session's cache."""
    import shutil

    client.predict("listed", "quick", api_name="/train_start")
    out = os.path.join(app_server.root, "listed")
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            progress, status, _log, runs, _notice = client.predict("quick", api_name="/train_poll")
            if "running" not in status:
                break
            assert "choices" not in runs  # no refresh while it runs
            time.sleep(1.0)
        assert "finished" in status and "in the run list" in status, status
        assert runs["value"] == "quick" and "listed" in {c[0] for c in runs["choices"]}
        assert os.path.isfile(os.path.join(out, "results.json"))
        _, status, _log, runs, _notice = client.predict("quick", api_name="/train_poll")
        assert "finished" in status and "choices" not in runs
    finally:  # the browser test expects quick_run's copy to stay the newest run
        shutil.rmtree(out, ignore_errors=True)
