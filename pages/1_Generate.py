"""Generate: fit a UAP with any algorithm on any model of the registry, watch it live, race methods, save it."""

from __future__ import annotations

import dataclasses

import streamlit as st

import uap_ui  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch is loaded

from uap_core.algorithms import ALGORITHMS
from uap_core.errors import ParameterError
from uap_core.presets import PROTOCOL_CAPTIONS, RACE_BUDGET, RACE_EPOCHS, RaceSettings, race_config, race_entrant
from uap_core.run import NORMS, RunConfig
from uap_core.seeds import SeedSettings, parse_seeds
from uap_ui import charts, replay, runview, saved_runs, widgets
from uap_ui.jobs import INTERRUPTED, Workspace, run_label, short_algorithm_name
from uap_ui.page import setup_page
from uap_ui.session import current_workspace

MAX_RUNNING = 4
MAX_SEEDED = 12  # runs one click may start when several seeds are asked for (the server's queue takes the rest)
RACE_DEFAULT = ["sga", "sgd_uap"]  # the SGA paper's central comparison
SHARED_PARAMS = ("batch_size", "step_size", "beta", "momentum", "loss")
SEED_GROUPS = "gen_seed_groups"  # job id → its group of seeds (drawn as one mean line and band)


def join_group(job, group: str | None) -> None:
    """Note a run started as one of several seeds (a reused run keeps its own label: the group is kept here)."""
    if group:
        st.session_state.setdefault(SEED_GROUPS, {})[job.id] = group

workspace = setup_page("Generate")
st.title("Generate a universal perturbation")
st.caption("One perturbation δ for all images, fitted on half of them and measured on the other half (held out). "
           "Runs go on in the background: switch pages or refresh, they keep going.")


def stop_runs(ws: Workspace) -> None:
    for job in ws.running():  # a run other pages also watch goes on for them
        runview.stop_job(ws, job)


