"""Fault injection on a real `python -m benchmarks.cartpole --quick` run (slow).

One chain of processes on one run directory: a fresh run, then `--resume` after each fault.
Ten SIGKILLs at moments a seeded RNG picks from the run's own timeline (during a compilation,
after a training chunk, while a checkpoint is being written, right after one is complete,
during the evaluation), one SIGINT (exit 130, one line), one full disk during a checkpoint
write and one during the results write (simulated by making the write fail with ENOSPC: exit
1, one line, nothing half-written). The last `--resume` completes, and its results.json has the
"methods" numbers of the uninterrupted run (`quick_run` in tests/conftest.py) bit for bit.

The moments are chosen by watching the run (its progress lines and its checkpoint
directories), not by the clock, so they are the same whatever the machine's load. All the
processes share the uninterrupted run's JAX compilation cache, so each resume costs its Python
start-up and tracing, not XLA compilation.
"""

import dataclasses
import json
import os
import queue
import random
import re
import signal
import subprocess
import threading
import time
from typing import Optional

import pytest

from benchmarks import rundir
from benchmarks.app_core import interruptible_command
from benchmarks.config import BenchmarkConfig
from benchmarks.methods import trainer_names
from benchmarks.trainers import TRAINERS

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROG = "python -m benchmarks.cartpole"
KILLS = 10
#: Kinds of the SIGKILLs during training (at distinct events, `_plan`) and during evaluation.
TRAINING_KILLS = ["saving", "saving", "saving", "it", "it", "compile", "saved"]
EVALUATION_KILLS = ["eval", "eval", "eval"]

#: Patches run before the command in the processes that simulate a full disk.
FULL_DISK_AT_CHECKPOINT = """
import errno, os
from orbax.checkpoint._src.handlers import json_checkpoint_handler
async def _full(self, x, directory):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
json_checkpoint_handler.JsonCheckpointHandler._save_fn = _full
"""
FULL_DISK_AT_RESULTS = """
import errno, os
_fsync = os.fsync
def _fsync_results(fd):
    if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith("results.json.tmp-"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return _fsync(fd)
os.fsync = _fsync_results
"""


@dataclasses.dataclass(frozen=True)
class Event:
    """A moment of a run: kind "compile" (a trainer starts compiling its chunk), "it" (a
    training chunk ends at iteration `step`), "saving" / "saved" (checkpoint `step` is being
    written / is complete), "eval" (the `step`-th evaluation progress line)."""

    kind: str
    trainer: str = ""
    step: int = 0


def _iterations(config: BenchmarkConfig, trainer: str) -> int:
    section = {"non_adaptive": config.non_adaptive, "in_context": config.in_context}.get(trainer)
    return section.total_iterations if section is not None else config.maml.num_meta_updates


def _timeline(config: BenchmarkConfig, evaluations: int) -> list:
    """Every event of a run of `config`, in order (`benchmarks.training`'s chunk and
    checkpoint schedule; `evaluations` progress lines of the evaluation)."""
    events = []
    for t in trainer_names(config.methods):
        events.append(Event("compile", t))
        it, n, c, every = 0, _iterations(config, t), config.chunk_size, config.checkpoint_every
        while it < n:
            length = min(c - it % c, n - it)
            it += length
            events.append(Event("it", t, it))
            if it == n or it // every > (it - length) // every:
                events += [Event("saving", t, it), Event("saved", t, it)]
    return events + [Event("eval", step=j) for j in range(1, evaluations + 1)]


def _ahead(timeline: list, config: BenchmarkConfig, run_dir: str) -> list:
    """The events of `timeline` a `--resume` of `run_dir` will go through: the first
    unfinished trainer compiles and continues after its last complete checkpoint; then the rest."""
    for t in trainer_names(config.methods):
        steps = rundir.checkpoint_steps(rundir.checkpoint_dir(run_dir, t))
        if _iterations(config, t) in steps:
            continue
        done = max(steps, default=0)
        first = timeline.index(Event("compile", t))
        return [timeline[first]] + [e for e in timeline[first + 1:] if e.trainer != t or e.step > done]
    return [e for e in timeline if e.kind == "eval"]


@dataclasses.dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    hit: Optional[Event]
    how: str
    seconds_to_exit: float
    wall_s: float


