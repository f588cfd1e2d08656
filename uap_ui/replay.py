"""Replaying recorded runs on the live charts: Home, the race (Generate) and the Library.

A replay is the live view fed from a recording (:mod:`uap_core.recording`) instead of a job: the same
:func:`uap_ui.runview.metric_charts`, drawn from the events recorded up to a point of the recorded time. Play
moves that point at a chosen speed (a polling fragment, as a live run's view); the slider scrubs it. Several
recordings of a race replay on one clock, as they ran. Every replay says plainly that it is recorded, on what
machine, when, in how long, and the command that reproduces it. No math here: positions come from
:func:`uap_core.recording.replay_seconds`, the events from :meth:`Recording.events_until`.
"""

from __future__ import annotations

import math
import time
import zlib
from typing import Sequence

import streamlit as st

from uap_core.recording import (REPLAY_SPEEDS, Recording, list_recordings, load_recording, race_seconds, races,
                                recording_from_artifact, recording_path, replay_seconds, shipped_recordings_dir)

from . import charts, runview, widgets
from .jobs import DONE, RUNNING, JobSnapshot

TICK_SECONDS = 0.5  # how often a playing replay redraws
RECORDED_BADGE = "**Recorded run — not live**"


# ---------------------------------------------------------------------------------------------- sources
@st.cache_resource(show_spinner=False, max_entries=8)
def _folder(folder: str, state: tuple) -> dict[str, list[Recording]]:
    """The recordings of a folder grouped by race, read once per state of the folder (names, sizes, times)."""
    return races(list_recordings(folder))


def shipped_races() -> dict[str, list[Recording]]:
    """The shipped recorded races (``assets/recordings``), by race name."""
    folder = shipped_recordings_dir()
    state = tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*.npz"))) \
        if folder.is_dir() else ()
    return _folder(str(folder), state)


def entry_recording(entry, artifact) -> Recording | None:
    """The recording of a Library entry: its ``NAME.recording.npz`` when one was saved beside it (``generate
    --record``), else the history saved in its metadata with its δ as the kept one."""
    sibling = recording_path(entry.path)
    if sibling.is_file():
        try:
            return load_recording(sibling)
        except Exception:  # noqa: BLE001 - an unreadable sibling: fall back on the metadata
            pass
    delta = artifact.delta if artifact is not None else None
    return recording_from_artifact(entry.metadata, delta, title=entry.name)


# ---------------------------------------------------------------------------------------------- drawing
def _snapshot(recording: Recording, seconds: float) -> JobSnapshot:
    """A job snapshot of the recording as it stood ``seconds`` into the run (for runview.metric_charts)."""
    events = recording.events_until(seconds)
    key = str(recording.path or recording.title) + recording.title
    return JobSnapshot(id=10**9 + zlib.crc32(key.encode("utf-8")), label=recording.title,
                       state=RUNNING if seconds < recording.seconds else DONE, events=events, delta=None, error=None,
                       result=None, start_info=recording.start, created=0.0, stop_requested=False)


def provenance_note(recordings: Sequence[Recording]) -> None:
    """The plain label every replay carries: recorded, not live; machine, date, duration, version; the commands."""
    first = recordings[0].describe()
    durations = ", ".join(f"{r.title}: {r.describe()['duration']}" for r in recordings) if len(recordings) > 1 \
        else first["duration"]
    scale = recordings[0].meta.get("scale")
    st.info(f"{RECORDED_BADGE} — replayed from its saved history, not computed now. Machine: **{first['machine']}** · "
            f"recorded {first['date']} · took {durations} · {first['version']}."
            + (f" Scale: {scale}." if scale else ""), icon=":material/history:")
    st.caption("Reproduce it with" + (" (one command per run):" if len(recordings) > 1 else ":"))
    st.code("\n".join(r.describe()["command"] for r in recordings), language="bash", wrap_lines=True)


