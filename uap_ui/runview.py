"""Drawing runs (live or finished) from job snapshots: status lines, the metric charts, δ, the histogram,
and the save / download controls of a finished run. Used by Home (the demo) and Generate."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
from collections import Counter, OrderedDict
from typing import Sequence

import streamlit as st

from uap_core.artifacts import uap_to_bytes
from uap_core.errors import UAPError
from uap_core.library import safe_name

from . import cache, charts, jobs, saved_runs, spaces, widgets
from .jobs import DONE, FAILED, INTERRUPTED, QUEUED, STOPPED, JobSnapshot
from .session import current_workspace

POLL_SECONDS = 1.0  # page refresh while a run is live: each poll redraws the charts (browser CPU)
REDRAWS_PER_SECOND = 4.0  # at most about this many live redraws per second in all, however many sessions watch
STATE_BADGES = {"running": ":blue-badge[running]", "queued": ":gray-badge[queued]",
                "done": ":green-badge[finished]", "stopped": ":orange-badge[stopped]",
                "failed": ":red-badge[failed]", "interrupted": ":violet-badge[interrupted]"}


_POLL_KEY = "_uap_poll_seconds"


def poll_seconds() -> float:
    """How often a live view redraws (its fragment's ``run_every``): every POLL_SECONDS alone; with many sessions
    watching runs at once they poll less often (20 sessions: every 5 s), so that redrawing pages never starves the
    runs of the server's CPU. Remembered for :func:`keep_pace`."""
    seconds = max(POLL_SECONDS, jobs.live_sessions() / REDRAWS_PER_SECOND)
    st.session_state[_POLL_KEY] = seconds
    return seconds


def keep_pace() -> None:
    """Inside a live fragment: when the right polling interval has moved far from the one the fragment was
    registered with (many sessions joined, or left), rerun the page once to register the new one."""
    registered = st.session_state.get(_POLL_KEY)
    if registered is None:
        return
    wanted = max(POLL_SECONDS, jobs.live_sessions() / REDRAWS_PER_SECOND)
    if wanted > 1.5 * registered or wanted < registered / 1.5:
        st.rerun()


def seed_group(label: str) -> str | None:
    """The group of a run started as one of several seeds (its label ends "(…seeds 0,1,2)"): the label without its
    own "· seed N", shared by its sibling seeds; None for a run on its own."""
    return re.sub(r" · seed \d+", "", label) if re.search(r"seeds [\d,]+\)$", label) else None


def distinct_labels(snapshots: Sequence[JobSnapshot]) -> dict[int, str]:
    """Job id → the label a page shows for it. A label that several of the runs share (the same method, model and
    seed started twice, perhaps with other settings) gets " · run k", k counting those runs in the order they were
    started, so that each has its own legend entry, status line and result; a label of its own is kept as it is."""
    counts = Counter(s.label for s in snapshots)
    nth: Counter[str] = Counter()
    shown = {}
    for snap in sorted(snapshots, key=lambda s: (s.created, s.id)):
        if counts[snap.label] > 1:
            nth[snap.label] += 1
            shown[snap.id] = f"{snap.label} · run {nth[snap.label]}"
        else:
            shown[snap.id] = snap.label
    return shown


def series(snapshots: Sequence[JobSnapshot], groups: dict[int, str] | None = None) -> list[charts.RunSeries]:
    """Chart series of the runs, coloured by their position (the same colour on every chart; the seeds of one
    setting share their first run's colour and are drawn as one mean line and band). ``groups``: job id → the
    group a page started it in (a run reused from an earlier request keeps its own label), else by label."""
    out, colors = [], {}
    labels = distinct_labels(snapshots)
    for i, s in enumerate(snapshots):
        group = (groups or {}).get(s.id) or seed_group(s.label)
        color = colors.setdefault(group, charts.color_for(len(colors))) if group else charts.color_for(len(colors))
        if not group:
            colors[f"run {i}"] = color
        out.append(charts.RunSeries(labels[s.id], s.events, color, s.active, group))
    return out


def seed_spreads(snapshots: Sequence[JobSnapshot], groups: dict[int, str] | None = None) -> list[str]:
    """One markdown line per group of seeds with at least two finished runs: mean ± s.d. of the held-out fooling
    ratio (uap_core.seeds.spread) over its seeds."""
    from uap_core.seeds import spread

    finals: dict[str, list[float]] = {}
    for snap in snapshots:
        group = (groups or {}).get(snap.id) or seed_group(snap.label)
        if group and snap.result is not None:
            finals.setdefault(group, []).append(snap.result.evaluation.fooling_ratio)
    lines = []
    for group, values in finals.items():
        if len(values) > 1:
            s = spread(values)
            lines.append(f"**{group}**: held-out fooling ratio **{s['mean']:.1%} ± {s['sd']:.1%}** (mean ± s.d. "
                         f"over {s['n']} seeds; min {s['min']:.1%}, max {s['max']:.1%})")
    return lines


def status_line(snap: JobSnapshot, label: str | None = None) -> None:
    """State, progress and the latest numbers of one run, in one line (plus a progress bar while it runs);
    ``label``: the run's label on this page (:func:`distinct_labels`), else its own."""
    parts = [STATE_BADGES.get(snap.state, snap.state), f"**{label or snap.label}**"]
    total = snap.total_steps
    last_step = snap.last_step
    step = last_step["step"] if last_step else 0
    if total:
        parts.append(f"step {step}/{total}")
    parts.append(f"{snap.elapsed:.0f} s")
    last_eval = snap.last_eval
    if last_eval is not None:
        parts.append(f"held-out fooling ratio **{last_eval['fooling_ratio']:.0%}**")
    baseline = snap.start_info.get("random_fooling_ratio")
    if baseline is not None:
        parts.append(f"random noise {baseline:.0%}")
    if snap.result is not None:
        parts.append(f"kept δ: step {snap.result.best_step} ({snap.result.reason})")
    resumed = snap.start_info.get("resumed_from_step")
    if resumed is not None and snap.state != INTERRUPTED:
        parts.append(f"resumed from step {resumed}")
    if snap.active and snap.watchers > 1:
        parts.append(f"shared: {snap.watchers} pages watch it")
    st.markdown(" · ".join(parts))
    if snap.active:
        keep_pace()
    if snap.state == QUEUED:
        queue_caption(snap)
    elif snap.active and not snap.events:
        st.caption("Preparing: classifying the clean images and the random-noise baseline…")
    if snap.active and total:
        st.progress(min(1.0, step / total))
    if snap.state == FAILED and snap.error:
        st.error(snap.error, icon=":material/error:")


def metric_charts(snapshots: Sequence[JobSnapshot], key: str, keys: Sequence[str] | None = None,
                  columns: int = 3, height: int = 280, x_axis: str = "step", groups: dict[int, str] | None = None) -> None:
    """The live metric charts, one trace per run (one band per group of seeds: ``groups``, see :func:`series`),
    against step, epochs or image-gradients (``x_axis``)."""
    runs = series(snapshots, groups)
    specs = [charts.metric_spec(k) for k in keys] if keys else list(charts.METRICS)
    version = tuple((s.id, s.label, len(s.events), s.active, (groups or {}).get(s.id)) for s in snapshots)
    cols = st.columns(columns)
    for i, spec in enumerate(specs):
        with cols[i % columns]:
            figure = _figure((version, spec.key, height, x_axis),
                             lambda: charts.metric_figure(runs, spec, height=height, x_axis=x_axis))
            st.plotly_chart(figure, key=f"{key}_{spec.key}", width="stretch")


_FIGURES: "OrderedDict[tuple, object]" = OrderedDict()
_FIGURES_LOCK = threading.Lock()
FIGURES_KEPT = 64


def _figure(key: tuple, build):
    """A metric figure built once per state of its runs (the pages watching one shared run redraw the same
    figure: building it costs some 20 ms of the server's CPU; Streamlit only reads it)."""
    with _FIGURES_LOCK:
        figure = _FIGURES.get(key)
        if figure is not None:
            _FIGURES.move_to_end(key)
            return figure
    figure = build()
    with _FIGURES_LOCK:
        _FIGURES[key] = figure
        while len(_FIGURES) > FIGURES_KEPT:
            _FIGURES.popitem(last=False)
    return figure


def delta_and_histogram(snap: JobSnapshot, key: str) -> None:
    """The run's current δ (amplified) beside the dominant-label histogram of its latest held-out evaluation."""
    left, right = st.columns([1, 2])
    with left:
        if snap.delta is not None:
            widgets.perturbation_image(snap.delta)
            if snap.result is not None:
                kept_best = snap.result.info.get("keep", snap.result.config.keep) == "best"
                st.caption("The kept δ (best fit-set fooling ratio at an evaluation)." if kept_best
                           else "The run's last δ (the run keeps its last).")
            elif snap.state == INTERRUPTED:
                st.caption("The kept δ at the run's last checkpoint (a restart of the server interrupted it).")
            else:
                st.caption("The current δ of the run.")
        else:
            st.info("δ appears after the first step.")
    with right:
        last_eval = snap.last_eval
        if last_eval is not None:
            widgets.histogram_chart(last_eval["heldout"]["histogram"], key=f"{key}_hist",
                                    title=f"Held-out labels under δ (step {last_eval['step']})")
        else:
            st.info("The dominant-label histogram appears at the first evaluation.")


def default_save_name(snap: JobSnapshot) -> str:
    cfg = snap.result.config if snap.result else None
    if cfg is None:
        return f"run-{snap.id}"
    eps = cfg.eps * 255
    return safe_name(f"{cfg.algorithm}-{cfg.model}-{cfg.norm}-eps{eps:g}-seed{cfg.seed}-run{snap.id}")


def headline_metrics(summary: dict) -> None:
    """The headline numbers of a finished run (its ``RunResult.summary()``), one row: held-out fooling ratio,
    random noise of the same eps, dominant label, steps, time."""
    cols = st.columns(5)
    cols[0].metric("Held-out fooling ratio", widgets.percent(summary["fooling_ratio"]),
                   help=f"on {summary['heldout_images']} images not used to fit δ")
    cols[1].metric("Random noise, same eps", widgets.percent(summary["random_fooling_ratio"]),
                   help="fooling ratio of random noise of the same strength on the same held-out images")
    cols[2].metric("Dominant label", summary["dominant_name"] or "—",
                   help=f"share of the perturbed held-out images: {summary['dominant_share']:.0%}")
    cols[3].metric("Steps", f"{summary['steps']}", help=f"ended: {summary['reason']}")
    cols[4].metric("Time", f"{summary['seconds']:.0f} s", help=f"device {summary['device']}")
    fooling_rate_caption(summary)


def fooling_rate_caption(figures: dict) -> None:
    """The fooling rate beside the fooling ratio, where the images have true labels (``fooling_rate`` and
    ``labelled_images`` of a summary or a report's ``as_dict``); nothing where they have none."""
    if figures.get("fooling_rate") is None:
        return
    st.caption(f"Fooling rate **{widgets.percent(figures['fooling_rate'])}**: 1 − top-1 accuracy under δ against "
               f"the true labels of {figures['labelled_images']} images (the SGA paper's other number; it also "
               f"counts images the model got wrong without δ). The fooling ratio counts changed labels only.")


def result_panel(snap: JobSnapshot, key: str) -> None:
    """Headline numbers of a finished run, Save to the library, download δ."""
    result = snap.result
    if result is None:
        if snap.state == FAILED:
            st.error(snap.error or "the run failed", icon=":material/error:")
        else:
            st.info("The run ended before it produced a perturbation.")
        return
    headline_metrics(result.summary())
    save_col, download_col = st.columns([3, 1])
    with save_col:
        with st.form(key=f"{key}_save_form", border=False):
            name = st.text_input("Name in the library", value=default_save_name(snap), key=f"{key}_save_name")
            overwrite = st.checkbox("Replace an entry of the same name", key=f"{key}_overwrite")
            if st.form_submit_button("Save to the library", icon=":material/save:"):
                try:
                    library = spaces.library()
                    with spaces.LIBRARY_LOCK:
                        entry = library.save(name, result.delta, result.metadata(), overwrite=overwrite)
                    where = "your space on this server" if spaces.space_name() else library.root
                    st.success(f"Saved as **{entry.name}** in {where}", icon=":material/check:")
                except UAPError as exc:
                    st.error(str(exc))
    with download_col:
        st.download_button("Download δ (.safetensors)", data=lambda: uap_to_bytes(result.delta, result.metadata()),
                           file_name=f"{default_save_name(snap)}.safetensors", mime="application/octet-stream",
                           key=f"{key}_download", on_click="ignore", icon=":material/download:")


def interrupted_panel(workspace, job, snap: JobSnapshot, key: str) -> None:
    """A run the server's restart interrupted: where it stood, and Resume (from its checkpoint) / Discard."""
    store = workspace.store
    record = store.record(job) if store is not None else None
    saved_step = record.get("checkpoint_step") if record else None
    total = snap.total_steps
    last_eval = snap.last_eval
    where = f"step {saved_step}/{total}" if saved_step is not None and total else f"step {saved_step}"
    if saved_step is None:
        st.warning("The server stopped before this run wrote its first checkpoint: **Resume** starts it again "
                   "from step 0.", icon=":material/restart_alt:")
    else:
        figure = (f", held-out fooling ratio **{last_eval['fooling_ratio']:.0%}** at step {last_eval['step']}"
                  if last_eval is not None else "")
        st.info(f"Interrupted when the server stopped. Its checkpoint of **{where}**{figure} is kept in your "
                f"space: **Resume** continues from there.", icon=":material/pause_circle:")
    can_resume = bool(record and record.get("images"))
    if record and not record.get("images"):
        st.caption("It ran on uploaded images, which are not kept across a restart: it cannot be resumed.")
    resume_col, discard_col, _ = st.columns([1, 1, 3])
    resume_col.button("Resume", key=f"{key}_resume", type="primary", icon=":material/play_arrow:",
                      disabled=not can_resume, on_click=saved_runs.resume, args=(workspace, job), width="stretch")
    discard_col.button("Discard", key=f"{key}_discard", icon=":material/delete:", on_click=workspace.remove_run,
                       args=(job.id,), width="stretch", help="Delete this run and its checkpoint.")


def queue_caption(snap: JobSnapshot) -> None:
    """Where a waiting job stands: "in queue: 3rd, about 40 s", and why it waits."""
    place = snap.queue
    if place is None:
        st.caption("Waiting to start…")
        return
    where = "on its GPU" if place.pool == "cuda" else "on its CPU"
    st.caption(f":material/hourglass_top: **{place.describe()}** — this server runs {place.capacity} at once "
               f"{where}; a run's time limit counts from its start, not from now.")


def finished_state(snap: JobSnapshot) -> bool:
    return snap.state in (DONE, STOPPED, FAILED)


def run_key(config, choice: "widgets.ImageChoice") -> str:
    """What makes two requests the same run (hence the same δ): the validated configuration, the device it
    resolves to and the images (their path and modification time, or the uploads' content)."""
    from uap_core.models import resolve_device

    settings = dataclasses.asdict(config)
    settings["device"] = str(resolve_device(config.device))
    text = json.dumps(settings, sort_keys=True, default=str) + "|" + widgets.image_key(choice, config.model,
                                                                                         config.input_size)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def start_run(config, choice: "widgets.ImageChoice", kind: str = "generate", label: str | None = None):
    """Validate ``config``, then watch the identical run if one is going or finished lately (same settings, seed
    and images: the same δ), else get the cached model and images and start a :class:`~uap_ui.jobs.Job`.

    Returns the job, or None after showing the error in the page."""
    from uap_core.run import Run

    from .jobs import Job, shared_job

    try:
        validated = Run(config).config  # validation only: a bad parameter is reported before any loading
        widgets.check_image_choice(choice)  # a path this session may not read, an upload over the limit
        key = run_key(validated, choice)
    except UAPError as exc:
        st.error(str(exc), icon=":material/error:")
        return None

    workspace = current_workspace()
    store = workspace.store if kind == "generate" else None  # a Generate run is kept across a restart

    def create():
        name = store.new_name() if store is not None else None
        try:
            model = cache.model(config.model, config.device)
            images = widgets.load_image_choice(choice, config.model, config.input_size)
            run = Run(config, model=model, images=images,
                      checkpoints=store.checkpoint_policy(name) if name is not None else None)
        except UAPError as exc:
            st.error(str(exc), icon=":material/error:")
            return None
        if images.skipped:  # shown after the rerun that redraws the buttons (see show_notices)
            st.session_state.setdefault(_NOTICES, []).append(images)
        job = Job(run, label=label, kind=kind)
        if name is not None:  # its record first: a restart finds it however the process ends
            try:
                store.begin(job, name, saved_runs.image_record(choice))
            except OSError as exc:
                st.session_state.setdefault(_NOTICES, []).append(
                    f"This run is not kept across a restart of the server: its record could not be written "
                    f"({exc.strerror or exc}).")
        return job.start()

    job, reused = shared_job(key, create, own=workspace)
    if job is not None and reused:
        state = "is already going" if job.active else "finished a moment ago"
        st.session_state.setdefault(_NOTICES, []).append(
            f"The same run (same model, method, images, settings and seed, hence the same δ) {state}: it is "
            f"shown here from the step it has reached instead of being started again.")
    return job


_warmed: set[str] = set()  # run keys warmed in this server process
_warm_lock = threading.Lock()
WARM_SWITCH = "UAP_WARM_DEMO"  # "0": never warm (a benchmark's cold baseline; a server that must stay idle)


def warm(config, choice: "widgets.ImageChoice") -> None:
    """Once per server process and run, in a background thread: the forward passes ``config``'s run makes before
    its first step that do not depend on δ (:meth:`uap_core.run.Run.warm`: clean predictions, the random-noise
    baseline), with the page's own cached model and images. Home warms its demo when the page opens, so "Run the
    demo" shows its first held-out point after one step instead of after the whole preparation
    (``python -m bench.cold_demo`` measures both). The model and images load in this script run (cached, with
    their spinners); the passes run in the thread. Failures are left to the run itself to report."""
    import os

    from uap_core.run import Run

    if os.environ.get(WARM_SWITCH, "1").strip() == "0":
        return
    try:
        key = run_key(Run(config).config, choice)
    except UAPError:
        return
    with _warm_lock:
        if key in _warmed:
            return
        _warmed.add(key)
    try:
        run = Run(config, model=cache.model(config.model, config.device),
                  images=widgets.load_image_choice(choice, config.model, config.input_size))
    except UAPError:
        return
    threading.Thread(target=_warm_quietly, args=(run,), name="uap-warm", daemon=True).start()


def _warm_quietly(run) -> None:
    try:
        run.warm()
    except Exception:  # noqa: BLE001 - a warm-up is optional; the run started later reports its own error
        import logging

        logging.getLogger(__name__).warning("warming %s failed", run.config.model, exc_info=True)


_NOTICES = "_uap_run_notices"


def show_notices() -> None:
    """Notes left by :func:`start_run` for the next script run: files that could not be decoded, a shared run."""
    for notice in st.session_state.pop(_NOTICES, []):
        if isinstance(notice, str):
            st.info(notice, icon=":material/group:")
        else:
            widgets.show_skipped(notice)


def stop_job(workspace, job) -> None:
    """The Stop button: stops ``job`` when this page alone watches it, else only this page stops watching it."""
    if job is not None and not workspace.stop_job(job):
        st.session_state.setdefault(_NOTICES, []).append(
            "You left a shared run: it goes on for the other pages that watch it (it was not stopped).")


def job_analysis(job, snap: JobSnapshot):
    """Per-image predictions of a finished job's kept δ on its held-out images (the first ones the job kept),
    taken from the run's final evaluation: no forward pass."""
    from uap_core.report import report_from_evaluation

    result = snap.result
    if result is None or job.holdout is None or job.model is None or result.evaluation.perturbed_confidence is None:
        return None
    return report_from_evaluation(result.evaluation, job.holdout, result.delta, result.random_evaluation.fooling_ratio,
                                  job.model.spec.class_names, target=result.config.target)
