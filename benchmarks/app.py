"""`python -m benchmarks.app`: a web page (Gradio) to try the benchmark's methods by hand.

    pip install -e '.[app]'
    python -m benchmarks.app --runs_root results       # then open http://127.0.0.1:7860

Tabs (the logic, and every check of what a control feeds in, is `benchmarks.app_core`):

- Try a task: a run's method (of its training seed), the task's physics (pole length and mass,
  cart mass, gravity, push magnitude, inverted force) and the number of adaptation steps
  (MAML inner steps, test-time updates or in-context episodes); Run adapts the method for real
  and shows the return after each step and a GIF of an episode before and after adaptation.
- Compare: every method of the run on N held-out tasks drawn with a seed: the benchmark's
  table and bar plot with 95% seed-level intervals.
- Runs: the chosen run's table, plots and config (results.json, config.json, its PNG plots).
- Train: start `python -m benchmarks.cartpole` (`--quick` or the default configuration) under
  `--runs_root`, with a progress bar and a cancel button; a finished run appears under Runs.

Only directories under `--runs_root` can be opened. A bad value shows a one-line message on the
page (`gr.Error`), never a traceback. Each browser tab has its own state (`gr.State`); the
loaded runs and their compiled functions are shared behind a lock (`app_core.RunCache`). A run
is warmed up in the background (`RunCache.warm_up`: the newest run when the page is built, any
other when it is chosen), so the first Run finds its default method loaded and compiled.
Importing this module imports neither Gradio nor JAX (`build_app` and `main` do).
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import sys
import tempfile

from benchmarks import app_core as core
from benchmarks import rundir

#: Tab labels, in page order.
TABS = ("Try a task", "Compare", "Runs", "Train")


def _guard(fn):
    """Run a page handler; any error becomes a one-line `gr.Error` shown on the page."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import gradio as gr  # noqa: PLC0415

        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:  # every fault ends in a readable message; the page stays usable
            raise gr.Error(core.one_line(err), print_exception=False) from None

    return wrapper


def _named_slider(gr):
    """`gr.Slider(...)` whose range check names the control: Gradio checks a slider's value
    before the handler (and `app_core`'s checks) runs, and its own message does not say which
    slider. The instance's `preprocess` is wrapped (a subclass of a Gradio component would make
    Gradio write a .pyi stub next to this module)."""

    def slider(*args, **kwargs):
        component = gr.Slider(*args, **kwargs)
        check = component.preprocess

        def preprocess(payload):
            try:
                return check(payload)
            except gr.Error as err:
                raise gr.Error(f"{component.label}: {err.message}", print_exception=False) from None

        component.preprocess = preprocess
        return component

    return slider


def _table(headers, rows):
    import pandas as pd  # noqa: PLC0415 - a Gradio dependency

    return pd.DataFrame(rows, columns=headers)


def _progress_html(fraction: float) -> str:
    pct = max(0.0, min(1.0, float(fraction))) * 100
    return (f'<div id="train_progress_bar" style="border:1px solid #888;border-radius:4px;height:18px;">'
            f'<div style="width:{pct:.0f}%;background:#4a7;height:100%;"></div></div>'
            f'<div>{pct:.0f}%</div>')


