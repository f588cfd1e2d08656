"""The pages' side of keeping runs across a restart: which folder a workspace's runs go to, loading them into the
workspace, and the Resume / Discard of a run the restart interrupted (the storage itself: :mod:`uap_ui.runstore`).

Where: in the owner's space (``$UAP_LIBRARY_DIR/.runs/w-…``) for the owner's browser, in the visitor's own space
(``<visitor space>/.runs``) for a visitor — both keyed by the workspace token of the page's address (``?ws=…``), so
reopening the same address after a restart shows the same runs; a visitor sees only their own. How often a run
started from the app writes its checkpoint: ``UAP_CHECKPOINT_SECONDS`` (or ``checkpoint_seconds`` under ``[uap]``
in secrets.toml; default 60).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import streamlit as st

from uap_core.checkpoint import load_checkpoint
from uap_core.errors import UAPError
from uap_core.library import library_root

from . import cache, spaces, widgets
from .jobs import Job, Workspace
from .runstore import DEFAULT_CHECKPOINT_SECONDS, RunStore

log = logging.getLogger(__name__)

RUNS_FOLDER = ".runs"  # hidden: the library lists only its top-level .safetensors


def store_folder(token: str, owner: bool) -> Path:
    """The folder of the runs of workspace ``token``: in the owner's space or in the visitor's."""
    if owner:
        return library_root() / RUNS_FOLDER / ("w-" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16])
    return spaces.visitor_root() / spaces.visitor_folder_name(token) / RUNS_FOLDER


def checkpoint_seconds() -> float:
    raw = spaces.setting("checkpoint_seconds")
    try:
        value = float(raw) if raw is not None else DEFAULT_CHECKPOINT_SECONDS
    except (TypeError, ValueError):
        value = -1.0
    if value <= 0:
        log.warning("checkpoint_seconds = %r is not a positive number; using %g", raw, DEFAULT_CHECKPOINT_SECONDS)
        return DEFAULT_CHECKPOINT_SECONDS
    return value


def attach_store(workspace: Workspace) -> RunStore:
    """Give ``workspace`` its store on its first page in this server process, and show the runs kept there: the
    finished ones, the demo, and those a restart interrupted."""
    with workspace.lock:
        if workspace.store is not None:
            return workspace.store
        store = RunStore(store_folder(workspace.token, spaces.is_owner()), checkpoint_seconds())
        restored = store.load()
        for item in restored:
            item.job.watch(workspace.token)
            if item.role == "demo":
                if workspace.demo is not None:  # one demo is shown: an older record left by a crash goes
                    store.forget(workspace.demo, "demo")
                workspace.demo = item.job
            else:
                workspace.runs.append(item.job)
        workspace.store = store
    return store


def image_record(choice: "widgets.ImageChoice") -> dict | None:
    """The image choice as a record keeps it, to resume the run on the same images (None for uploads: their bytes
    are not kept)."""
    if choice.kind == "upload":
        return None
    return {"kind": choice.kind, "source": choice.source, "uploaded": choice.uploaded}


def resume(workspace: Workspace, job: Job) -> None:
    """Resume: continue the interrupted run ``job`` from its checkpoint (or, without one, start it again) in its
    place; errors are shown in the page."""
    from uap_core.run import Run

    store = workspace.store
    record = store.record(job) if store is not None else None
    if record is None:
        st.error("This run is no longer kept: nothing to resume.", icon=":material/error:")
        return
    if not record.get("images"):
        st.error("This run cannot be resumed: it ran on uploaded images, which are not kept across a restart. "
                 "Discard it and start it again.", icon=":material/error:")
        return
    name = record["name"]
    try:
        choice = widgets.ImageChoice(**record["images"])
        widgets.check_image_choice(choice)
        checkpoint_path = store.path(name, ".checkpoint")
        saved = load_checkpoint(checkpoint_path) if record.get("checkpoint_step") is not None else None
        config = saved.resumed_config() if saved is not None else job.config
        model = cache.model(config.model, config.device)
        images = widgets.load_image_choice(choice, config.model, config.input_size)
        run = Run(config, model=model, images=images, checkpoints=store.checkpoint_policy(name), resume=saved)
    except UAPError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    workspace.replace_run(job, Job(run, label=job.label, kind=job.kind).start())


def show_damaged(workspace: Workspace, role: str, key: str) -> None:
    """One line per saved run of ``role`` that could not be read, each with a Discard button."""
    store = workspace.store
    if store is None:
        return
    for i, damaged in enumerate(list(store.damaged)):
        if damaged.role != role:
            continue
        text, button = st.columns([6, 1], vertical_alignment="center")
        text.warning(damaged.line, icon=":material/warning:")
        button.button("Discard", key=f"{key}_damaged_{i}", on_click=store.discard_damaged, args=(damaged.name,),
                      help="Delete this saved run's files.")
