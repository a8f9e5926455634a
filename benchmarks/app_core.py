"""The logic behind the web page `python -m benchmarks.app`, without Gradio.

Everything a control of the page feeds in is checked here (`ssm_jax.validation`), so the page
and the tests share one set of checks and messages; a bad value raises `AppError` (a
ValueError) whose one-line message the page shows. Importing this module imports neither JAX
nor Gradio: the checks run before anything compiles, and the computations import JAX inside.

- Flags: `parse_flags(argv) -> AppOptions` (`--runs_root`, `--host`, `--port`, `--share`).
- Runs: `list_runs(root)` (finished runs under the root, newest first), `resolve_run(root, name)`
  (a run directory strictly under the root, symlinks resolved: no path traversal),
  `run_summary(run_dir)` (its results table, plots and config.json).
- Try a task: `check_physics`, `check_steps`, ... and `try_task(cache, run_dir, ...)`, which
  really adapts the method (`benchmarks.runs.MethodPolicy.adapt`: MAML inner steps, test-time
  updates; in-context episodes with the carry kept) and draws the episode before and after
  adaptation as GIFs (`benchmarks.render`).
- Compare: `compare(cache, run_dir, num_tasks, seed, out_dir)`: every method of the run on the
  same held-out tasks drawn with `seed` (`benchmarks.methods.measure`), with the benchmark's own
  table entries (`benchmarks.results.method_results`) and bar plot (`plotting.plot_returns`).
- Train: `TrainJob` runs `python -m benchmarks.cartpole` in a subprocess; `cancel()` sends it
  SIGINT, which the command handles like Ctrl-C (its checkpoints stay resumable; results.json is
  only ever written whole, at the end).

`RunCache` keeps the loaded runs (one per run directory and method, with their jitted
functions), so later Runs of a method reuse its compiled programs: the task's physics is data,
never a static argument. It is shared by all sessions behind a lock; nothing else is shared.
`RunCache.warm_up(run_dir)` does a run's first Run of its default method with the page's
initial controls in a background thread (loading the checkpoint, compiling the programs), so
the page's first Run reuses them; a Run that arrives meanwhile waits for it on the lock.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

from benchmarks import rundir
from ssm_jax.validation import check_bool, check_choice, check_float, check_int

PROG = "python -m benchmarks.app"
DEFAULT_RUNS_ROOT = "results"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: Adaptation steps the page offers (MAML inner steps, test-time updates, context episodes),
#: and the slider's initial value.
MAX_ADAPT_STEPS = 5
DEFAULT_ADAPT_STEPS = 3
#: The physics controls: name -> (label, minimum, maximum, default); gymnax's CartPole-v1 defaults.
PHYSICS = {
    "length": ("half pole length (m)", 0.05, 2.0, 0.5),
    "masspole": ("pole mass (kg)", 0.01, 1.0, 0.1),
    "masscart": ("cart mass (kg)", 0.1, 5.0, 1.0),
    "gravity": ("gravity (m/s^2)", 1.0, 30.0, 9.8),
    "force_mag": ("push magnitude (N)", 1.0, 30.0, 10.0),
}
MAX_COMPARE_TASKS = 256
MAX_KEY = 2**31 - 1
#: Draw every GIF_STRIDE-th step (the GIF plays in real time: 50 / GIF_STRIDE frames per second).
GIF_STRIDE = 4
GIF_SIZE = (360, 240)
#: What one unit of adaptation is for each kind of method (`benchmarks.runs.ADAPTATION`).
UNITS = {"inner_steps": "MAML inner step", "rounds": "test-time update", "context": "context episode",
         "within_episode": "", "none": ""}
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class AppError(ValueError):
    """A value the page cannot use; its message is shown on the page."""


def one_line(err: BaseException) -> str:
    """The message the page shows for `err` (its first line, with the type unless it is one of
    the project's ValueErrors)."""
    from benchmarks.cli import one_line as cli_one_line  # noqa: PLC0415 - one home for the format

    return cli_one_line(err)


# ------------------------------------------------------------------------------------ flags
@dataclasses.dataclass(frozen=True)
class AppOptions:
    """The page's flags, validated: `runs_root` (absolute, resolved), `host`, `port`, `share`."""

    runs_root: str = DEFAULT_RUNS_ROOT
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    share: bool = False

    def __post_init__(self):
        if not isinstance(self.runs_root, str) or not self.runs_root:
            raise AppError(f"--runs_root must be a directory path, got {self.runs_root!r}")
        root = os.path.realpath(self.runs_root)
        if os.path.exists(root) and not os.path.isdir(root):
            raise AppError(f"--runs_root {self.runs_root!r} exists and is not a directory")
        object.__setattr__(self, "runs_root", root)
        if not isinstance(self.host, str) or not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", self.host):
            raise AppError(f"--host must be a host name or IP address, got {self.host!r}")
        port = check_int("--port", self.port, 1)
        if port > 65535:
            raise AppError(f"--port must be <= 65535, got {port}")
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "share", check_bool("--share", self.share))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="A web page (Gradio) to try a finished run's methods on a task by hand, "
        "compare them on held-out tasks, browse runs and start new ones.")
    p.add_argument("--runs_root", default=DEFAULT_RUNS_ROOT, metavar="DIR",
                   help=f"the directory whose runs the page shows and where it starts new ones; only "
                        f"directories under it can be opened [default {DEFAULT_RUNS_ROOT}/]")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on [default {DEFAULT_HOST}]")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port [default {DEFAULT_PORT}]")
    p.add_argument("--share", action="store_true", help="also publish a public gradio.live link [off]")
    return p


