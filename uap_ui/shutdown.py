"""When the server process ends (SIGTERM, Ctrl-C): checkpoint the runs going, so that they resume after a restart.

Streamlit's server owns the main thread and its signal handlers (``streamlit.web.bootstrap`` installs one for
SIGTERM, SIGINT and SIGQUIT that stops the server; the pages run in script threads, where ``signal.signal`` is not
allowed). Its handler ends the event loop and the process exits normally, which runs the :mod:`atexit` hooks while
the job threads (daemon threads) still run — so the hook needs neither the main thread nor Streamlit's internals, and
works for ``streamlit run app.py`` and ``uap app`` alike. :func:`checkpoint_running` then asks every run with a
checkpoint policy to end after its current step (:meth:`uap_ui.jobs.Job.interrupt`: the run writes its checkpoint,
the job is not kept as finished) and waits for them, at most ``UAP_SHUTDOWN_SECONDS`` (default 30). A process
killed outright (SIGKILL, power loss) runs no hook: its runs resume from their last periodic checkpoint.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

from . import jobs

log = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_SECONDS = 30.0
_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Register the exit hook (once per process; from any thread)."""
    global _installed
    with _install_lock:
        if not _installed:
            atexit.register(checkpoint_running)
            _installed = True


def _wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("UAP_SHUTDOWN_SECONDS") or DEFAULT_SHUTDOWN_SECONDS))
    except ValueError:
        return DEFAULT_SHUTDOWN_SECONDS


def checkpoint_running(timeout: float | None = None) -> int:
    """End every active run that writes checkpoints after its current step, each writing its checkpoint, and wait
    for them (at most ``timeout`` seconds in all; default ``UAP_SHUTDOWN_SECONDS``). Returns how many were asked."""
    seen: set[int] = set()
    running: list[jobs.Job] = []
    for workspace in jobs.all_workspaces():
        for job in workspace.jobs():
            run = job.run
            if job.id not in seen and job.active and run is not None and run.checkpoints is not None:
                seen.add(job.id)
                running.append(job)
    if not running:
        return 0
    log.warning("shutting down: writing the checkpoints of %d run(s)", len(running))
    for job in running:
        job.interrupt()
    deadline = time.monotonic() + (_wait_seconds() if timeout is None else timeout)
    for job in running:
        if not job.join(max(0.0, deadline - time.monotonic())):
            log.warning("run %s did not reach its checkpoint in time; its last periodic checkpoint stays", job.label)
    return len(running)