class Watched:
    """A benchmark process whose progress lines and checkpoint directories are watched."""

    def __init__(self, argv: list, env: dict, run_dir: str, patch: str = ""):
        # SIGINT handled as Ctrl-C even when pytest was started with it ignored (`pytest &`)
        cmd = interruptible_command("benchmarks.cartpole", argv, prelude=patch)
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.run_dir = run_dir
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.stdout, self.stderr = [], []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, True), daemon=True).start()
        self.err_thread = threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, False),
                                           daemon=True)
        self.err_thread.start()
        self.evals = -1

    def _pump(self, stream, into, lines):
        for line in stream:
            into.append(line)
            if lines:
                self.lines.put(line)

    def _line_event(self, line: str) -> Optional[Event]:
        m = re.match(r"\[(\w+)[\] ]", line)
        if "evaluating on" in line or (m and "] evaluating " in line):
            self.evals += 1
            return Event("eval", step=self.evals) if self.evals > 0 else None
        if m and "] compiling a chunk" in line:
            return Event("compile", m.group(1))
        it = re.search(r"\] it +(\d+)/", line)
        return Event("it", m.group(1), int(it.group(1))) if (m and it) else None

    def _dir_hit(self, target: Event) -> Optional[str]:
        if target.kind not in ("saving", "saved"):
            return None
        d = rundir.checkpoint_dir(self.run_dir, target.trainer)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return None
        if str(target.step) in names:
            return "saved" if target.kind == "saved" else "saving (missed: right after the save)"
        if target.kind == "saving" and any(n.startswith(f"{target.step}.orbax-checkpoint-tmp") for n in names):
            return "saving"
        return None

    def run(self, target: Optional[Event] = None, sig=signal.SIGKILL, delay: float = 0.0) -> Outcome:
        """Run to the end, or send `sig` at `target` (after `delay` seconds)."""
        hit, how, sent = None, "", None
        while self.proc.poll() is None and target is not None and sent is None:
            try:
                line = self.lines.get(timeout=0.002)
            except queue.Empty:
                line = None
            event = self._line_event(line) if line else None
            found = self._dir_hit(target) or ("line" if event == target else None)
            if found:
                hit, how = target, found
                if delay:
                    time.sleep(delay)
                if self.proc.poll() is None:
                    sent = time.perf_counter()
                    self.proc.send_signal(sig)
        self.proc.wait(timeout=1800)
        self.err_thread.join(timeout=10)
        end = time.perf_counter()
        return Outcome(self.proc.returncode, "".join(self.stdout), "".join(self.stderr), hit, how,
                       end - sent if sent else 0.0, end - self.t0)


def _reports(stderr: str) -> list:
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith(f"{PROG}:")]


def _partial_checkpoints(run_dir: str) -> list:
    root = os.path.join(run_dir, rundir.CHECKPOINTS_DIR)
    return [os.path.join(d, n) for d, dirs, _ in os.walk(root) for n in dirs if "orbax-checkpoint-tmp" in n]


def _plan(timeline: list, rng: random.Random) -> list:
    """The interruptions, in run order: `(signal, event)` for the ten SIGKILLs (the training
    ones at distinct events of the kinds `TRAINING_KILLS`, spread over the whole training) and
    one SIGINT at a compilation among them, then the evaluation kills."""
    training = [e for e in timeline if e.kind != "eval"]
    chosen = []
    for kind in TRAINING_KILLS + ["sigint"]:
        pool = [e for e in training if e.kind == ("compile" if kind == "sigint" else kind)
                and e not in (c for _, c in chosen)]
        chosen.append((signal.SIGINT if kind == "sigint" else signal.SIGKILL, rng.choice(pool)))
    chosen.sort(key=lambda sc: timeline.index(sc[1]))
    evals = sorted(rng.sample([e for e in timeline if e.kind == "eval"], len(EVALUATION_KILLS)),
                   key=timeline.index)
    return chosen + [(signal.SIGKILL, e) for e in evals]


