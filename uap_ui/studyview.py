"""The Studies page's glue: a settings form built from a study's Settings (params.describe), the study running as
a background :class:`~uap_ui.jobs.Task`, its tables as they arrive, its figure and downloads. No study math here.

A running study is the workspace's task named :data:`TASK` (one study at a time per browser session). The task's
function iterates ``Study.run`` and returns the final :class:`~uap_core.studies.StudyResult`; the latest
:class:`~uap_core.studies.StudyProgress` (the rows so far) is kept beside the task in :data:`_LIVE`, so the page can
draw the figure while it fills in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from uap_core.jsonable import jsonable
from uap_core.params import describe
from uap_core.studies import Study, StudyProgress, StudyResult, get_study
from uap_core.studies.base import table_csv
from uap_core.studies.needs import StudyNeeds, fetch_needs

from .jobs import Task, Workspace

TASK = "study"
COLUMNS = 3  # form fields per row


@dataclass
class StudyLive:
    """One running study and its latest progress (written by the worker thread, read by the page)."""

    study: Study
    progress: StudyProgress | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update(self, progress: StudyProgress) -> None:
        with self.lock:
            self.progress = progress

    def latest(self) -> StudyProgress | None:
        with self.lock:
            return self.progress

    def provisional(self) -> StudyResult:
        """The rows so far as a StudyResult (summary empty), for the figure while the study runs."""
        progress = self.latest()
        study = self.study
        tables = progress.tables if progress is not None else {name: [] for name in study.table_names}
        return StudyResult(study=study.name, title=study.title, settings=jsonable(dataclasses.asdict(study.settings)),
                           tables=tables)


_LIVE: "weakref.WeakKeyDictionary[Any, StudyLive]" = weakref.WeakKeyDictionary()
_LIVE_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------- running
def start_study(workspace: Workspace, name: str, values: dict[str, Any]) -> Task:
    """Validate ``values`` (raises ParameterError / UAPError for the page to show), then run study ``name`` in the
    background as the workspace's study task (replacing, and stopping, the previous one)."""
    cls = get_study(name)
    study = cls(settings=values)
    live = StudyLive(study)

    def work(report, stopped) -> StudyResult | None:
        for progress in study.run(should_stop=stopped):
            live.update(progress)
            report(progress.fraction, progress.message)
        return study.result

    device = getattr(study.settings, "device", "auto")
    from uap_core.models import resolve_device

    task = Task(work, f"study: {cls.title}", uses_gpu=resolve_device(device).type == "cuda")
    with _LIVE_LOCK:
        _LIVE[task] = live
    old = workspace.task(TASK)
    if old is not None and old.active:
        stop(workspace)
    workspace.set_task(TASK, task)
    task.start()
    return task


def current(workspace: Workspace) -> tuple[Any, StudyLive | None]:
    """The workspace's study task (or None) and its live state (None when the server restarted since)."""
    task = workspace.task(TASK)
    if task is None:
        return None, None
    with _LIVE_LOCK:
        return task, _LIVE.get(task)


def stop(workspace: Workspace) -> None:
    """The Stop button: the study ends after the current step of its current run; the rows so far are kept."""
    task, live = current(workspace)
    if live is not None:
        live.study.stop()
    if task is not None:
        task.stop()


# ---------------------------------------------------------------------------------------------- the form
def number_text(value: float) -> str:
    """0.0313… → "8/255" (an L∞ budget's usual spelling), other floats as short decimals."""
    if 0 < value < 1 and math.isclose(value * 255, round(value * 255), abs_tol=1e-9):
        return f"{round(value * 255)}/255"
    return f"{value:g}"


