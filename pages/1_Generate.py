"""Generate: fit a UAP with any algorithm on any model of the registry, watch it live, race methods, save it."""

from __future__ import annotations

import streamlit as st

import uap_ui  # noqa: F401 - first: sets OMP_WAIT_POLICY before torch is loaded

from uap_core.algorithms import ALGORITHMS
from uap_core.presets import RACE_BUDGET, race_config
from uap_core.run import NORMS, RunConfig
from uap_ui import charts, replay, runview, widgets
from uap_ui.jobs import Workspace, run_label, short_algorithm_name
from uap_ui.page import setup_page
from uap_ui.session import current_workspace

MAX_RUNNING = 4
RACE_DEFAULT = ["sga", "sgd_uap"]  # the SGA paper's central comparison
SHARED_PARAMS = ("batch_size", "step_size", "beta", "momentum", "loss")

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
                                     f"held-out photos), {RACE_BUDGET} image-gradients each. Off: the form's "
                                     "model, images and settings, with the budget above if set.")
        st.caption(
            "A race starts the methods on the same images, seed and eps, each with the same budget of "
            "image-gradients, and draws them on one set of charts against image-gradients spent: which method "
            "gets further for the same cost. With the preset (about two minutes on a laptop) SGA against SGD-UAP "
            "shows the trade SGA makes: for the same cost it takes half as many sign steps, each from 4 aggregated "
            "gradients, so on 13 photos SGD-UAP's more numerous steps carry δ further (measured: 56 % against 44 % "
            "of held-out crops, random noise 13 %). It cannot rank the methods as the papers do: SGA's stable "
            "directions pay off with 250-image batches and 10,000 images, and 12 held-out photos (48 crops) "
            "resolve differences of a few points only.")

    running = workspace.running()
    b1, b2, b3, b4 = st.columns(4)
    start = b1.button("Start", type="primary", key="gen_start", icon=":material/play_arrow:",
                      disabled=not model_ok or len(running) >= MAX_RUNNING, width="stretch")
    race_label = " vs ".join(short_algorithm_name(m) for m in race_methods) if race_methods else "methods"
    race = b2.button(f"Race {race_label}", key="gen_race", icon=":material/compare_arrows:",
                     disabled=(not (2 <= len(race_methods) <= 4) or len(running) + len(race_methods) > MAX_RUNNING
                               or not (model_ok or race_preset)), width="stretch",
                     help="Start the chosen methods side by side (see Race methods above).")
    b3.button("Stop", key="gen_stop", icon=":material/stop:", on_click=stop_runs, args=(workspace,),
              disabled=not running, width="stretch", help="Ends the runs after their current step; each keeps "
                                                          "its kept δ so far.")
    b4.button("Clear finished runs", key="gen_clear", icon=":material/clear_all:",
              on_click=workspace.clear_finished, width="stretch")

    if start and model_ok:
        job = runview.start_run(config_for(algorithm, params), choice)
        if job is not None:
            workspace.add_run(job)
            st.rerun()  # redraw the buttons (Stop enabled) and start polling
    if race:
        for method in race_methods:
            if race_preset:
                config, source = race_config(method, device, int(seed)), widgets.SAMPLES_CHOICE
            else:
                allowed = {f["name"] for f in widgets.method_fields(method)}
                shared = params if method == algorithm else {k: v for k, v in params.items() if k in SHARED_PARAMS}
                config, source = config_for(method, {k: v for k, v in shared.items() if k in allowed}), choice
            job = runview.start_run(config, source, label=run_label(method, config.model, int(seed)) + " (race)")
            if job is None:
                break
            workspace.add_run(job)
        else:
            st.session_state["gen_x_axis"] = "image_gradients"  # a race compares at equal cost
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
    for snap in reversed(snapshots):
        runview.status_line(snap)
    x_axis = st.radio("x axis", list(charts.X_AXES), key="gen_x_axis", horizontal=True,
                      format_func=lambda a: "steps" if a == "step" else "image-gradients (equal cost)",
                      help="Methods whose steps cost different numbers of image-gradients compare fairly on the "
                           "image-gradient axis.")
    runview.metric_charts(snapshots, key="gen_chart", x_axis=x_axis)
    labels = {s.id: s.label for s in snapshots}
    shown_id = snapshots[-1].id
    if len(snapshots) > 1:
        shown_id = st.selectbox("Show δ and labels of", list(reversed(list(labels))), format_func=labels.get,
                                key="gen_detail_run")
    shown = next(s for s in snapshots if s.id == shown_id)
    runview.delta_and_histogram(shown, key="gen_detail")


live_view()
replay.race_section()  # the SGA paper's race, recorded, on the same charts

# ---------------------------------------------------------------------------------------------- results
finished = [job.snapshot() for job in workspace.runs_list() if not job.active]
if finished:
    st.subheader("Results")
    for i, snap in enumerate(reversed(finished)):
        with st.expander(f"{snap.label} — {snap.state}", expanded=i == 0):
            runview.result_panel(snap, key=f"gen_result_{snap.id}")
