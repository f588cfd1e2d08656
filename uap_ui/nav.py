"""The sidebar menu, drawn with ``st.page_link`` so that the home page reads "Home" (not the file name "app").

Streamlit's own file-name menu is hidden (``client.showSidebarNavigation = false`` in .streamlit/config.toml);
the ``pages/`` folder still defines the pages, so deep links such as ``/Generate`` keep working (``st.navigation``
would break them: see ../shared/docs/streamlit.md).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from uap_core.bundled import app_dir
from streamlit.errors import StreamlitAPIException

ROOT = app_dir() or Path(__file__).resolve().parent.parent  # the app's folder: the checkout, or uap_ui/_app

# (script relative to the app's folder, label, icon); a page whose file is absent is left out
PAGES = (
    ("app.py", "Home", ":material/home:"),
    ("pages/1_Generate.py", "Generate", ":material/auto_awesome:"),
    ("pages/2_Inspect.py", "Inspect", ":material/search:"),
    ("pages/3_Transfer.py", "Transfer", ":material/swap_horiz:"),
    ("pages/4_Library.py", "Library", ":material/inventory_2:"),
    ("pages/5_Studies.py", "Studies", ":material/science:"),
)


def menu() -> None:
    """Draw the menu in the sidebar (call once per page, inside ``with st.sidebar``).

    Under ``streamlit.testing`` (AppTest runs one page script alone, with no app around it) the pages are not
    registered and ``st.page_link`` raises: the menu is then left out (the browser tests check it for real).
    """
    for script, label, icon in PAGES:
        if (ROOT / script).is_file():
            try:
                st.page_link(script, label=label, icon=icon)
            except StreamlitAPIException:
                return
