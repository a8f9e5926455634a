"""Command line of `python -m benchmarks.cartpole`, shaped like the seeds' main.py.

`parse_args(argv)` returns `(config, options)`: a validated `BenchmarkConfig` and the run
options (out dir, resume / eval-only directories). Each config flag sets one field of the nested
config (`FLAG_PATHS`, the one table of flag names); a bad value exits with status 2 and a
one-line message naming the flag the user typed. Parsing and every check import no JAX, flax
or gymnax (this module and the config modules it reads are jax-free), so `--help` and usage
errors answer at once.

`run_main(argv, run)` is the whole command: parse, then `run(config, options)`; a runtime fault
prints one line and exits 1 (`--debug`: the full traceback), Ctrl-C one line and exit 130,
leaving the run resumable.

Before it reads or checks a run directory, parsing puts back a run that an interrupted
`--overwrite` had set aside (`benchmarks.rundir.recover`, with a note on stderr), and `--resume`
refuses a run whose checkpoints are gone (`benchmarks.rundir.check_resumable`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import socket
import sys
import textwrap
import threading
from typing import Callable, Optional

from benchmarks import rundir
from benchmarks.config import ENV_NAMES, MAX_SEED, MODES, BenchmarkConfig, config_file_format, read_config_file
from benchmarks.methods import REGISTRY, trainer_names
from benchmarks.trainers import sections_used, trainer_sections
from envs.suites import BASE_ENV, ENV_SUITES, SUITE_NAMES, SUITES
from ssm_jax.validation import check_choice, check_int

PROG = "python -m benchmarks.cartpole"
DEFAULT_OUT = os.path.join("results", "cartpole")

#: Each config flag -> the field path it sets (`BenchmarkConfig.with_values`). The seeds' flag
#: names: --num_epochs counts MAML meta-updates, --num_episodes is the seeds' name for the PPO
#: iterations of non_adaptive.
FLAG_PATHS = {
    "mode": "mode",
    "env_name": "env_name",
    "suite": "suite",
    "methods": "methods",
    "num_epochs": "maml.num_meta_updates",
    "tasks_per_epoch": "maml.tasks_per_update",
    "inner_lr": "maml.rl.inner_lr",
    "outer_lr": "maml.rl.outer_lr",
    "num_inner_steps": "maml.rl.num_inner_steps",
    "first_order": "maml.rl.first_order",
    "num_episodes": "non_adaptive.total_iterations",
    "ppo_iterations": "non_adaptive.total_iterations",
    "in_context_iterations": "in_context.total_iterations",
    "eval_tasks": "evaluation.num_tasks",
    "seed": "seed",
    "num_seeds": "num_seeds",
    "chunk_size": "chunk_size",
    "checkpoint_every": "checkpoint_every",
}

#: `--suite all`: one run per suite, into `--out/<suite>/`.
ALL_SUITES = "all"

#: Config flags that --eval_only accepts (evaluation settings).
EVAL_ONLY_FLAGS = ("eval_tasks", "methods")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """out: output directory; resume: previous run's out dir to continue; eval_only with
    checkpoint: the run dir (or its checkpoints/ dir) whose saved params are evaluated;
    overwrite: a fresh run may replace the run already in out (else it is refused);
    debug: a runtime fault shows its full traceback (else one line); all_suites (`--suite
    all`): run the config once per suite (`envs.suites.SUITE_NAMES`) into `out/<suite>/`;
    compile_cache: JAX's persistent compilation cache directory (`compile_cache_dir`), None:
    off; devices: how many devices (`--devices`) training spreads over (None: one, the default
    device; every device of every process in a multi-process run); distributed: the checked
    `jax.distributed.initialize` arguments of a multi-process run (`--coordinator_address`,
    `--num_processes`, `--process_id` or their environment variables,
    `ssm_jax.sharding.distributed_settings`), None for one process."""

    out: str
    resume: Optional[str]
    eval_only: bool
    checkpoint: Optional[str]
    overwrite: bool = False
    tensorboard: bool = False
    print_config: Optional[str] = None
    debug: bool = False
    all_suites: bool = False
    compile_cache: Optional[str] = None
    devices: Optional[int] = None
    distributed: Optional[dict] = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            textwrap.fill("Meta-RL benchmark on CartPole task distributions: meta-train on the "
                          "train split of a suite (--suite, listed below), evaluate on its held-out "
                          "test tasks (standard: longer/heavier poles, half with inverted force), "
                          "print a table, write results.json and PNG plots into --out.", 96) + "\n\nmethods:\n"
            + "\n".join(textwrap.fill(m.label, 96, initial_indent=f"  {m.name:18s} ",
                                       subsequent_indent=" " * 21) for m in REGISTRY)
            + "\n\nsuites (--suite):\n"
            + "\n".join(textwrap.fill(x.description, 96, initial_indent=f"  {x.name:18s} ",
                                       subsequent_indent=" " * 21) for x in SUITES.values())))
    d = BenchmarkConfig()
    a = p.add_argument
    a("--mode", choices=MODES, default=None,
      help=f"meta_rl: every method; policy_gradient: the non-meta PPO baseline (non_adaptive) "
           f"alone [default {d.mode}]")
    a("--env_name", default=None,
      help=f"gymnax environment with a task distribution (envs.TASK_ENVS): {', '.join(ENV_NAMES)}; "
           f"environments other than CartPole-v1 run the standard suite; an environment's own "
           f"training settings (benchmarks.config.ENV_VALUES) apply under --config and the flags "
           f"[default {d.env_name}]")
    a("--suite", default=None, metavar="NAME",
      help=f"evaluation suite: {', '.join(SUITE_NAMES)} (listed below; envs.suites), or "
           f"{ALL_SUITES}: one run per suite into --out/<suite>/ and one summary table "
           f"[default {d.suite}]")
    a("--methods", default=None,
      help="comma-separated subset of the mode's methods to run [default: on the standard suite "
           "the six it has always run, on the other suites every method (benchmarks.config."
           "default_methods); policy_gradient mode: non_adaptive]")
    a("--num_epochs", type=int, default=None,
      help=f"MAML meta-updates (outer iterations) [default {d.maml.num_meta_updates}]")
    a("--tasks_per_epoch", type=int, default=None,
      help=f"train tasks per MAML meta-update [default {d.maml.tasks_per_update}]")
    a("--inner_lr", type=float, default=None,
      help=f"MAML inner step size (initial value of the learned per-parameter step sizes) "
           f"[default {d.maml.rl.inner_lr}]")
    a("--outer_lr", type=float, default=None, help=f"MAML outer Adam step size [default {d.maml.rl.outer_lr}]")
    a("--num_inner_steps", type=int, default=None,
      help=f"MAML inner policy-gradient steps, in training and for maml_adapted "
           f"[default {d.maml.rl.num_inner_steps}]")
    fo = p.add_mutually_exclusive_group()
    default_order = "first" if d.maml.rl.first_order else "second"
    fo.add_argument("--first_order", dest="first_order", action="store_true", default=None,
                    help="first-order MAML meta-gradient (second-order terms dropped)"
                         + (" [this is the default]" if default_order == "first" else ""))
    fo.add_argument("--second_order", dest="first_order", action="store_false",
                    help="full second-order MAML meta-gradient (LVC estimator)"
                         + (" [this is the default]" if default_order == "second" else
                            f" [default: {default_order} order]"))
    a("--num_episodes", type=int, default=None,
      help="the seeds' name for --ppo_iterations (policy-gradient training of non_adaptive)")
    ppo = d.non_adaptive
    a("--ppo_iterations", type=int, default=None,
      help=f"PPO iterations of non_adaptive ({ppo.num_tasks} tasks x {ppo.num_envs} envs x "
           f"{ppo.num_steps} steps each) [default {ppo.total_iterations}]")
    a("--in_context_iterations", type=int, default=None,
      help=f"PPO iterations of the in_context (RL^2) agent [default {d.in_context.total_iterations}]")
    a("--eval_tasks", type=int, default=None,
      help=f"held-out test tasks per seed (>= 256 for the reported table) [default {d.evaluation.num_tasks}]")
    a("--seed", type=int, default=None,
      help=f"first seed; seeds are seed..seed+num_seeds-1, so 0 <= seed <= 2**32 - num_seeds "
           f"({MAX_SEED + 1} - num_seeds; each seed is a uint32) [default {d.seed}]")
    a("--num_seeds", type=int, default=None, help=f"seeds per method, vmapped in training [default {d.num_seeds}]")
    a("--chunk_size", type=int, default=None,
      help=f"iterations per jitted chunk (one progress line each) [default {d.chunk_size}]")
    a("--checkpoint_every", type=int, default=None,
      help=f"save a checkpoint every N iterations (and at the end) [default {d.checkpoint_every}]")
    a("--out", default=None,
      help=f"output directory (results.json, plots, checkpoints/) [default {DEFAULT_OUT}; with "
           f"--eval_only, the checkpoint's run directory + /eval]; a directory that already "
           f"holds a run is refused unless --overwrite is given")
    a("--overwrite", action="store_true",
      help="replace the run (results, config and checkpoints) already in --out")
    a("--config", metavar="FILE", default=None,
      help="a TOML (.toml) or JSON (.json) file setting any subset of the config by field path "
           "(nested tables such as [maml.rl] with inner_lr = 0.05, or dotted keys); flags "
           "override it; --print_config shows every field")
    a("--print_config", nargs="?", const="", default=None, choices=("", "toml", "json"), metavar="FORMAT",
      help="print the full effective config (after --quick, --config and flags) as a config file "
           "and exit: FORMAT toml or json [default: --config's format, else toml]")
    a("--tensorboard", action="store_true",
      help="also log training metrics for TensorBoard into --out/tensorboard/<trainer>/ (needs the "
           "'tensorboard' extra: pip install -e '.[tensorboard]'); a CSV per trainer is always "
           "written to --out/metrics/<trainer>.csv")
    a("--quick", action="store_true",
      help="tiny smoke-test budgets (< 2 minutes; numbers are not meaningful)")
    a("--resume", metavar="DIR", default=None,
      help="continue the run in DIR (its config.json and checkpoints/) from the last complete checkpoint")
    a("--eval_only", action="store_true", help="evaluate saved params only (needs --checkpoint)")
    a("--checkpoint", metavar="DIR", default=None,
      help="with --eval_only: a run directory (or its checkpoints/ dir) to load the final params from")
    a("--devices", metavar="N", default=None,
      help="spread training over the first N devices (jax.sharding): the seeds, then each "
           "trainer's tasks, split over them; results equal one device's up to float "
           "reassociation. On a CPU, make N host devices first with "
           "XLA_FLAGS=--xla_force_host_platform_device_count=N [default: 1]")
    a("--coordinator_address", metavar="HOST:PORT", default=None,
      help="a multi-process run (jax.distributed): the address of process 0; start the same "
           "command once per process with --num_processes and --process_id (or set "
           "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). Training spreads over "
           "every device of every process; process 0 prints and writes the run directory, which "
           "must be on a file system every process sees")
    a("--num_processes", metavar="N", default=None, help="a multi-process run: how many processes")
    a("--process_id", metavar="I", default=None, help="a multi-process run: this process's id, 0 .. N-1")
    a("--debug", action="store_true",
      help="show the full traceback of a runtime error (default: one line)")
    add_compile_cache_flag(p)
    return p


def add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
    """`--compile_cache DIR|none` on `parser` (this command's and `python -m benchmarks.rollout`'s),
    read with `compile_cache_dir`."""
    parser.add_argument(
        "--compile_cache", metavar="DIR|none", default=None,
        help="JAX's persistent compilation cache: a later command that compiles the same programs "
             "reads them from DIR instead of compiling them again (results are the same); 'none' "
             "turns it off [default: $JAX_COMPILATION_CACHE_DIR if set, else "
             "$XDG_CACHE_HOME/ssm-metarl-jax/jax, else ~/.cache/ssm-metarl-jax/jax]")


#: `--compile_cache none`: no persistent compilation cache.
NO_COMPILE_CACHE = "none"


def compile_cache_dir(value: Optional[str], environ=os.environ) -> Optional[str]:
    """The absolute cache directory `--compile_cache value` asks for (None for 'none'). Without
    the flag (value None): `$JAX_COMPILATION_CACHE_DIR` if set (JAX's own variable), else
    `$XDG_CACHE_HOME/ssm-metarl-jax/jax` (an absolute XDG_CACHE_HOME), else
    `~/.cache/ssm-metarl-jax/jax`. ValueError naming the flag for an empty value or a path that
    exists and is not a directory; the directory itself is created when a run starts."""
    if value is None:
        xdg = environ.get("XDG_CACHE_HOME", "")
        base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
        value = environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(base, "ssm-metarl-jax", "jax")
    if value == NO_COMPILE_CACHE:
        return None
    if not value.strip() or "\x00" in value:
        raise ValueError(f"--compile_cache must be a directory or {NO_COMPILE_CACHE!r}, got {value!r}")
    path = os.path.abspath(os.path.expanduser(value))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--compile_cache {value!r} is not a directory (give a directory or {NO_COMPILE_CACHE!r})")
    return path


def _flag_message(err: ValueError, given: list) -> str:
    """The message of a config error with its leading field path replaced by the flag (among
    `given`, else any flag of that path) that sets it."""
    msg = str(err)
    for flag in list(given) + [f for f in FLAG_PATHS if f not in given]:
        path = FLAG_PATHS[flag]
        if msg.startswith(path + " "):
            return f"--{flag}{msg[len(path):]}"
    return msg


def _check_flags_apply(config: BenchmarkConfig, given: list) -> None:
    """Reject flags of trainers this run does not train (they would be silently ignored)."""
    running = sections_used(trainer_names(config.methods))
    for flag in given:
        section = FLAG_PATHS[flag].partition(".")[0]
        if section in trainer_sections() and section not in running:
            raise ValueError(f"--{flag} has no effect: this run trains no {section} model "
                             f"(methods {list(config.methods)})")


def parse_args(argv=None) -> tuple[BenchmarkConfig, RunOptions]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        distributed = _distributed(args)
        # in a multi-process run only process 0 recovers an interrupted run directory
        config, options = _build(args, recover=is_primary(distributed))
        options = dataclasses.replace(options, compile_cache=compile_cache_dir(args.compile_cache),
                                      devices=_devices(args.devices), distributed=distributed)
        if args.print_config is not None:
            fmt = args.print_config or (config_file_format(args.config) if args.config else "toml")
            return config, dataclasses.replace(options, print_config=fmt)
        if args.tensorboard:
            options = dataclasses.replace(options, tensorboard=_check_tensorboard(options))
        return config, options
    except ValueError as err:  # RunDirError included
        parser.error(str(err))
        raise  # unreachable


def _devices(value: Optional[str]) -> Optional[int]:
    """`--devices N` as a positive int (None if not given); whether N devices exist is checked
    when the run starts JAX (`ssm_jax.sharding.check_devices`)."""
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"--devices must be a positive int, got {value!r}") from None
    return check_int("--devices", number)


def is_primary(distributed: Optional[dict]) -> bool:
    """Whether this process writes the run directory and prints: the only process of a
    single-process run, process 0 of a multi-process one (`distributed`: `RunOptions.distributed`)."""
    return distributed is None or distributed["process_id"] == 0


def _distributed(args) -> Optional[dict]:
    """The multi-process settings of `--coordinator_address`/`--num_processes`/`--process_id`
    (else the environment; None: one process); checked before JAX starts."""
    from ssm_jax.sharding import distributed_settings  # noqa: PLC0415 (imports no JAX)

    try:
        settings = distributed_settings(args.coordinator_address, args.num_processes, args.process_id)
    except ValueError as err:  # named as the flags are
        message = str(err)
        flag = message.startswith(("coordinator_address", "num_processes", "process_id"))
        raise ValueError(f"--{message}" if flag else message) from None
    if settings is None or settings["num_processes"] == 1:
        return None  # one process: nothing to join
    if args.eval_only:
        raise ValueError("--eval_only evaluates on one device: run it as a single process "
                         "(without --coordinator_address/--num_processes/--process_id)")
    return settings


def _check_tensorboard(options: RunOptions) -> bool:
    """--tensorboard needs a training run and tensorboardX (the 'tensorboard' extra)."""
    if options.eval_only:
        raise ValueError("--tensorboard logs training; --eval_only trains nothing")
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("tensorboardX") is None:
        raise ValueError("--tensorboard needs tensorboardX: pip install -e '.[tensorboard]'")
    return True


def _build(args, recover: bool = True) -> tuple[BenchmarkConfig, RunOptions]:
    """The config and options of the parsed `args`, with the run directories checked;
    `recover`: first bring back a run an interrupted --overwrite set aside (`rundir.recover`)."""
    if args.eval_only and not args.checkpoint:
        raise ValueError("--eval_only needs --checkpoint DIR (a previous run's directory)")
    if args.checkpoint and not args.eval_only:
        raise ValueError("--checkpoint is only used with --eval_only (use --resume DIR to continue training)")
    if args.resume and args.eval_only:
        raise ValueError("--resume and --eval_only are exclusive")
    if args.quick and (args.resume or args.eval_only):
        raise ValueError("--quick sets training budgets; it cannot be combined with --resume or --eval_only")
    given = [f for f in FLAG_PATHS if getattr(args, f) is not None]
    if args.suite is not None:
        check_choice("--suite", args.suite, SUITE_NAMES + (ALL_SUITES,))
    if "num_episodes" in given and "ppo_iterations" in given:
        raise ValueError("give --num_episodes or --ppo_iterations, not both")
    values = {f: getattr(args, f) for f in given}
    if "methods" in values:
        values["methods"] = tuple(m.strip() for m in values["methods"].split(",") if m.strip())
    source = args.resume or args.checkpoint
    if source:
        flag = "--resume" if args.resume else "--checkpoint"
        run_dir = rundir.run_dir_of(source)
        if os.path.exists(run_dir) and not os.path.isdir(run_dir):
            raise ValueError(f"{flag} {source!r} is not a directory (give a run directory)")
        if not os.path.isdir(run_dir):
            raise ValueError(f"{flag} directory {run_dir!r} does not exist")
        if recover:
            rundir.recover(run_dir, log=_note)
        config = rundir.load_run_config(run_dir)
        if args.config:
            raise ValueError(f"--config sets up a new run; {'--resume' if args.resume else '--eval_only'} "
                             f"uses the run's own config.json")
        if args.resume and (given or args.quick):
            raise ValueError("--resume continues a run with its saved config.json; do not pass other config flags")
        if args.eval_only:  # evaluation settings may be changed
            bad = [f"--{f}" for f in given if f not in EVAL_ONLY_FLAGS]
            if bad:
                raise ValueError(f"--eval_only accepts only {'/'.join('--' + f for f in EVAL_ONLY_FLAGS)}, "
                                 f"got {bad}")
            config = _with_flags(config, values, given)
        if args.resume:
            if args.out and os.path.abspath(args.out) != run_dir:
                raise ValueError(f"--resume continues the run in {run_dir!r} and writes there; "
                                 f"drop --out (got {args.out!r})")
            if args.overwrite:
                raise ValueError("--resume continues a run; it cannot be combined with --overwrite")
            rundir.check_resumable(run_dir, trainer_names(config.methods))
            return config, RunOptions(out=run_dir, resume=run_dir, eval_only=False, checkpoint=None,
                                      debug=args.debug)
        out = args.out or os.path.join(run_dir, "eval")
        rundir.check_eval_out(out, run_dir)
        rundir.check_out(out, overwrite=args.overwrite, what="run or evaluation")
        return config, RunOptions(out=out, resume=None, eval_only=True, checkpoint=run_dir,
                                  overwrite=args.overwrite, debug=args.debug)
    if values.get("mode") == "policy_gradient" and "methods" not in values:
        values["methods"] = ("non_adaptive",)
    all_suites = values.get("suite") == ALL_SUITES
    if all_suites:
        if args.print_config is not None:
            raise ValueError(f"--print_config prints one run's config; give one --suite of {list(SUITE_NAMES)}")
        del values["suite"]
    file_paths = read_config_file(args.config) if args.config else {}
    env_name = values.get("env_name", file_paths.get("env_name"))
    if env_name not in ENV_NAMES:  # a bad name is refused below, naming its flag or file
        env_name = BenchmarkConfig.env_name
    base = BenchmarkConfig.quick_preset(env_name) if args.quick else BenchmarkConfig().with_env(env_name)
    if args.config:
        base = with_config_file(base, args.config, file_paths, flags=values)
    config = _with_flags(base, values, given)
    _check_flags_apply(config, given)
    if all_suites and config.env_name != BASE_ENV:
        raise ValueError(f"--suite {ALL_SUITES} runs every suite on {BASE_ENV}; {config.env_name} runs "
                         f"the suites {list(ENV_SUITES[config.env_name])}")
    out = args.out or DEFAULT_OUT
    if all_suites:
        check_all_suites_out(out, overwrite=args.overwrite, recover=recover)
    elif args.print_config is None:
        if recover and os.path.isdir(out):
            rundir.recover(out, log=_note)
        rundir.check_out(out, overwrite=args.overwrite, what="run")
    return config, RunOptions(out=out, resume=None, eval_only=False, checkpoint=None,
                              overwrite=args.overwrite, debug=args.debug, all_suites=all_suites)


def check_all_suites_out(out: str, overwrite: bool, recover: bool = True) -> None:
    """`--suite all` writes one run per suite into `out/<suite>/`: `out` must not hold a run
    itself and every `out/<suite>/` must be free (or replaceable with `overwrite`); `recover`:
    first bring back what an interrupted --overwrite set aside in each."""
    if rundir.holds_run(out):
        raise rundir.RunDirError(f"--suite {ALL_SUITES} writes one run per suite into --out/<suite>/, "
                                 f"but --out {out!r} holds a run itself; choose another --out")
    for name in SUITE_NAMES:
        suite_out = os.path.join(out, name)
        if recover and os.path.isdir(suite_out):
            rundir.recover(suite_out, log=_note)
        rundir.check_out(suite_out, overwrite=overwrite, what="run")


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def with_config_file(config: BenchmarkConfig, path: str, paths: dict,
                     flags: Optional[dict] = None) -> BenchmarkConfig:
    """`config` with the settings `paths` read from the config file `path`
    (`benchmarks.config.read_config_file`, read once by the caller); an unknown field or a bad
    value is a ValueError naming the file and the field path. A file setting mode
    "policy_gradient" without methods (and no --methods flag) runs non_adaptive."""
    paths = dict(paths)
    if paths.get("mode") == "policy_gradient" and "methods" not in paths and "methods" not in (flags or {}):
        paths["methods"] = ["non_adaptive"]
    try:
        return config.with_values(paths)
    except ValueError as err:
        raise ValueError(f"--config {path!r}: {err}") from None


def _with_flags(config: BenchmarkConfig, values: dict, given: list) -> BenchmarkConfig:
    """`config` with each flag's value at its field path; errors name the flag."""
    try:
        return config.with_values({FLAG_PATHS[f]: v for f, v in values.items()})
    except ValueError as err:
        raise ValueError(_flag_message(err, given)) from None


# ------------------------------------------------------------------------------------ running
#: Seconds a Ctrl-C waits for the run to stop by itself (KeyboardInterrupt reaches Python only
#: between XLA calls) before the process is ended; checkpoints are written atomically, so an
#: ended run resumes like one stopped cleanly.
INTERRUPT_GRACE_S = 2.0


def one_line(err: BaseException) -> str:
    """The first line of `err`'s message, prefixed with its type unless it is a ValueError (the
    project's own errors: bad values, run directories, checkpoints)."""
    text = str(err).strip().splitlines()
    text = text[0] if text else ""
    if isinstance(err, ValueError) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _interrupted_message(options: RunOptions) -> str:
    if options.eval_only:
        return f"{PROG}: interrupted; the evaluation wrote nothing"
    return (f"{PROG}: interrupted; the run in {options.out!r} keeps its checkpoints: continue it "
            f"with --resume {options.out}")


@contextlib.contextmanager
def _interrupt_watchdog(message: str):
    """Ends the process with `message` and status 130 if a SIGINT is not handled by Python
    within `INTERRUPT_GRACE_S` (the main thread is inside a long XLA compilation or call).

    The signal's C-level handler writes to a wakeup socket (`signal.set_wakeup_fd`) even while
    the main thread is in C++, and a daemon thread watches it. A KeyboardInterrupt raised where
    Python can only print it (`sys.unraisablehook`: a gc callback) is dropped, the watchdog
    reports it. Only installed on the main thread. Yields a callable that prints `message` once
    (whoever reports first), on a line of its own even while a progress bar is drawn.
    """
    lock = threading.Lock()
    reported = []

    def report():
        from tqdm import tqdm  # noqa: PLC0415 (already imported by a run; parsing does not need it)

        with lock:
            if not reported:
                reported.append(True)
                tqdm.write(message, file=sys.stderr)  # on its own line, clear of a progress bar
                sys.stderr.flush()

    if threading.current_thread() is not threading.main_thread():
        yield report
        return
    done = threading.Event()
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

    def watch():
        while True:
            try:
                data = reader.recv(1)
            except OSError:
                return
            if not data:
                return
            if data[0] == signal.SIGINT:
                break
        if not done.wait(INTERRUPT_GRACE_S):
            report()
            os._exit(130)

    def unraisable(info, hook=sys.unraisablehook):
        # a Ctrl-C that lands in a callback Python cannot raise from (JAX's gc callback) is
        # lost there: the watchdog reports it instead of a traceback
        if not isinstance(info.exc_value, KeyboardInterrupt):
            hook(info)

    threading.Thread(target=watch, name="sigint-watchdog", daemon=True).start()
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield report
    finally:
        done.set()
        sys.unraisablehook = previous_hook
        signal.set_wakeup_fd(previous)
        writer.close()
        reader.close()


def run_main(argv, run: Callable[[BenchmarkConfig, RunOptions], object]) -> int:
    """Parse `argv` (usage errors: exit 2), then `run(config, options)`. Returns the exit
    status: 0, 1 after a runtime fault (one line on stderr; with --debug the exception
    propagates with its traceback), 130 after Ctrl-C (one line; the run stays resumable)."""
    config, options = parse_args(argv)
    if options.print_config:
        sys.stdout.write(config.dumps(options.print_config))
        return 0
    with _interrupt_watchdog(_interrupted_message(options)) as report:
        try:
            run(config, options)
        except KeyboardInterrupt:
            if options.debug:
                raise
            report()
            return 130
        except Exception as err:  # every runtime fault ends in one line
            if options.debug:
                raise
            print(f"{PROG}: error: {one_line(err)} (--debug shows the traceback)", file=sys.stderr)
            return 1
    return 0