# ---------------------------------------------------------------------------------------------- the setup
with st.container(border=True):
    col_model, col_method, col_run = st.columns([5, 4, 3])
    with col_model:
        status = widgets.model_picker("gen_model")
        model_ok = widgets.model_ready(status, "gen_model")
        choice = widgets.image_source_picker("gen")
    with col_method:
        algorithm = st.selectbox("Algorithm", widgets.methods_in_groups(), key="gen_algorithm",
                                 persist_state="session", format_func=widgets.method_label,
                                 help="Data-driven methods fit δ on images; data-free ones never see an image "
                                      "(held-out images still measure them); generative ones train a network "
                                      "whose output is δ.")
        st.caption(widgets.method_caption(algorithm))
        norm = st.radio("Norm", list(NORMS), key="gen_norm", horizontal=True, persist_state="session",
                        format_func={"linf": "L∞", "l2": "L2"}.get)
        eps_255 = widgets.eps_input("gen", norm)
        target = widgets.target_picker("gen_target", status.spec.name, ALGORITHMS[algorithm].supports_targeted)
    with col_model:
        surrogates = widgets.ensemble_picker("gen_ensemble", status, algorithm)
    model_name = ",".join([status.spec.name, *surrogates])
    with col_run:
        seed = st.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, step=1, key="gen_seed",
                               persist_state="session", help="Same seed, images and device → the same δ.")
        seeds_text = widgets.settings_form(SeedSettings, "gen", columns=1)["seeds"]
        device = widgets.device_picker("gen_device")
    with st.expander("Hyperparameters (paper defaults)"):
        params = widgets.algorithm_params(algorithm, eps_255, "gen")
    with st.expander("Run settings"):  # every RunConfig setting declared for a form (uap_core.run_types)
        run_settings = widgets.settings_form(RunConfig, "gen", keys={"epochs": f"gen_epochs_{algorithm}",
                                                                     "max_image_gradients": "gen_budget"},
                                             defaults={"epochs": ALGORITHMS[algorithm].default_epochs})

    def config_for(method: str, method_params: dict) -> RunConfig:
        return RunConfig(
            model=model_name, algorithm=method, eps=eps_255 / 255, norm=norm, target=target,
            images=choice.source if choice.kind != "upload" else "uploads", seed=int(seed), device=device,
            params=method_params, **{**run_settings, "epochs": None if run_settings["max_image_gradients"]
                                     else run_settings["epochs"]})

    with st.expander("Race methods", expanded=False):
        r1, r2 = st.columns([3, 2])
        race_methods = r1.multiselect("Methods to race (2–4)", widgets.methods_in_groups(), default=RACE_DEFAULT,
                                      max_selections=4, key="gen_race_methods", format_func=short_algorithm_name,
                                      persist_state="session")
        race_preset = r2.toggle("Classroom race preset", value=True, key="gen_race_preset", persist_state="session",
                                help="EfficientNet-Lite0 on the embedded photos (fitted on crops, measured on crops of "
                                     f"held-out photos), {RACE_EPOCHS} epochs each (or {RACE_BUDGET} image-gradients "
                                     "at equal cost). Off: the form's model, images and settings.")
        protocol = widgets.settings_form(RaceSettings, "gen_race", columns=1)["protocol"]
        st.caption(PROTOCOL_CAPTIONS[protocol] + " A race starts the methods on the same images, seeds and eps and "
                   "draws them on one set of charts; with several seeds each method is a mean line with its min–max "
                   "band. The stability chart (each update against the mean of the previous ones) separates SGA "
                   "from small-batch SGD-UAP at laptop scale on CIFAR-10 ResNet-20 (0.25 against 0.13, 3 seeds, "
                   "about a minute: bench/stability.py), but not on the preset's 13 photos (0.04 against 0.03): "
                   "there the methods cannot be ranked as the papers do — SGA's stable directions pay off with "
                   "250-image batches and 10,000 images, and 48 held-out crops resolve differences of a few points "
                   "only; a recorded paper-scale run shows it (Replay).")

    try:
        seeds = parse_seeds(seeds_text) or [int(seed)]
    except ParameterError as exc:
        st.error(str(exc), icon=":material/error:")
        seeds = [int(seed)]
    seed_note = f" (seeds {','.join(map(str, seeds))})" if len(seeds) > 1 else ""
    running = workspace.running()
    limit = MAX_SEEDED if len(seeds) > 1 else MAX_RUNNING
    b1, b2, b3, b4 = st.columns(4)
    start = b1.button("Start", type="primary", key="gen_start", icon=":material/play_arrow:",
                      disabled=not model_ok or len(running) + len(seeds) > limit, width="stretch")
    race_label = " vs ".join(short_algorithm_name(m) for m in race_methods) if race_methods else "methods"
    race = b2.button(f"Race {race_label}", key="gen_race", icon=":material/compare_arrows:",
                     disabled=(not (2 <= len(race_methods) <= 4)
                               or len(running) + len(race_methods) * len(seeds) > limit
                               or not (model_ok or race_preset)), width="stretch",
                     help="Start the chosen methods side by side (see Race methods above).")
    b3.button("Stop", key="gen_stop", icon=":material/stop:", on_click=stop_runs, args=(workspace,),
              disabled=not running, width="stretch", help="Ends the runs after their current step; each keeps "
                                                          "its kept δ so far.")
    b4.button("Clear finished runs", key="gen_clear", icon=":material/clear_all:",
              on_click=workspace.clear_finished, width="stretch")

    if start and model_ok:
        for one_seed in seeds:  # several seeds: one run each, drawn as one mean line and band
            config = dataclasses.replace(config_for(algorithm, params), seed=one_seed)
            job = runview.start_run(config, choice, label=run_label(algorithm, config.model, one_seed) + seed_note
                                    if seed_note else None)
            if job is None:
                break
            join_group(job, seed_note and f"{short_algorithm_name(algorithm)} · {config.model}{seed_note}")
            workspace.add_run(job)
        else:
            st.rerun()  # redraw the buttons (Stop enabled) and start polling
    if race:
        started = True
        for method in race_methods:
            for one_seed in seeds:
                if race_preset:
                    config, source = race_config(method, device, one_seed, protocol), widgets.SAMPLES_CHOICE
                else:
                    allowed = {f["name"] for f in widgets.method_fields(method)}
                    shared = params if method == algorithm else {k: v for k, v in params.items() if k in SHARED_PARAMS}
                    config, source = config_for(method, {k: v for k, v in shared.items() if k in allowed}), choice
                    config = dataclasses.replace(config, seed=one_seed)
                    if protocol == "epochs" or run_settings["max_image_gradients"]:  # else: the form's epochs
                        config = race_entrant(config, protocol, run_settings["epochs"] or RACE_EPOCHS,
                                              run_settings["max_image_gradients"] or RACE_BUDGET)
                job = runview.start_run(config, source, label=run_label(method, config.model, one_seed)
                                        + f" (race{', ' + seed_note.strip(' ()') if seed_note else ''})")
                if job is None:
                    started = False
                    break
                join_group(job, seed_note and f"{short_algorithm_name(method)} · {config.model} (race, "
                                              f"{seed_note.strip(' ()')})")
                workspace.add_run(job)
            if not started:
                break
        if started:  # the x axis of the race's protocol: epochs (the paper's) or image-gradients (equal cost)
            st.session_state["gen_x_axis"] = "epoch" if protocol == "epochs" else "image_gradients"
            st.rerun()
    runview.show_notices()

