"""Which workspace (jobs, kept runs) this browser session sees.

A browser refresh starts a new Streamlit session (and clears session-scoped caches), so the workspace is keyed by a
random token kept in the URL (``?ws=…``): the refreshed page finds its running job again. A session-scoped cached
"presence" handle attaches the session to the workspace; its release hook (the browser went away) detaches it, and
a workspace left without sessions has its jobs stopped after a grace period (see :mod:`uap_ui.jobs`).
"""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass

import streamlit as st

from . import jobs

TOKEN_PARAM = "ws"
_TOKEN_KEY = "_uap_workspace_token"
_TOKEN_FORMAT = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


@dataclass
class Presence:
    """One browser session's hold on a workspace."""

    token: str
    session_id: str


def _release(presence: Presence) -> None:
    jobs.detach(presence.token, presence.session_id)


@st.cache_resource(scope="session", on_release=_release, show_spinner=False)
def _presence(token: str) -> Presence:
    presence = Presence(token, uuid.uuid4().hex)
    jobs.attach(token, presence.session_id)
    return presence


def workspace_token() -> str:
    """This session's workspace token: from session state, else the URL, else a new one (written to the URL)."""
    token = st.session_state.get(_TOKEN_KEY)
    url_token = st.query_params.get(TOKEN_PARAM)
    if token is None:
        token = url_token if isinstance(url_token, str) and _TOKEN_FORMAT.match(url_token) else \
            secrets.token_urlsafe(12)
        st.session_state[_TOKEN_KEY] = token
    if url_token != token:
        st.query_params[TOKEN_PARAM] = token
    return token


def current_workspace() -> jobs.Workspace:
    """The workspace of this browser session (attaching the session to it)."""
    token = workspace_token()
    presence = _presence(token)
    return jobs.attach(token, presence.session_id)