def _status(recording: Recording, seconds: float) -> str:
    snap = _snapshot(recording, seconds)
    parts = [":material/history: **recorded**", f"**{recording.title}**"]
    step = snap.last_step["step"] if snap.last_step else 0
    if snap.total_steps:
        parts.append(f"step {step}/{snap.total_steps}")
    parts.append(f"{min(seconds, recording.seconds):.0f} s of {recording.seconds:.0f} s")
    if snap.last_eval is not None:
        parts.append(f"held-out fooling ratio **{snap.last_eval['fooling_ratio']:.1%}**")
    baseline = recording.start.get("random_fooling_ratio")
    if baseline is not None:
        parts.append(f"random noise {baseline:.0%}")
    return " · ".join(parts)


def _state(key: str, name: str) -> dict:
    """This replay's state in the session: ``playing``; ``at``, the recorded second shown (paused) or played from;
    ``wall``, when play was pressed (time.monotonic); ``speed``."""
    state = st.session_state.setdefault(f"{key}_replay", {"name": name, "playing": False, "at": 0.0, "wall": 0.0})
    if state["name"] != name:  # another race chosen: back to its start
        state.update(name=name, playing=False, at=0.0, wall=0.0)
    return state


def _position(state: dict, duration: float) -> float:
    if state["playing"]:
        return replay_seconds(time.monotonic() - state["wall"], state.get("speed", 1.0), state["at"], duration)
    return min(state["at"], duration)


def _toggle(key: str, duration: float) -> None:
    state = st.session_state[f"{key}_replay"]
    position = _position(state, duration)
    if state["playing"]:
        state.update(playing=False, at=position)
    else:
        state.update(playing=True, at=0.0 if position >= duration else position, wall=time.monotonic())


def _respeed(key: str, duration: float) -> None:
    state = st.session_state[f"{key}_replay"]
    if state["playing"]:  # keep the point reached, go on at the new speed
        state.update(at=_position(state, duration), wall=time.monotonic())
    state["speed"] = float(st.session_state[f"{key}_speed"])


def _scrub(key: str) -> None:
    st.session_state[f"{key}_replay"]["at"] = float(st.session_state[f"{key}_pos"])


def replay_panel(recordings_by_name: dict[str, list[Recording]], key: str, chart_keys: Sequence[str] | None = None,
                 columns: int = 3, height: int = 280, x_axis: str | None = None, label: str = "Recorded race") -> None:
    """Pick a recording (or a race of several), then Play / Pause at a chosen speed and scrub with a slider; the
    live charts fill in step by step. ``x_axis`` None: the user picks (charts.X_AXES)."""
    if not recordings_by_name:
        st.caption("No recorded run here (`python assets/make_recordings.py` builds the shipped races).")
        return
    names = list(recordings_by_name)
    name = names[0] if len(names) == 1 else st.selectbox(label, names, key=f"{key}_choice")
    recordings = recordings_by_name[name]
    duration = math.ceil(race_seconds(recordings) * 10) / 10  # on the slider's 0.1-s grid, past the last event
    state = _state(key, name)
    playing_at_render = state["playing"]

    @st.fragment(run_every=TICK_SECONDS if playing_at_render else None)
    def view() -> None:
        state = _state(key, name)
        if state["playing"] != playing_at_render:
            st.rerun()  # register (or drop) the polling
        position = _position(state, duration)
        ended = state["playing"] and position >= duration
        if ended:
            state.update(playing=False, at=duration)
        provenance_note(recordings)
        play, speed, slider = st.columns([1, 1.4, 4], vertical_alignment="bottom")
        play.button("Pause" if state["playing"] else "Play", key=f"{key}_play", on_click=_toggle,
                    args=(key, duration), icon=":material/pause:" if state["playing"] else ":material/play_arrow:",
                    width="stretch", type="primary")
        st.session_state.setdefault(f"{key}_speed", REPLAY_SPEEDS[1])
        speed.selectbox("Speed", REPLAY_SPEEDS, key=f"{key}_speed", format_func=lambda s: f"{s:g}× recorded",
                        on_change=_respeed, args=(key, duration))
        state.setdefault("speed", float(st.session_state[f"{key}_speed"]))
        if state["playing"]:  # a progress bar: a slider moved from here would read as a user's scrub
            slider.progress(min(1.0, position / duration) if duration else 1.0,
                            text=f"Recorded time {position:.1f} s of {duration:.1f} s")
        else:
            st.session_state[f"{key}_pos"] = round(position, 1)  # before the slider: where the replay stands
            slider.slider("Recorded time, s", 0.0, max(duration, 0.1), step=0.1, key=f"{key}_pos",
                          on_change=_scrub, args=(key,), help="Drag to scrub through the recorded run.")
        for recording in recordings:
            st.markdown(_status(recording, position))
        snapshots = [_snapshot(r, position) for r in recordings]
        axis = x_axis or st.radio("x axis", list(charts.X_AXES), key=f"{key}_x_axis", horizontal=True,
                                  index=min(1, len(charts.X_AXES) - 1),
                                  format_func=lambda a: "steps" if a == "step" else charts.X_AXES[a])
        runview.metric_charts(snapshots, key=f"{key}_chart", keys=chart_keys, columns=columns, height=height,
                              x_axis=axis)
        _delta(recordings, position, key)
        if ended:
            st.rerun()  # stop polling; the full rerun draws the last frame

    view()