def parse_flags(argv=None) -> AppOptions:
    """The validated flags; a bad value is a usage error (exit status 2, one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return AppOptions(args.runs_root, args.host, args.port, args.share)
    except ValueError as err:
        parser.error(str(err))


# ------------------------------------------------------------------------------------ runs
def _under(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root and path != root


def resolve_run(runs_root: str, name) -> str:
    """The run directory `name` (relative to `runs_root`, or absolute) with symlinks resolved;
    AppError unless it lies under `runs_root` and holds a benchmark run's config.json."""
    if not isinstance(name, str) or not name.strip():
        raise AppError("run: choose a run (none is selected)")
    root = os.path.realpath(runs_root)
    path = os.path.realpath(os.path.join(root, name))
    if not _under(root, path):
        raise AppError(f"run {name!r} is not a directory under the runs root {root!r}")
    if not os.path.isfile(os.path.join(path, rundir.CONFIG_FILE)):
        raise AppError(f"run {name!r} is not a benchmark run directory (no {rundir.CONFIG_FILE})")
    return path


def list_runs(runs_root: str, finished: bool = True) -> list:
    """Run directories under `runs_root` (relative names; up to 3 levels deep, so a `--suite all`
    run's suites are listed), newest first; `finished`: only those with a results.json."""
    root = os.path.realpath(runs_root)
    found = []
    if not os.path.isdir(root):
        return found
    for here, dirs, files in os.walk(root):
        depth = os.path.relpath(here, root).count(os.sep) + (here != root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and depth < 3
                         and d not in (rundir.CHECKPOINTS_DIR, *rundir.LOG_DIRS))
        if here == root or rundir.CONFIG_FILE not in files:
            continue
        if finished and rundir.RESULTS_FILE not in files:
            continue
        stamp = os.path.getmtime(os.path.join(here, rundir.RESULTS_FILE if finished else rundir.CONFIG_FILE))
        found.append((stamp, os.path.relpath(here, root)))
    return [name for _, name in sorted(found, key=lambda x: (-x[0], x[1]))]


def _fmt(x, digits: int = 1) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def results_table(methods: dict) -> tuple:
    """`(headers, rows)` of a results.json "methods" dict: return, its 95% seed-level interval,
    and the normal / inverted force means (strings, one row per method)."""
    headers = ["method", "return", "95% interval (seeds)", "normal force", "inverted force",
               "after 0..K adaptation"]
    rows = []
    for name, e in methods.items():
        kinds = e.get("return_by_task_kind", {})
        steps = e.get("return_by_inner_step") or e.get("return_by_round") or []
        interval = ("" if e.get("return_ci95_low") is None
                    else f"[{_fmt(e['return_ci95_low'])}, {_fmt(e.get('return_ci95_high'))}]")
        rows.append([name, _fmt(e.get("return_mean")), interval,
                     _fmt(kinds.get("normal", {}).get("mean")), _fmt(kinds.get("inverted", {}).get("mean")),
                     ", ".join(_fmt(x) for x in steps)])
    return headers, rows


