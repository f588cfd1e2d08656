"""Who may do what when the app is served to others (a class on one server): the pages only ask this module.

Settings — an environment variable first, else the ``[uap]`` table of ``.streamlit/secrets.toml``:

``UAP_CLASSROOM`` / ``classroom``
    ``1``/``true``: classroom mode on; ``0``/``false``: off. Unset: on when the server listens beyond this machine
    (``server.address`` unset — Streamlit then listens on every interface — or ``0.0.0.0`` / a network address),
    off when it listens on ``127.0.0.1`` / ``localhost`` only.
``UAP_ALLOWED_FOLDERS`` / ``allowed_folders``
    Folders of this machine visitors may read images from (``os.pathsep``-separated, or a TOML list), sub-folders
    included. None by default: visitors use the embedded samples and their uploads.
``UAP_MAX_UPLOAD_MB`` / ``max_upload_mb``
    The most a visitor uploads at once (all files of one upload together, checked with a clear message), default
    20 MB. Everyone is also held to ``server.maxUploadSize`` per file (50 MB in .streamlit/config.toml).
``UAP_VISITOR_DIR`` / ``visitor_dir``
    Where visitors' own library spaces live (default ``<library>/.visitors``, one sub-folder per visitor).
``UAP_VISITOR_MAX_ENTRIES`` / ``visitor_max_entries``
    Perturbations one visitor may keep in their space (default 50).
``UAP_CHECKPOINT_SECONDS`` / ``checkpoint_seconds``
    How often a Generate run writes its checkpoint into its space (default 60; the runs kept across a restart:
    :mod:`uap_ui.saved_runs`). ``UAP_SHUTDOWN_SECONDS`` (environment only): how long a stopping server waits for the
    runs' last checkpoints (default 30; :mod:`uap_ui.shutdown`).
``owner_password`` (top level of secrets.toml, or ``UAP_OWNER_PASSWORD``)
    Lets its holder rename and delete entries of the owner's library from any browser.

Who is who in classroom mode:

- **The owner**: a browser on the server machine itself (its connection comes from 127.0.0.1 / ::1) while
  classroom mode is automatic. With ``UAP_CLASSROOM=1`` every browser is a visitor, local ones too (behind a
  reverse proxy on the same machine every connection looks local). The owner works as without classroom mode.
- **Visitors**: everyone else. A visitor's saves and imports go to their own space, a sub-folder keyed by a hash
  of their workspace token (the ``?ws=`` of their address: keeping that address keeps their space). They see the
  shipped zoo and the owner's library read-only ("owner: …" entries); renaming or deleting an owner entry takes
  the owner's password. Folder and .npz paths are limited to the allowed folders; uploads to UAP_MAX_UPLOAD_MB.

Outside classroom mode everyone is the owner (one person on their own machine).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import streamlit as st

from uap_core.errors import ImageSourceError, ParameterError
from uap_core.library import CombinedLibrary, LibraryEntry, UAPLibrary, library_root, shipped_dir, shipped_library
from uap_core.models.ensemble import member_names
from uap_core.models.file import FILE_PREFIX

from . import scheduler
from .session import workspace_token

log = logging.getLogger(__name__)

OWNER_SOURCE = "owner"  # entries of the owner's library, as a visitor sees them: "owner: <name>"
DEFAULT_VISITOR_UPLOAD_MB = 20.0
DEFAULT_VISITOR_MAX_ENTRIES = 50
_OWNER_UNLOCKED = "_uap_owner_unlocked"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}

LIBRARY_LOCK = threading.RLock()  # one library operation at a time across sessions (every library of this module)


# ---------------------------------------------------------------------------------------------- plain rules
def classroom_from(setting: Any, address: str | None) -> bool:
    """Classroom mode from its setting (True/False/"1"/"0"/…; None: automatic) and ``server.address``."""
    if setting is not None and str(setting).strip() != "":
        text = str(setting).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        log.warning("classroom = %r is not understood (use 1/true or 0/false): classroom mode is on", setting)
        return True
    return not is_loopback(address)


def is_loopback(address: str | None) -> bool:
    """True for 127.0.0.1, ::1, localhost; False for an unset address (every interface), 0.0.0.0 or others."""
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def password_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; never True without a configured, non-empty password."""
    if not expected or not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), str(expected).encode("utf-8"))


def path_allowed(path: str | os.PathLike, folders: Iterable[str | os.PathLike]) -> bool:
    """True when ``path`` (symbolic links and '..' resolved) is one of ``folders`` or lies inside one."""
    try:
        target = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    for folder in folders:
        try:
            root = Path(folder).expanduser().resolve()
        except (OSError, RuntimeError, ValueError):
            continue
        if target == root or target.is_relative_to(root):
            return True
    return False


def visitor_folder_name(token: str) -> str:
    """The folder of a visitor's space: a hash of their workspace token (the token itself never shows)."""
    return "v-" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


