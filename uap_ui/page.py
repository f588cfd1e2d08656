"""What every page does first: its page config, the server's settings, the sidebar (menu, notes) and this browser
session's workspace (with its runs kept on disk)."""

from __future__ import annotations

import streamlit as st

from . import jobs, nav, saved_runs, shutdown, spaces
from .session import current_workspace


def setup_page(title: str, icon: str = ":material/blur_on:") -> jobs.Workspace:
    """Common page setup: page config, sidebar note, and this session's workspace (returned)."""
    st.set_page_config(page_title=f"{title} · UAP Explorer", page_icon=icon, layout="wide")
    workspace = current_workspace()
    spaces.apply_server_settings()
    saved_runs.attach_store(workspace)  # its runs kept on disk: shown again after a restart of the server
    shutdown.install()  # a stopping server checkpoints the runs going
    with st.sidebar:
        nav.menu()
        st.caption("UAP Explorer — universal adversarial perturbations, live.")
        running = workspace.running()
        if running:
            st.caption(f"{len(running)} run(s) in progress: " + ", ".join(j.label for j in running))
        spaces.sidebar_note()
    return workspace