def run_summary(run_dir: str) -> dict:
    """A finished run's results (read from results.json and config.json): `headers`, `rows`
    (`results_table`), `plots` (paths of its PNG plots), `config` (config.json's text) and
    `text` (one line on the run). AppError if a file is missing or unreadable."""
    rundir.load_run_config(run_dir)  # a RunDirError (AppError's sibling ValueError) if invalid
    path = os.path.join(run_dir, rundir.RESULTS_FILE)
    try:
        with open(path) as f:
            results = json.load(f)
        methods = results["methods"]
        if not isinstance(methods, dict):
            raise TypeError("'methods' is not a mapping")
    except FileNotFoundError:
        raise AppError(f"run {run_dir!r} has no {rundir.RESULTS_FILE} (unfinished: resume it with "
                       f"python -m benchmarks.cartpole --resume {run_dir})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise AppError(f"{path!r} is not a readable results file ({err})") from None
    with open(os.path.join(run_dir, rundir.CONFIG_FILE)) as f:
        config_text = f.read()
    headers, rows = results_table(methods)
    plots = [os.path.join(run_dir, p) for p in (rundir.RETURNS_FILE, rundir.ADAPTATION_FILE, rundir.CURVES_FILE,
                                                 rundir.PER_TASK_PLOT_FILE)
             if os.path.isfile(os.path.join(run_dir, p))]
    timing = results.get("timing", {})
    text = (f"suite {results.get('suite', '?')}, {len(methods)} methods, wall "
            f"{_fmt(timing.get('wall_s'), 0)} s; command: {results.get('command', '?')}")
    return {"headers": headers, "rows": rows, "plots": plots, "config": config_text, "text": text}


# ------------------------------------------------------------------------------------ controls
def whole(name: str, value, minimum: int = 0, maximum: Optional[int] = None) -> int:
    """An int control: ints, and floats with no fractional part (sliders send 3.0), in range."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    v = check_int(name, value, minimum)
    if maximum is not None and v > maximum:
        raise AppError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_physics(values: dict, inverted) -> dict:
    """The task's physics from the controls: each of `PHYSICS` a finite float in its range,
    `inverted` a bool; returns `runs.make_task`'s keyword arguments."""
    out = {}
    for name, (_, low, high, _) in PHYSICS.items():
        if name not in values:
            raise AppError(f"{name} is missing")
        out[name] = check_float(name, values[name], minimum=low, maximum=high)
    out["inverted"] = check_bool("inverted", inverted)
    return out


def task_suites(run_suite: str) -> list:
    """The suites whose tasks a run of CartPole suite `run_suite` can be tried on: those with the
    same observation mode (a policy reads observations of one size), the run's own first."""
    from envs.suites import SUITES  # noqa: PLC0415 - no JAX

    mode = SUITES[run_suite].obs_mode
    return [run_suite] + [name for name, suite in SUITES.items() if name != run_suite and suite.obs_mode == mode]


def check_suite(suite, run_suite: str) -> str:
    """`suite` if the run's policies can act in it (`task_suites`); None: the run's own."""
    if suite is None or suite == "":
        return run_suite
    return check_choice("suite", suite, tuple(task_suites(run_suite)))


def check_method(method, available) -> str:
    """`method` if it is one of the run's methods."""
    return check_choice("method", method, tuple(available))


def default_method(methods) -> str:
    """The method the page chooses first for a run: maml_adapted if the run has it."""
    return "maml_adapted" if "maml_adapted" in methods else list(methods)[0]


def steps_before_episode(adaptation: str) -> bool:
    """Whether a method of this `benchmarks.runs.ADAPTATION` kind adapts before the episode it is
    shown on (so takes the page's adaptation steps): not one that never adapts ("none") nor one
    that adapts during the episode itself ("within_episode")."""
    return adaptation not in ("none", "within_episode")


def check_try_inputs(method, available, adaptation: str, steps, seed_index, num_seeds: int, key) -> tuple:
    """`(method, steps, seed_index, key)` checked: steps in [0, MAX_ADAPT_STEPS] and 0 for a
    method that does not adapt before the episode; seed_index < num_seeds; key in [0, 2^31)."""
    method = check_method(method, available)
    steps = whole("adaptation steps", steps, 0, MAX_ADAPT_STEPS)
    if not steps_before_episode(adaptation) and steps:
        how = "it does not adapt" if adaptation == "none" else "it adapts during the episode itself"
        raise AppError(f"adaptation steps must be 0 for {method} ({how}), got {steps}")
    seed_index = whole("training seed", seed_index, 0, num_seeds - 1)
    key = whole("episode seed", key, 0, MAX_KEY)
    return method, steps, seed_index, key


def check_compare_inputs(num_tasks, seed) -> tuple:
    return (whole("number of tasks", num_tasks, 2, MAX_COMPARE_TASKS), whole("task seed", seed, 0, MAX_KEY))


# ------------------------------------------------------------------------------------ computing
class RunCache:
    """Loaded runs shared by every session: run directory -> method -> `MethodPolicy` (with its
    trainer's jitted functions), reloaded when the run's results.json changes. One lock: the
    JAX computations of different sessions run one at a time (2 CPU cores are shared anyway)."""

    def __init__(self):
        self.lock = threading.RLock()
        self._runs = {}
        self._warmed, self._warmed_lock = set(), threading.Lock()

    def _stamp(self, run_dir: str):
        try:
            return os.path.getmtime(os.path.join(run_dir, rundir.RESULTS_FILE))
        except OSError:
            return None

    def policy(self, run_dir: str, method: str, suite: Optional[str] = None):
        """The `MethodPolicy` of `method` in the run (loading its checkpoint on first use); with
        `suite` (one of `task_suites` of the run's), the same trained states acting in that
        suite's environment (its trainer built for a config with that suite)."""
        from benchmarks.checkpointing import CheckpointError  # noqa: PLC0415
        from benchmarks.runs import load_run  # noqa: PLC0415

        with self.lock:
            stamp = self._stamp(run_dir)
            entry = self._runs.get(run_dir)
            if entry is None or entry[0] != stamp:
                entry = self._runs[run_dir] = (stamp, {})
            if method not in entry[1]:
                try:
                    entry[1][method] = load_run(run_dir, methods=[method]).policies[method]
                except CheckpointError as err:
                    raise AppError(f"cannot load {method} from {run_dir!r}: {one_line(err)}") from None
                except (ValueError, OSError) as err:
                    raise AppError(one_line(err)) from None
            policy = entry[1][method]
            if suite is None or suite == policy.config.suite:
                return policy
            if (method, suite) not in entry[1]:
                from benchmarks.trainers import build_trainer  # noqa: PLC0415

                config = policy.config.with_values({"suite": suite, "methods": (method,)})
                entry[1][(method, suite)] = dataclasses.replace(
                    policy, trainer=build_trainer(policy.method.trainer, config), config=config)
            return entry[1][(method, suite)]

    def policies(self, run_dir: str, methods) -> dict:
        return {m: self.policy(run_dir, m) for m in methods}

    def warm_up(self, run_dir: str) -> Optional[threading.Thread]:
        """Start the run's first Run in a daemon thread (once per run directory): its default
        method (`default_method`) on the default physics with the page's initial controls
        (`DEFAULT_ADAPT_STEPS`, seed index 0, episode seed 0; `episodes`, without drawing), so
        its checkpoint is loaded and its programs compiled before a person presses Run; that
        Run waits on the lock if it comes first, and then reuses them. Prints one line with its
        seconds when done, or with the error (which a Run of this run shows on the page).
        Returns the thread (None if this run was already warmed up)."""
        with self._warmed_lock:  # not `lock`: choosing a run must not wait for a computation
            if run_dir in self._warmed:
                return None
            self._warmed.add(run_dir)

        def work():
            try:
                from benchmarks.runs import ADAPTATION  # noqa: PLC0415

                config = rundir.load_run_config(run_dir)
                method = default_method(config.methods)
                steps = DEFAULT_ADAPT_STEPS if steps_before_episode(ADAPTATION[method]) else 0
                physics = {name: default for name, (_, _, _, default) in PHYSICS.items()}
                t0 = time.perf_counter()
                episodes(self, run_dir, config, method, {**physics, "inverted": False}, steps, 0, 0)
                print(f"{PROG}: warmed up {method} ({steps} steps) of {run_dir} in "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
            except Exception as err:  # noqa: BLE001 - a Run of this run shows the error on the page
                print(f"{PROG}: no warm-up for {run_dir}: {one_line(err)}", flush=True)

        thread = threading.Thread(target=work, name=f"warm-up {run_dir}", daemon=True)
        thread.start()
        return thread


def make_task(suite_name: str, physics: dict, key):
    """ONE task of the suite with the controls' physics (`runs.make_task`, derived fields
    recomputed); a wrapped suite's other parts (switch physics and step bounds, goal) are drawn
    from its test split with `key`."""
    import jax  # noqa: PLC0415

    import envs  # noqa: PLC0415
    from benchmarks import runs  # noqa: PLC0415

    task = runs.make_task(**physics)
    suite = envs.get_suite(suite_name)
    if not suite.wrapped:
        return task
    drawn = jax.tree.map(lambda x: x[0], suite.sample(key, 1, "test"))
    return drawn.replace(**{f: getattr(task, f) for f in type(task).__dataclass_fields__})


#: Seconds the page keeps the animations and plots it wrote (and Gradio its served copies).
OUTPUT_MAX_AGE_S = 3600
#: The kinds of file the page writes (`output_path`), the prefixes `prune_outputs` deletes.
OUTPUT_KINDS = ("before", "after", "compare")


def output_path(out_dir: str, kind: str, suffix: str) -> str:
    """A new file name in `out_dir` for one of the page's outputs: `<kind>-<pid>-<thread>-<ns><suffix>`,
    unique across sessions and processes."""
    assert kind in OUTPUT_KINDS, kind
    return os.path.join(out_dir, f"{kind}-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}{suffix}")


def prune_outputs(out_dir: str, max_age_s: float = OUTPUT_MAX_AGE_S, now: Optional[float] = None) -> int:
    """Delete the page's animations and plots (`before-*`, `after-*`, `compare-*`) in `out_dir`
    last modified more than `max_age_s` seconds ago, so a long-running page does not fill the
    disk; other files are left alone. Returns how many were deleted."""
    now = time.time() if now is None else now
    deleted = 0
    try:
        entries = list(os.scandir(out_dir))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.startswith(tuple(f"{k}-" for k in OUTPUT_KINDS)) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime > max_age_s:
                os.remove(entry.path)
                deleted += 1
        except FileNotFoundError:  # another session pruned it first
            pass
    return deleted


def _gif(episode, title: str, path: str) -> str:
    from benchmarks import render  # noqa: PLC0415

    frames = render.episode_frames(episode.states, episode.actions, episode.task, rewards=episode.rewards,
                                   stride=GIF_STRIDE, title=title, size=GIF_SIZE)
    render.save_gif(frames, path, fps=1 / (render.TAU * GIF_STRIDE))
    return path


def episodes(cache: RunCache, run_dir: str, config, method: str, physics: dict, steps: int, seed_index: int,
             key: int, suite: Optional[str] = None) -> tuple:
    """`try_task`'s computation on checked controls: `(before, after, returns)` (two
    `benchmarks.runs.Episode`s and the `(label, return)` list) on a task of `suite` (default:
    the run's; `check_suite`). Behind the cache's lock; the
    episode before adaptation is rolled out in a second thread while the method adapts, so on
    two cores their programs compile (and run) side by side."""
    import jax  # noqa: PLC0415

    from benchmarks import runs  # noqa: PLC0415

    adaptation = runs.ADAPTATION[method]
    with cache.lock:
        suite = config.suite if suite is None else suite
        policy = cache.policy(run_dir, method, suite)
        k_task, k_adapt, k_before, k_after = jax.random.split(jax.random.key(key), 4)
        task = make_task(suite, physics, k_task)
        params0 = policy.params(seed_index)
        if adaptation == "context":  # one window of MAX_ADAPT_STEPS + 1 episodes serves every count
            eps = runs.rollout_episodes(policy, params0, task, k_after, MAX_ADAPT_STEPS + 1)[:steps + 1]
            returns = [(f"episode {i + 1}" + (" (no context)" if i == 0 else f" (after {i} context)"), e.total)
                       for i, e in enumerate(eps)]
            return eps[0], eps[-1], returns
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            before_job = pool.submit(lambda: runs.rollout_episodes(policy, params0, task, k_before)[0])
            if adaptation == "within_episode":
                after = runs.rollout_episode(policy, seed_index, task, k_after)
                before = before_job.result()
                return before, after, [("episode without updates", before.total), ("episode updating every "
                                       f"{config.evaluation.within_episode_chunk} steps", after.total)]
            if adaptation != "none":
                params, measured = policy.adapt(seed_index, task, k_adapt, steps, max_steps=MAX_ADAPT_STEPS)
            before = before_job.result()  # its rollout compiled: the "after" episode reuses it
        if adaptation == "none":
            return before, before, [("episode", before.total)]
        after = runs.rollout_episodes(policy, params, task, k_after)[0]
    if adaptation == "inner_steps":
        returns = [(f"support batch after {i} inner steps", float(r)) for i, r in enumerate(measured)]
    else:
        returns = [(f"round {i + 1} (after {i} updates)", float(r)) for i, r in enumerate(measured)]
    returns.append((f"episode after {steps} {UNITS[adaptation]}s", after.total))
    return before, after, returns


def try_task(cache: RunCache, run_dir: str, method, physics: dict, inverted, steps, seed_index=0, key=0,
             out_dir: Optional[str] = None, suite=None) -> dict:
    """Adapt `method` of the run (training seed `seed_index`) to the task the controls describe
    and roll it out, before and after adaptation.

    `steps` units of adaptation (`UNITS`): MAML inner steps and test-time updates
    (`MethodPolicy.adapt`), or context episodes (in_context: the carry kept through `steps`
    episodes, then the measured one); test_time_within_episode takes 0 (its "after" episode
    updates the weights during the episode, its "before" one does not); non-adaptive methods 0.
    `suite` (None: the run's) chooses the task's suite among `task_suites`: the controls' physics
    with that suite's switch, goal and observation mode (its other parts drawn from its test
    split with the episode seed).

    Returns a dict: `returns` (list of `(label, return)`: the return measured after each
    adaptation step, then the final episode), `before` / `after` (episode returns),
    `gif_before` / `gif_after` (paths of the animations), `seconds` (wall time) and `text`.
    """
    t0 = time.perf_counter()
    physics = check_physics(physics, inverted)
    config = rundir.load_run_config(run_dir)
    from benchmarks.runs import ADAPTATION  # noqa: PLC0415

    method = check_method(method, config.methods)
    adaptation = ADAPTATION[method]
    method, steps, seed_index, key = check_try_inputs(method, config.methods, adaptation, steps, seed_index,
                                                      config.num_seeds, key)
    suite = check_suite(suite, config.suite)
    out_dir = out_dir or tempfile.mkdtemp(prefix="ssm-metarl-app-")
    prune_outputs(out_dir)
    before, after, returns = episodes(cache, run_dir, config, method, physics, steps, seed_index, key, suite)
    title = f"{method}, seed index {seed_index}" + ("" if suite == config.suite else f", {suite} task")
    gif_before = _gif(before, f"{title}: before adaptation", output_path(out_dir, "before", ".gif"))
    gif_after = _gif(after, f"{title}: after {steps} {UNITS[adaptation] or 'step'}(s)"
                     if steps_before_episode(adaptation) else
                     (f"{title}: updating during the episode" if adaptation == "within_episode" else title),
                     output_path(out_dir, "after", ".gif"))
    seconds = time.perf_counter() - t0
    text = (f"{method} on {'inverted' if physics['inverted'] else 'normal'}-force {suite} task: return "
            f"{before.total:.0f} before, {after.total:.0f} after adaptation ({seconds:.1f} s)")
    return {"returns": [(label, float(r)) for label, r in returns], "before": float(before.total),
            "after": float(after.total), "gif_before": gif_before, "gif_after": gif_after,
            "seconds": seconds, "text": text}


def compare(cache: RunCache, run_dir: str, num_tasks, seed, out_dir: Optional[str] = None) -> dict:
    """Every method of the run on `num_tasks` held-out test tasks per training seed drawn with
    `seed` (`benchmarks.evaluation.eval_key(seed, s)`, as the benchmark draws them with its
    seed): returns `headers`, `rows` (`results_table` of the benchmark's own entries), `plot`
    (the benchmark's bar plot with 95% seed-level intervals), `methods` (the entries) and `text`."""
    num_tasks, seed = check_compare_inputs(num_tasks, seed)
    config = rundir.load_run_config(run_dir)
    if seed > 2**32 - config.num_seeds:
        raise AppError(f"task seed must be <= {2**32 - config.num_seeds}, got {seed}")
    from benchmarks import compile_time, plotting  # noqa: PLC0415
    from benchmarks.methods import measure  # noqa: PLC0415
    from benchmarks.results import json_safe, method_results, per_task_rows  # noqa: PLC0415

    t0 = time.perf_counter()
    cfg = config.with_values({"seed": seed, "evaluation.num_tasks": num_tasks, "methods": list(config.methods)})
    out_dir = out_dir or tempfile.mkdtemp(prefix="ssm-metarl-app-")
    prune_outputs(out_dir)
    with cache.lock:
        policies = cache.policies(run_dir, config.methods)
        trainers = {p.method.trainer: p.trainer for p in policies.values()}
        states = {p.method.trainer: p.states for p in policies.values()}
        with compile_time.fast_compile(config.fast_compile):  # as the run compiled its evaluation
            measurement = measure(cfg, trainers, states)
        methods = json_safe(method_results(cfg, trainers, measurement))
    rows = [{k: str(v) for k, v in r.items()} for r in per_task_rows(cfg, measurement)]
    plot = output_path(out_dir, "compare", ".png")
    plotting.plot_returns(methods, rows, plot)
    headers, table = results_table(methods)
    seconds = time.perf_counter() - t0
    return {"headers": headers, "rows": table, "plot": plot, "methods": methods, "seconds": seconds,
            "text": f"{len(methods)} methods on {num_tasks} held-out tasks x {config.num_seeds} training seeds "
                    f"(task seed {seed}) in {seconds:.1f} s"}


# ------------------------------------------------------------------------------------ training
PRESETS = ("quick", "default")
_PERCENT = re.compile(r"(\d{1,3})%\|")


def interruptible_command(module: str, args: list, python: str = sys.executable, prelude: str = "") -> list:
    """The argv of `python -m module *args` for a child that must stop on SIGINT (the page's
    Cancel, a test's Ctrl-C). A child inherits an ignored SIGINT: a shell starts background
    jobs (`cmd &`) with SIGINT ignored, and Python then keeps it ignored. This child puts
    Python's default handler back first (`signal.default_int_handler`: KeyboardInterrupt), then
    runs `prelude` (Python code, e.g. a test's patch) and the module as `__main__`."""
    code = (f"import runpy, signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n{prelude}\n"
            f"sys.argv[0] = {module!r}\nrunpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n")
    return [python, "-c", code, *args]


class TrainJob:
    """`python -m benchmarks.cartpole [--quick] --out RUNS_ROOT/NAME` in a subprocess
    (`interruptible_command`, so that Cancel works whatever this process's SIGINT disposition).

    `progress()` is `(fraction in [0, 1], status line, last log lines)`: the fraction counts
    trained trainers (stdout's "trained" lines) plus the current tqdm bar's percentage, with the
    evaluation as one more stage. `cancel()` sends SIGINT (the command's Ctrl-C: it stops at
    the next point Python regains control, keeping its checkpoints resumable; results.json is
    written only when a run completes, atomically), then SIGKILL if it has not ended within
    `grace_s`.
    """

    def __init__(self, runs_root: str, name, preset, python: str = sys.executable):
        name = name.strip() if isinstance(name, str) else name
        if not isinstance(name, str) or not RUN_NAME.match(name):
            raise AppError(f"run name must be 1-64 letters, digits, '_', '.' or '-' (not starting with "
                           f"'.', '_' or '-'), got {name!r}")
        preset = check_choice("configuration", preset, PRESETS)
        root = os.path.realpath(runs_root)
        out = os.path.join(root, name)
        if os.path.exists(out):
            raise AppError(f"{name!r} already exists under {root!r}; choose another run name")
        from benchmarks.methods import trainer_names  # noqa: PLC0415
        from benchmarks.config import BenchmarkConfig  # noqa: PLC0415

        config = BenchmarkConfig.quick_preset() if preset == "quick" else BenchmarkConfig()
        self.stages = len(trainer_names(config.methods)) + 1
        os.makedirs(root, exist_ok=True)
        self.name, self.out = name, out
        args = ["--out", out] + (["--quick"] if preset == "quick" else [])
        self.argv = interruptible_command("benchmarks.cartpole", args, python)
        self.lines = collections.deque(maxlen=40)
        self.trained = 0
        self.percent = 0
        self.evaluating = False
        self.cancelled = False
        self.listed = False  # the page has refreshed its run list since the job finished
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.argv, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1)
        self.started = time.time()
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._readers:
            t.start()

    def _read_stdout(self):
        for line in self.proc.stdout:
            line = line.rstrip()
            self.lines.append(line)
            if "] trained:" in line:
                self.trained += 1
                self.percent = 0
            elif line.startswith("evaluating on"):
                self.evaluating = True

    def _read_stderr(self):
        buf = ""
        while True:
            chunk = self.proc.stderr.read(256)
            if not chunk:
                break
            buf = (buf + chunk)[-4096:]
            parts = re.split(r"[\r\n]", buf)
            for p in parts[:-1]:
                m = _PERCENT.findall(p)
                if m:
                    self.percent = int(m[-1])
                elif p.strip():
                    self.lines.append(p.strip())
            buf = parts[-1]

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.poll()

    def progress(self) -> tuple:
        rc = self.returncode
        done = self.trained + (1 if self.evaluating else 0)
        fraction = min(1.0, (done + (0 if self.evaluating else self.percent / 100)) / self.stages)
        elapsed = time.time() - self.started
        if rc is None:
            status = (f"{self.name}: running ({elapsed:.0f} s; "
                      + ("evaluating" if self.evaluating else f"training {self.trained + 1}/{self.stages - 1}") + ")")
        elif rc == 0:
            fraction, status = 1.0, f"{self.name}: finished in {elapsed:.0f} s; it is in the run list"
        elif self.cancelled or rc in (130, -signal.SIGINT, -signal.SIGKILL):
            status = (f"{self.name}: cancelled; its checkpoints are kept (continue it with "
                      f"python -m benchmarks.cartpole --resume {self.out})")
        else:
            status = f"{self.name}: failed (exit status {rc}): {self.lines[-1] if self.lines else ''}"
        return fraction, status, "\n".join(self.lines)

    def cancel(self, grace_s: float = 30.0) -> None:
        if self.returncode is not None:
            return
        self.cancelled = True
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Jobs:
    """Training jobs by id (a session keeps the ids of its own jobs in its `gr.State`)."""

    def __init__(self):
        self.lock = threading.Lock()
        self._jobs = {}

    def start(self, runs_root: str, name, preset) -> str:
        with self.lock:
            job = TrainJob(runs_root, name, preset)
            job_id = f"{job.name}-{int(job.started * 1000)}"
            self._jobs[job_id] = job
            return job_id

    def get(self, job_id) -> Optional[TrainJob]:
        with self.lock:
            return self._jobs.get(job_id)

    def cancel_all(self) -> None:
        with self.lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()