def build_app(options: core.AppOptions):
    """The page as a `gr.Blocks` (not launched)."""
    root = options.runs_root
    cache, jobs = core.RunCache(), core.Jobs()
    runs = core.list_runs(root)
    if runs:  # the newest run (the page's default) warms up while Gradio loads and serves the page
        cache.warm_up(core.resolve_run(root, runs[0]))
    import gradio as gr  # noqa: PLC0415
    out_dir = tempfile.mkdtemp(prefix="ssm-metarl-app-")

    def no_runs_notice(runs):
        if runs:
            return f"Runs under `{root}`: {len(runs)} finished."
        return (f"**No finished run under `{root}`.** Start one in the **Train** tab "
                f"(`--quick` takes a few minutes); it is listed here when it finishes.")

    @_guard
    def refresh(current=None):
        runs = core.list_runs(root)
        value = current if current in runs else (runs[0] if runs else None)
        return gr.update(choices=runs, value=value), no_runs_notice(runs)

    @_guard
    def on_run(run):
        if not run:
            empty = _table(*core.results_table({}))
            return (gr.update(choices=[], value=None), gr.update(choices=[], value=None), "", "", empty, [], "")
        run_dir = core.resolve_run(root, run)
        config = rundir.load_run_config(run_dir)
        from envs.suites import get_suite  # noqa: PLC0415 - no JAX

        suite = get_suite(config.suite)
        methods = list(config.methods)
        default = core.default_method(methods)
        cache.warm_up(run_dir)
        info = (f"Trained on suite **{suite.name}** ({suite.obs_mode} observations, the policies' "
                f"observation mode): {suite.description} {config.num_seeds} training seed(s). "
                f"Tasks can be drawn from the suites with the same observation mode.")
        summary = core.run_summary(run_dir)
        suites = core.task_suites(config.suite)
        return (gr.update(choices=methods, value=default), gr.update(choices=suites, value=suites[0]), info,
                summary["text"],
                _table(summary["headers"], summary["rows"]), summary["plots"], summary["config"])

    @_guard
    def try_task(run, method, length, masspole, masscart, gravity, force_mag, inverted, steps, seed_index, key,
                 suite=None):
        run_dir = core.resolve_run(root, run)
        physics = {"length": length, "masspole": masspole, "masscart": masscart, "gravity": gravity,
                   "force_mag": force_mag}
        out = core.try_task(cache, run_dir, method, physics, inverted, steps, seed_index, key, out_dir=out_dir,
                            suite=suite)
        returns = _table(["measured", "return"], [[label, round(r, 1)] for label, r in out["returns"]])
        return f"{out['after']:.1f}", returns, out["gif_before"], out["gif_after"], out["text"]

    @_guard
    def compare(run, num_tasks, seed):
        run_dir = core.resolve_run(root, run)
        out = core.compare(cache, run_dir, num_tasks, seed, out_dir=out_dir)
        return _table(out["headers"], out["rows"]), out["plot"], out["text"]

    @_guard
    def train_start(name, preset, job_ids):
        job_id = jobs.start(root, name, preset)
        job = jobs.get(job_id)
        fraction, status, log = job.progress()
        return list(job_ids or []) + [job_id], _progress_html(fraction), status, log

    def job_view(job_ids):
        """`(job, (progress bar, status, log))` of the tab's newest job (None if it has none)."""
        job = jobs.get(job_ids[-1]) if job_ids else None
        if job is None:
            return None, (_progress_html(0.0), "no run started from this page in this tab", "")
        fraction, status, log = job.progress()
        return job, (_progress_html(fraction), status, log)

    def train_poll(job_ids, current=None):
        """`job_view`, and the run list and notice, refreshed once: by the first poll after the
        tab's newest job has finished."""
        job, view = job_view(job_ids)
        listed = (gr.update(), gr.update())
        if job is not None and job.returncode == 0 and not job.listed:
            job.listed = True
            listed = refresh(current)
        return (*view, *listed)

    @_guard
    def train_cancel(job_ids):
        job = jobs.get(job_ids[-1]) if job_ids else None
        if job is None:
            raise core.AppError("no run of this tab to cancel")
        job.cancel()
        return job_view(job_ids)[1]  # a job that had finished is listed by the next poll

    phys = core.PHYSICS
    slider = _named_slider(gr)
    # Gradio's served copies of the page's outputs are deleted after the same hour as the outputs
    with gr.Blocks(title="ssm-metarl-jax", delete_cache=(core.OUTPUT_MAX_AGE_S, core.OUTPUT_MAX_AGE_S)) as demo:
        gr.Markdown("# ssm-metarl-jax: adapt an SSM policy to a CartPole task by hand\n"
                    f"Runs of `python -m benchmarks.cartpole` under `{root}`.")
        with gr.Row():
            run_dd = gr.Dropdown(choices=[], label="run", elem_id="run", scale=4, allow_custom_value=True)
            refresh_btn = gr.Button("Refresh runs", scale=1)
        notice = gr.Markdown(elem_id="notice")
        with gr.Tab(TABS[0]):
            suite_info = gr.Markdown(elem_id="suite_info")
            with gr.Row():
                method_dd = gr.Dropdown(choices=[], label="method", elem_id="method", allow_custom_value=True)
                suite_dd = gr.Dropdown(choices=[], label="task suite (switch, goal; the run's observation mode)",
                                       elem_id="suite", allow_custom_value=True)
                steps = slider(0, core.MAX_ADAPT_STEPS, value=core.DEFAULT_ADAPT_STEPS, step=1, elem_id="steps",
                                  label="adaptation steps (MAML inner steps, test-time updates or context episodes)")
                seed_index = gr.Number(0, precision=0, label="training seed index", elem_id="seed_index")
                key = gr.Number(0, precision=0, label="episode seed", elem_id="key")
            with gr.Row():
                sliders = [slider(lo, hi, value=default, label=label, elem_id=name)
                           for name, (label, lo, hi, default) in phys.items()]
                inverted = gr.Checkbox(False, label="inverted force", elem_id="inverted")
            run_btn = gr.Button("Run", variant="primary", elem_id="run_button")
            with gr.Row():
                ret_box = gr.Textbox(label="return after adaptation", elem_id="try_return", interactive=False)
                try_status = gr.Textbox(label="status", elem_id="try_status", interactive=False, scale=3)
            returns_df = gr.Dataframe(label="return after each adaptation step", elem_id="try_returns",
                                      interactive=False)
            with gr.Row():
                gif_before = gr.Image(label="before adaptation", type="filepath", elem_id="gif_before",
                                      interactive=False)
                gif_after = gr.Image(label="after adaptation", type="filepath", elem_id="gif_after",
                                     interactive=False)
        with gr.Tab(TABS[1]):
            with gr.Row():
                n_tasks = gr.Number(16, precision=0, label=f"held-out tasks per training seed (2-{core.MAX_COMPARE_TASKS})",
                                    elem_id="n_tasks")
                task_seed = gr.Number(1000, precision=0, label="task seed", elem_id="task_seed")
                compare_btn = gr.Button("Compare", variant="primary", elem_id="compare_button")
            compare_status = gr.Textbox(label="status", interactive=False, elem_id="compare_status")
            compare_df = gr.Dataframe(label="held-out return (mean over seeds x tasks)", interactive=False)
            compare_plot = gr.Image(label="by task kind, 95% seed-level t intervals", type="filepath",
                                    interactive=False)
        with gr.Tab(TABS[2]):
            run_text = gr.Markdown(elem_id="run_text")
            run_df = gr.Dataframe(label="results.json", interactive=False, elem_id="run_table")
            run_plots = gr.Gallery(label="plots", columns=2, height="auto")
            run_config = gr.Code(label="config.json", language="json")
        with gr.Tab(TABS[3]):
            gr.Markdown(f"Start `python -m benchmarks.cartpole` with `--out {root}/NAME`. Cancel stops it "
                        f"like Ctrl-C: its checkpoints stay resumable and no half-written results.json is left.")
            with gr.Row():
                train_name = gr.Textbox("quick-run", label="run name", elem_id="train_name")
                preset = gr.Radio(list(core.PRESETS), value="quick", label="configuration")
                start_btn = gr.Button("Start", variant="primary")
                cancel_btn = gr.Button("Cancel", variant="stop")
            progress = gr.HTML(_progress_html(0.0))
            train_status = gr.Textbox(label="status", interactive=False)
            train_log = gr.Textbox(label="log", lines=8, interactive=False)
            job_ids = gr.State([])
            timer = gr.Timer(2.0)

        demo.load(refresh, [run_dd], [run_dd, notice], api_name="list_runs")
        refresh_btn.click(refresh, [run_dd], [run_dd, notice], api_name=False)
        run_dd.change(on_run, [run_dd], [method_dd, suite_dd, suite_info, run_text, run_df, run_plots, run_config],
                      api_name="run_summary")
        run_btn.click(try_task, [run_dd, method_dd, *sliders, inverted, steps, seed_index, key, suite_dd],
                      [ret_box, returns_df, gif_before, gif_after, try_status], api_name="try_task")
        compare_btn.click(compare, [run_dd, n_tasks, task_seed], [compare_df, compare_plot, compare_status],
                          api_name="compare")
        start_btn.click(train_start, [train_name, preset, job_ids], [job_ids, progress, train_status, train_log],
                        api_name="train_start")
        cancel_btn.click(train_cancel, [job_ids], [progress, train_status, train_log], api_name="train_cancel")
        timer.tick(train_poll, [job_ids, run_dd], [progress, train_status, train_log, run_dd, notice],
                   api_name="train_poll", concurrency_limit=None, show_progress="hidden")
    demo.jobs = jobs  # the server's training jobs (ended with the server: `main`)
    demo.out_dir = out_dir  # where the page writes its animations and plots
    return demo