def settings_form(cls: type[Study], prefix: str, defaults: dict[str, Any] | None = None,
                  skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """One widget per setting of ``cls.Settings`` (their help as tooltips), laid out in rows of COLUMNS; returns
    the raw values (uap_core.params.parse_params validates them when the study is built). Lists without choices are
    comma-separated text, lists with choices multiselects, floats text (n/255 accepted). ``defaults`` replace the
    settings' own (a setup's, :func:`uap_core.studies.setups.setup_defaults`); ``skip``: settings given elsewhere
    on the page (e.g. the images, from an image picker)."""
    values: dict[str, Any] = {}
    specs = [{**spec, "default": (defaults or {}).get(spec["name"], spec["default"])}
             for spec in describe(cls.Settings) if spec["form"] and spec["name"] not in skip]
    for start in range(0, len(specs), COLUMNS):
        columns = st.columns(COLUMNS)
        for column, spec in zip(columns, specs[start:start + COLUMNS]):
            with column:
                values[spec["name"]] = _widget(spec, f"{prefix}_{cls.name}_{spec['name']}")
    return values


def _widget(spec: dict[str, Any], key: str) -> Any:
    kind, default, choices = spec["type"], spec["default"], spec.get("choices")
    label, help_text = spec["label"].capitalize(), spec["hint"]
    if kind.startswith("list["):
        if choices:
            return st.multiselect(label, list(choices), default=[d for d in default if d in choices], key=key,
                                  help=help_text)
        return st.text_input(label, value=",".join(number_text(d) if isinstance(d, float) else str(d)
                                                    for d in default), key=key, help=help_text + " (comma-separated)")
    if choices:
        options = list(choices)
        return st.selectbox(label, options, index=options.index(default) if default in options else 0, key=key,
                            help=help_text)
    if kind == "bool":
        return st.checkbox(label, value=bool(default), key=key, help=help_text)
    if kind == "int":
        low = int(spec["min"]) if spec.get("min") is not None else None
        high = int(spec["max"]) if spec.get("max") is not None and spec["max"] < 2**53 else None
        return st.number_input(label, value=int(default), min_value=low, max_value=high, step=1, key=key,
                               help=help_text)
    if kind == "float":
        return st.text_input(label, value=number_text(float(default)), key=key, help=help_text + " (n/255 accepted)")
    return st.text_input(label, value=str(default), key=key, help=help_text)


def check_paths(cls: type[Study], values: dict[str, Any]) -> None:
    """On a class server a visitor may read only the folders the server shares and writes no file of the server:
    the image source (its default, which the owner set up, is allowed), a UAP given as a path, ``file:`` models
    are checked like the other pages' (ImageSourceError with the allowed folders), and a setting that writes a file
    (``save_weights``) is the owner's alone (ParameterError)."""
    from uap_core.errors import ParameterError
    from uap_core.models.file import FILE_PREFIX

    from . import spaces

    defaults = {spec["name"]: spec["default"] for spec in describe(cls.Settings)}
    for name, value in values.items():
        texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
            if isinstance(value, (list, tuple)) else []
        for text in (t.strip() for t in texts):
            if not text:
                continue
            if name == "images":
                spaces.check_path(text, default=str(defaults.get(name)))
            elif name == "save_weights":
                if not spaces.is_owner():
                    raise ParameterError("only the server's owner may write files on it: leave 'save_weights' "
                                         "empty (the study reports the fine-tuned model's figures all the same)")
            elif name == "uap" and not text.startswith("shipped: ") and ("/" in text or "\\" in text
                                                                          or "." in text.rsplit("/", 1)[-1]):
                spaces.check_path(text)
            for member in text.split(","):  # a model, or an ensemble a,b: file: members are paths
                if member.strip().startswith(FILE_PREFIX):
                    spaces.check_path(member.strip()[len(FILE_PREFIX):].split("?", 1)[0])


# ---------------------------------------------------------------------------------------------- before the start
def show_needs(needs: StudyNeeds) -> None:
    """What the study needs (models, images, downloads), one line each, before it starts."""
    icons = {"ready": ":material/check_circle:", "download": ":material/download:", "missing": ":material/error:"}
    lines = "\n".join(f"- {icons.get(item.state, '')} {item.text}" for item in needs.items)
    st.markdown(f"**This study needs** (with the settings as last submitted):\n{lines}")


def fetch_with_progress(needs: StudyNeeds) -> None:
    """Download what ``needs`` lists as due, one ``st.progress`` bar per file (MB done of MB in all). Raises the
    core's one-line DownloadError when offline; what was fetched before stays in the cache."""
    bars: dict[str, Any] = {}

    def report(what: str, done: int, total: int) -> None:
        text = f"downloading {what}: {done / 1e6:.1f} of {total / 1e6:.1f} MB" if total else f"downloading {what}"
        bar = bars.get(what)
        fraction = min(1.0, done / total) if total else 0.0
        if bar is None:
            bars[what] = st.progress(fraction, text=text)
        else:
            bar.progress(fraction, text=text)

    fetch_needs(needs, progress=report)


# ---------------------------------------------------------------------------------------------- results
def figure_of(result: StudyResult):
    """The study's own figure of ``result`` (its class by name)."""
    return get_study(result.study).figure(result)


def json_bytes(result: StudyResult) -> bytes:
    return json.dumps(jsonable(result.as_json()), indent=1).encode()


def downloads(result: StudyResult, key: str) -> None:
    """Download buttons: each table as CSV, everything as JSON, the figure as a self-contained HTML."""
    tables = list(result.tables.items())
    columns = st.columns(len(tables) + 2)
    for i, (name, rows) in enumerate(tables):
        stem = result.study if i == 0 else f"{result.study}_{name}"
        columns[i].download_button(f"{name} (.csv)", data=table_csv(rows), file_name=f"{stem}.csv", mime="text/csv",
                                   on_click="ignore", key=f"{key}_csv_{name}", icon=":material/download:")
    columns[-2].download_button("Everything (.json)", data=json_bytes(result), file_name=f"{result.study}.json",
                                mime="application/json", on_click="ignore", key=f"{key}_json",
                                icon=":material/data_object:")
    columns[-1].download_button(
        "Figure (.html)", data=lambda: figure_of(result).to_html(include_plotlyjs=True, full_html=True).encode(),
        file_name=f"{result.study}.html", mime="text/html", on_click="ignore", key=f"{key}_html",
        icon=":material/insert_chart:")


def about(cls: type[Study]) -> str:
    """The study module's docstring (the paper's claim, what is measured, where it differs, the measured numbers)."""
    return (sys.modules[cls.__module__].__doc__ or "").strip()


__all__ = ["TASK", "StudyLive", "about", "check_paths", "current", "downloads", "fetch_with_progress", "figure_of",
           "json_bytes", "number_text", "settings_form", "show_needs", "start_study", "stop"]