def _delta(recordings: Sequence[Recording], seconds: float, key: str) -> None:
    """δ at the latest recorded checkpoint of one run (picked when the race has several)."""
    with_delta = [r for r in recordings if r.checkpoints]
    if not with_delta:
        return
    shown = with_delta[0]
    if len(with_delta) > 1:
        titles = [r.title for r in with_delta]
        shown = with_delta[titles.index(st.selectbox("Show δ of", titles, key=f"{key}_delta_of"))]
    checkpoint = shown.checkpoint_at(seconds)
    left, right = st.columns([1, 3])
    with left:
        if checkpoint is None:
            st.caption("δ appears at its first recorded checkpoint.")
        else:
            widgets.perturbation_image(checkpoint.delta)
            st.caption("The kept δ of the run." if checkpoint.kind == "kept"
                       else f"δ at step {checkpoint.step} (a recorded checkpoint, 8-bit).")
    with right:
        evals = [e for e in shown.events_until(seconds) if e.get("kind") == "eval" and e.get("heldout")]
        if evals:
            widgets.histogram_chart(evals[-1]["heldout"]["histogram"], key=f"{key}_hist",
                                    title=f"Held-out labels under δ (step {evals[-1]['step']}, recorded)")


# ---------------------------------------------------------------------------------------------- the pages' entries
def home_section() -> None:
    """Home: "Replay a recorded run" — the shipped races on the demo's two charts."""
    if st.toggle("Replay a recorded run", key="home_replay_on",
                 help="The SGA paper's race (small-batch SGD-UAP, large-batch SGD-UAP, SGA), recorded at a scale a "
                      "laptop's live demo cannot reach, replayed on these charts."):
        replay_panel(shipped_races(), key="home_replay", chart_keys=("fooling_ratio", "grad_cosine"), columns=2,
                     height=300, x_axis="image_gradients")


def race_section() -> None:
    """Generate: "Replay a recorded race" next to the live race."""
    if st.toggle("Replay a recorded race", key="gen_replay_on",
                 help="SGA against large- and small-batch SGD-UAP in the SGA paper's protocol (equal epochs over "
                      "the same images), recorded, replayed on the live charts."):
        replay_panel(shipped_races(), key="gen_replay")


def library_section(entry, artifact) -> None:
    """Library: replay the selected entry's run on the live charts."""
    if st.toggle("Replay this run", key="lib_replay_on",
                 help="The entry's saved history, step by step on the live charts."):
        recording = entry_recording(entry, artifact)
        if recording is None:
            st.caption("This entry has no saved history to replay.")
            return
        replay_panel({entry.name: [recording]}, key=f"lib_replay", chart_keys=("fooling_ratio", "grad_cosine"),
                     columns=2, height=260, x_axis="step")


__all__ = ["entry_recording", "home_section", "library_section", "provenance_note", "race_section",
           "replay_panel", "shipped_races"]