# ---------------------------------------------------------------------------------------------- live view
running_at_render = bool(workspace.running())


@st.fragment(run_every=runview.poll_seconds() if running_at_render else None)
def live_view() -> None:
    """Redrawn every second while a run is going; one full rerun when the last one ends."""
    ws = current_workspace()
    jobs = ws.runs_list()
    snapshots = [job.snapshot() for job in jobs]
    if running_at_render and not any(s.active for s in snapshots):
        st.rerun()
    if not snapshots:
        st.info("Press **Start** to fit a perturbation; its fooling ratio, gradient stability and quantisation "
                "error appear here live. Finished runs stay on the charts, so methods can be compared on the same "
                "axes (try **Race**).", icon=":material/insights:")
        return
    labels = runview.distinct_labels(snapshots)  # two runs of one method, model and seed: "· run 1", "· run 2"
    for snap in reversed(snapshots):
        runview.status_line(snap, labels[snap.id])
    x_axis = st.radio("x axis", list(charts.X_AXES), key="gen_x_axis", horizontal=True,
                      format_func={"step": "steps", "epoch": "epochs (the paper's protocol)",
                                   "image_gradients": "image-gradients (equal cost)"}.get,
                      help="Equal epochs: every method has seen the same images as often (the SGA paper's "
                           "comparison). Equal image-gradients: every method has spent the same compute.")
    if x_axis != "step":
        st.caption(PROTOCOL_CAPTIONS["epochs" if x_axis == "epoch" else "image_gradients"])
    runview.metric_charts(snapshots, key="gen_chart", x_axis=x_axis, groups=st.session_state.get(SEED_GROUPS))
    shown_id = snapshots[-1].id
    if len(snapshots) > 1:
        shown_id = st.selectbox("Show δ and labels of", list(reversed(list(labels))), format_func=labels.get,
                                key="gen_detail_run")
    shown = next(s for s in snapshots if s.id == shown_id)
    runview.delta_and_histogram(shown, key="gen_detail")


live_view()
replay.race_section()  # the SGA paper's race, recorded, on the same charts

# ---------------------------------------------------------------------------------------------- results
ended = [(job, job.snapshot()) for job in workspace.runs_list() if not job.active]
finished = [snap for _, snap in ended]
saved_runs.show_damaged(workspace, "run", "gen")  # a saved run that could not be read: one line each
if finished:
    st.subheader("Results")
    for line in runview.seed_spreads(finished, st.session_state.get(SEED_GROUPS)):
        st.markdown(line)
    labels = runview.distinct_labels([job.snapshot() for job in workspace.runs_list()])
    for i, (job, snap) in enumerate(reversed(ended)):
        interrupted = snap.state == INTERRUPTED  # by a restart of the server: Resume / Discard
        with st.expander(f"{labels.get(snap.id, snap.label)} — {snap.state}", expanded=i == 0 or interrupted):
            if interrupted:
                runview.interrupted_panel(workspace, job, snap, key=f"gen_result_{snap.id}")
            else:
                runview.result_panel(snap, key=f"gen_result_{snap.id}")