def test_kill_interrupt_and_full_disk_then_resume_give_the_uninterrupted_results(quick_run, tmp_path,
                                                                                 record_property):
    config = BenchmarkConfig.quick_preset()
    assert set(trainer_names(config.methods)) <= set(TRAINERS)
    evaluations = len(re.findall(r"^\[\w+.*\] evaluating ", quick_run.stdout, re.M))
    assert evaluations >= len(EVALUATION_KILLS), quick_run.stdout[-2000:]
    timeline = _timeline(config, evaluations)
    rng = random.Random(19)
    plan = _plan(timeline, rng)
    run_dir = str(tmp_path / "run")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": quick_run.cache, "PYTHONUNBUFFERED": "1"}
    log, resumed_from = [], []
    t_chain = time.perf_counter()

    def launch(patch: str = "") -> Watched:
        argv = ["--quick", "--out", run_dir] if not os.path.exists(run_dir) else ["--resume", run_dir]
        return Watched(argv, env, run_dir, patch)

    def reachable(event: Event) -> Event:
        """`event`, or if the last kill landed past it (the process ran on for a moment after
        the signal), the next event of its kind ahead (else the next one ahead)."""
        ahead = _ahead(timeline, config, run_dir)
        if event in ahead:
            return event
        same = [e for e in ahead if e.kind == event.kind and timeline.index(e) > timeline.index(event)]
        return (same or ahead)[0]

    kills = 0
    for i, (sig, planned) in enumerate(plan):
        if i == 2:         # a full disk while a checkpoint is written
            out = launch(FULL_DISK_AT_CHECKPOINT).run()
            log.append(("full disk at a checkpoint", out.returncode, round(out.wall_s, 1)))
            reports = _reports(out.stderr)
            assert out.returncode == 1 and len(reports) == 1, out.stderr[-3000:]
            assert "cannot write checkpoint step" in reports[0] and "no space left on device" in reports[0]
            assert os.path.join(run_dir, "checkpoints") in reports[0] and "Traceback" not in out.stderr
            assert not _partial_checkpoints(run_dir)
        target = reachable(planned)
        delay = rng.uniform(0.5, 2.0) if sig == signal.SIGINT else (
            rng.uniform(0.0, 2.0) if target.kind in ("compile", "eval") else 0.0)
        out = launch().run(target, sig, delay)
        resumed_from += re.findall(r"resumed from checkpoint at iteration (\d+)", out.stdout)
        log.append((signal.Signals(sig).name, target, out.how, round(delay, 2), out.returncode,
                    round(out.seconds_to_exit, 2), round(out.wall_s, 1)))
        assert out.hit is not None, log                      # every moment is reached
        if sig == signal.SIGINT:   # Ctrl-C: exit 130 within the watchdog's grace, one line
            assert out.returncode == 130, out.stderr[-3000:]
            assert _reports(out.stderr) == [f"{PROG}: interrupted; the run in {run_dir!r} keeps its checkpoints: "
                                            f"continue it with --resume {run_dir}"], out.stderr[-3000:]
            assert "Traceback" not in out.stderr
            record_property("sigint_seconds_to_exit", round(out.seconds_to_exit, 2))
        else:
            kills += out.returncode == -signal.SIGKILL
            assert out.returncode in (0, -signal.SIGKILL), out.stderr[-3000:]
    assert kills == KILLS, log

    before = open(os.path.join(run_dir, "results.json"), "rb").read() if os.path.exists(
        os.path.join(run_dir, "results.json")) else None
    out = launch(FULL_DISK_AT_RESULTS).run()
    log.append(("full disk at results.json", out.returncode, round(out.wall_s, 1)))
    reports = _reports(out.stderr)
    assert out.returncode == 1 and len(reports) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "No space left on device" in reports[0] and os.path.join(run_dir, "results.json") in reports[0]
    after = open(os.path.join(run_dir, "results.json"), "rb").read() if os.path.exists(
        os.path.join(run_dir, "results.json")) else None
    assert after == before and not [n for n in os.listdir(run_dir) if ".tmp-" in n]

    out = launch().run()
    resumed_from += re.findall(r"resumed from checkpoint at iteration (\d+)", out.stdout)
    assert out.returncode == 0, out.stderr[-3000:]
    wall = time.perf_counter() - t_chain
    record_property("fault_chain_wall_s", round(wall, 1))
    record_property("fault_log", repr(log))
    print(f"\nfault chain: {wall:.0f}s wall; the uninterrupted run: {quick_run.wall_s:.0f}s", *log, sep="\n")
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    # really resumed (a silent restart from iteration 0 would also reach the same numbers)
    assert any(int(s) > 0 for s in resumed_from), log
    assert results["methods"] == quick_run.results["methods"]
    assert results["config"] == quick_run.results["config"]