def parse_folders(value: Any) -> list[Path]:
    """``allowed_folders`` from a TOML list or an os.pathsep-separated string."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(os.pathsep)
    return [Path(str(item).strip()).expanduser() for item in items if str(item).strip()]


# ---------------------------------------------------------------------------------------------- settings
def _secrets_get(name: str, table: str | None = "uap") -> Any:
    try:
        if table is None:
            return st.secrets.get(name)
        section = st.secrets.get(table)
        return section.get(name) if section is not None else None
    except Exception:  # noqa: BLE001 - no secrets.toml (the usual case) or an unreadable one: no setting
        return None


def setting(name: str, default: Any = None) -> Any:
    """``UAP_<NAME>`` from the environment, else ``[uap] <name>`` from secrets.toml, else ``default``."""
    value = os.environ.get(f"UAP_{name.upper()}")
    if value is not None and value.strip() != "":
        return value
    value = _secrets_get(name)
    return default if value is None else value


def _number(name: str, default: float) -> float:
    raw = setting(name)
    try:
        value = float(raw) if raw is not None else default
    except (TypeError, ValueError):
        value = -1.0
    if value <= 0:
        log.warning("%s = %r is not a positive number; using %g", name, raw, default)
        return default
    return value


def classroom() -> bool:
    """Is the app served to a class (see the module docstring)?"""
    return classroom_from(setting("classroom"), st.get_option("server.address"))


def classroom_forced() -> bool:
    value = setting("classroom")
    return value is not None and str(value).strip().lower() in _TRUE


def owner_password() -> str | None:
    value = os.environ.get("UAP_OWNER_PASSWORD") or _secrets_get("owner_password", table=None)
    return str(value) if value else None


def allowed_folders() -> list[Path]:
    return parse_folders(setting("allowed_folders"))


def apply_server_settings() -> None:
    """``[uap] max_runs`` / ``max_gpu_runs`` from secrets.toml when the environment sets none (once)."""
    if st.session_state.get("_uap_settings_applied"):
        return
    st.session_state["_uap_settings_applied"] = True
    for name, pool in (("max_runs", scheduler.CPU), ("max_gpu_runs", scheduler.GPU)):
        if os.environ.get(f"UAP_{name.upper()}"):
            continue  # the scheduler read it at creation
        value = _secrets_get(name)
        if value is not None:
            try:
                scheduler.get().set_capacity(pool, int(value))
            except (TypeError, ValueError):
                log.warning("[uap] %s = %r is not a whole number of at least 1; ignored", name, value)


# ---------------------------------------------------------------------------------------------- this session
def local_connection() -> bool:
    """True when this browser runs on the server machine (or there is no browser: tests, bare mode)."""
    address = st.context.ip_address
    return not isinstance(address, str) or is_loopback(address)


def is_owner() -> bool:
    """The owner works with the owner's library and any folder (see the module docstring)."""
    if not classroom():
        return True
    return local_connection() and not classroom_forced()


def owner_unlocked() -> bool:
    """The owner's password was given in this browser session (it may then manage the owner's library)."""
    return bool(st.session_state.get(_OWNER_UNLOCKED))


def visitor_root() -> Path:
    configured = setting("visitor_dir")
    return Path(str(configured)).expanduser() if configured else library_root() / ".visitors"


def space_name() -> str | None:
    """This visitor's space folder name; None for the owner."""
    return None if is_owner() else visitor_folder_name(workspace_token())


class VisitorLibrary(CombinedLibrary):
    """A visitor's view: their own space (writable, at most ``max_entries``) plus read-only sources."""

    def __init__(self, own: UAPLibrary, read_only: list[UAPLibrary], max_entries: int) -> None:
        super().__init__(own, read_only)
        self.max_entries = max_entries

    def _check_room(self, name: str) -> None:
        entries = self.own.list()
        if len(entries) >= self.max_entries and name not in {e.name for e in entries}:
            raise ParameterError(f"your space holds {len(entries)} perturbations, the most this server keeps per "
                                 f"visitor; delete one on the Library page first")

    def save(self, name, delta, metadata, overwrite=False) -> LibraryEntry:
        self._check_room(name)
        return super().save(name, delta, metadata, overwrite=overwrite)

    def import_bytes(self, name, data, filename) -> LibraryEntry:
        self._check_room(name)
        return super().import_bytes(name, data, filename)


@st.cache_resource(show_spinner=False)
def _owner_library(root: str, shipped: str) -> CombinedLibrary:
    return CombinedLibrary(UAPLibrary(root), [shipped_library(shipped)])


def owner_library() -> CombinedLibrary:
    """The owner's UAP library at $UAP_LIBRARY_DIR (default ~/.uap_explorer/library), with the shipped zoo
    (``assets/uaps``) listed first, read-only, its names prefixed "shipped: "."""
    return _owner_library(str(library_root()), str(shipped_dir()))


@st.cache_resource(max_entries=256, show_spinner=False)
def _visitor_library(space: str, visitor_dir: str, owner_root: str, shipped: str, max_entries: int) -> VisitorLibrary:
    own = UAPLibrary(Path(visitor_dir) / space)
    owner = UAPLibrary(owner_root, read_only=True, source=OWNER_SOURCE)
    return VisitorLibrary(own, [shipped_library(shipped), owner], max_entries)