def launch(options: core.AppOptions, *, block: bool = True, quiet: bool = False):
    """Build and launch the page on `options.host:options.port`; returns the Blocks."""
    demo = build_app(options)
    demo.queue(default_concurrency_limit=2)
    demo.launch(server_name=options.host, server_port=options.port, share=options.share,
                allowed_paths=[options.runs_root, demo.out_dir], prevent_thread_lock=not block, quiet=quiet,
                show_error=True)
    return demo


def main(argv=None) -> int:
    """The command line: parse and check the flags (usage errors exit 2), then serve the page
    until Ctrl-C (Gradio closes the server, then training runs started from the page are
    cancelled, their checkpoints kept; status 0), with the benchmark's persistent compilation
    cache (`benchmarks.cli.compile_cache_dir`: `$JAX_COMPILATION_CACHE_DIR` or
    `~/.cache/ssm-metarl-jax/jax`)."""
    options = core.parse_flags(argv)
    try:
        importlib.import_module("gradio")  # present? (imported for real by `launch`)
    except ImportError:
        print(f"{core.PROG}: error: the page needs Gradio: pip install -e '.[app]'", file=sys.stderr)
        return 1
    os.makedirs(options.runs_root, exist_ok=True)
    from benchmarks import compile_time  # noqa: PLC0415 - imports JAX
    from benchmarks.cli import compile_cache_dir  # noqa: PLC0415

    demo = None
    try:
        # the benchmark's persistent compilation cache: a restarted page reads its programs back
        with compile_time.persistent_cache(compile_cache_dir(None), log=print):
            demo = launch(options, block=True)
    except KeyboardInterrupt:
        return 130
    except OSError as err:  # the port is taken, the address cannot be bound
        print(f"{core.PROG}: error: {core.one_line(err)}", file=sys.stderr)
        return 1
    finally:
        if demo is not None:
            demo.jobs.cancel_all()
            shutil.rmtree(demo.out_dir, ignore_errors=True)  # the page's animations and plots
    return 0


if __name__ == "__main__":
    sys.exit(main())