def library() -> CombinedLibrary:
    """The library this browser session lists, loads and saves to: the owner's (with the shipped zoo), or for a
    visitor their own space plus the shipped zoo and the owner's library, both read-only."""
    space = space_name()
    if space is None:
        return owner_library()
    max_entries = int(_number("visitor_max_entries", DEFAULT_VISITOR_MAX_ENTRIES))
    return _visitor_library(space, str(visitor_root()), str(library_root()), str(shipped_dir()), max_entries)


def manage_rights(entry: LibraryEntry) -> str:
    """What this session may do to ``entry``: "manage" (rename, delete), "password" (an owner entry: with the
    owner's password) or "read"."""
    if entry.source == OWNER_SOURCE:
        if owner_unlocked():
            return "manage"
        return "password" if owner_password() else "read"
    return "read" if entry.read_only else "manage"


def manage_target(entry: LibraryEntry, password: str | None = None) -> tuple[Any, str]:
    """(library, name) that renaming or deleting ``entry`` goes to, after checking this session's rights.

    Raises ParameterError with the reason (a read-only entry, a missing or wrong owner password)."""
    if entry.source == OWNER_SOURCE:
        if not owner_unlocked():
            expected = owner_password()
            if not expected:
                raise ParameterError("the owner's library is read-only here: no owner password is set on this "
                                     "server (owner_password in .streamlit/secrets.toml)")
            if not password_matches(password, expected):
                raise ParameterError("wrong owner password: nothing was changed")
            st.session_state[_OWNER_UNLOCKED] = True
        return owner_library().own, entry.name.split(": ", 1)[1]
    if entry.read_only:
        raise ParameterError(f"{entry.name!r} is read-only ({entry.source}): it cannot be renamed or deleted")
    return library(), entry.name


# ---------------------------------------------------------------------------------------------- folders, uploads
@dataclass(frozen=True)
class FolderAccess:
    """Which paths of this machine the session may read images from: any (``anywhere``) or ``folders``."""

    anywhere: bool
    folders: tuple[Path, ...] = ()

    @property
    def none(self) -> bool:
        return not self.anywhere and not self.folders

    def describe(self) -> str:
        if self.anywhere:
            return "any folder of this machine"
        if not self.folders:
            return "no folder of this machine (this server shares none with visitors)"
        return "only " + ", ".join(f"`{f}`" for f in self.folders) + " (and their sub-folders)"


def folder_access() -> FolderAccess:
    return FolderAccess(True) if is_owner() else FolderAccess(False, tuple(allowed_folders()))


def check_path(path: str, default: str | None = None) -> None:
    """Raise ImageSourceError when this session may not read ``path`` (a folder, a .npz, a saved file). ``default``:
    a value the owner configured (a study's default data set), always allowed."""
    access = folder_access()
    if access.anywhere or path == "samples" or (default is not None and str(path) == str(default)):
        return
    if access.none:
        raise ImageSourceError("this server does not let visitors read its folders: use the embedded samples or "
                               "upload images")
    if not path_allowed(path, access.folders):
        raise ImageSourceError(f"{path} is outside the folders this server shares; allowed: "
                               + ", ".join(str(f) for f in access.folders))


def check_model_name(name: str) -> None:
    """Raise ImageSourceError when this session may not read a classifier file that ``name`` names: a
    ``file:PATH?…`` model, alone or as any member of an ensemble ``a,file:PATH,…``."""
    for member in member_names(name):
        if member.startswith(FILE_PREFIX):
            check_path(member[len(FILE_PREFIX):].split("?", 1)[0])


def upload_limit_mb() -> float:
    """In MB: for a visitor, the most one upload may weigh (all its files together); for the owner, one file."""
    server = float(st.get_option("server.maxUploadSize"))
    if is_owner():
        return server
    return min(server, _number("max_upload_mb", DEFAULT_VISITOR_UPLOAD_MB))


def check_upload(total_bytes: int) -> None:
    """Raise ParameterError when a visitor's upload (all its files together) is over the limit. The owner is held
    only to Streamlit's ``server.maxUploadSize`` per file."""
    if is_owner():
        return
    limit = upload_limit_mb()
    if total_bytes > limit * 1024 * 1024:
        raise ParameterError(f"the upload is {total_bytes / 1024 / 1024:.1f} MB; this server takes at most "
                             f"{limit:g} MB at once from a visitor: upload fewer or smaller files")


# ---------------------------------------------------------------------------------------------- sidebar
def sidebar_note() -> None:
    """In classroom mode: who this session is, and how busy the server is."""
    if not classroom():
        return
    status = {p.name: p for p in scheduler.get().status()}
    cpu = status[scheduler.CPU]
    busy = f"Server: {cpu.running}/{cpu.capacity} runs going, {cpu.waiting} waiting."
    if is_owner():
        st.caption(f":material/school: Classroom mode (others can open this app) — you are the **owner**: this "
                   f"machine's browser. {busy}")
    else:
        st.caption(f":material/school: Classroom mode — your own space `{space_name()}` keeps what you save. "
                   f"Keep this page's address (its `?ws=…`) to find it again. {busy}")
