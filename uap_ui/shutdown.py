"""When the server process ends (SIGTERM, Ctrl-C): checkpoint the runs going, so that they resume after a restart.

Streamlit's server owns the main thread and its signal handlers: ``streamlit.web.bootstrap`` installs, once the
server has started, one handler for SIGTERM, SIGINT and SIGQUIT that asks uvicorn to exit; uvicorn then closes the
connections (seconds) before Streamlit's runtime stops and the process exits. The pages run in script threads,
where ``signal.signal`` is refused. Three hooks, installed from the first page (:func:`install`), work for
``streamlit run app.py`` and ``uap app`` alike:

- **at the signal**: the runtime's event loop runs in the main thread (found through public API: the loop of the
  runtime's ``stopped`` future); a callback scheduled there wraps Streamlit's SIGTERM and SIGINT handlers: the
  wrapper starts :func:`interrupt_running` in a thread of its own (a signal handler must not wait for locks) and
  calls Streamlit's handler. Every run with a checkpoint policy then ends after its current step
  (:meth:`uap_ui.jobs.Job.interrupt`: the run writes its checkpoint, the job is not kept as finished);
- **when the runtime stops** (a fallback, should the wrapping fail or the server be stopped otherwise): a watcher
  thread sees Streamlit's runtime enter its STOPPING state within :data:`WATCH_SECONDS` and does the same;
- **at exit**: the process exits normally, which runs the :mod:`atexit` hook while the job threads (daemon
  threads) still run: it interrupts any run not yet interrupted and waits for them all, at most
  ``UAP_SHUTDOWN_SECONDS`` (default 30) in all.

A process killed outright (SIGKILL, power loss) runs none of them: its runs resume from their last periodic
checkpoint.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
from typing import Any

from . import jobs

log = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_SECONDS = 30.0
WATCH_SECONDS = 0.25  # how often the watcher looks at the runtime's state
_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Register the exit hook and start the watcher (once per process; from any thread)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
    atexit.register(checkpoint_running)
    threading.Thread(target=_watch_runtime, name="uap-shutdown-watch", daemon=True).start()
    _wrap_signal_handlers_soon()


SIGNALS = ("SIGTERM", "SIGINT")  # the ones Streamlit's handler stops the server on (SIGQUIT too: left alone)


def _wrap_signal_handlers_soon() -> None:
    """Schedule :func:`wrap_signal_handlers` on the main thread's event loop (Streamlit's runtime's)."""
    try:
        from streamlit.runtime import Runtime

        if not Runtime.exists():
            return
        loop = Runtime.instance().stopped.get_loop()  # the runtime's event loop: the main thread's
        loop.call_soon_threadsafe(wrap_signal_handlers)
    except Exception as exc:  # noqa: BLE001 - another Streamlit, AppTest's runtime: the other hooks do the work
        log.debug("signal handlers not wrapped (%s); the runtime watcher and the exit hook remain", exc)


def wrap_signal_handlers() -> list[str]:
    """In the main thread: wrap the present SIGTERM / SIGINT handlers (Streamlit's) so that a signal first starts
    interrupting the checkpointing runs, then does what it did. Handlers that are not Python functions (the
    default action, ignored) are left alone. Returns the names of the signals wrapped now."""
    wrapped = []
    for name in SIGNALS:
        number = getattr(signal, name, None)
        previous = signal.getsignal(number) if number is not None else None
        if not callable(previous) or getattr(previous, "_uap_checkpoints", False):
            continue

        def handler(signum: int, frame: Any, previous=previous) -> None:
            threading.Thread(target=interrupt_running, name="uap-shutdown", daemon=True).start()
            previous(signum, frame)

        handler._uap_checkpoints = True  # type: ignore[attr-defined]
        signal.signal(number, handler)
        wrapped.append(name)
    return wrapped


def _runtime_stopping() -> bool | None:
    """True once Streamlit's runtime is stopping; None where there is none (AppTest, bare mode)."""
    try:
        from streamlit.runtime import Runtime, RuntimeState

        if not Runtime.exists():
            return None
        return Runtime.instance().state in (RuntimeState.STOPPING, RuntimeState.STOPPED)
    except Exception:  # noqa: BLE001 - another Streamlit: the exit hook alone does the work
        return None


def _watch_runtime() -> None:
    while True:
        stopping = _runtime_stopping()
        if stopping is None:
            return
        if stopping:
            interrupt_running()
            return
        time.sleep(WATCH_SECONDS)


def _wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("UAP_SHUTDOWN_SECONDS") or DEFAULT_SHUTDOWN_SECONDS))
    except ValueError:
        return DEFAULT_SHUTDOWN_SECONDS


def checkpointing_jobs() -> list[jobs.Job]:
    """The active jobs whose run writes checkpoints (each once, whichever workspaces show it)."""
    found: dict[int, jobs.Job] = {}
    for workspace in jobs.all_workspaces():
        for job in workspace.jobs():
            run = job.run
            if job.active and run is not None and run.checkpoints is not None:
                found.setdefault(job.id, job)
    return list(found.values())


def interrupt_running() -> list[jobs.Job]:
    """Ask every active run that writes checkpoints to end after its current step, writing its checkpoint; the
    jobs asked (without waiting for them)."""
    running = [job for job in checkpointing_jobs() if not job.interrupted]
    if running:
        log.warning("shutting down: writing the checkpoints of %d run(s)", len(running))
    for job in running:
        job.interrupt()
    return running


def checkpoint_running(timeout: float | None = None) -> int:
    """Interrupt the runs that write checkpoints (:func:`interrupt_running`) and wait for them to end, at most
    ``timeout`` seconds in all (default ``UAP_SHUTDOWN_SECONDS``). Returns how many were waited for."""
    interrupt_running()
    waiting = [job for workspace in jobs.all_workspaces() for job in workspace.jobs() if job.interrupted]
    waiting = list({job.id: job for job in waiting}.values())
    deadline = time.monotonic() + (_wait_seconds() if timeout is None else timeout)
    for job in waiting:
        if not job.join(max(0.0, deadline - time.monotonic())):
            log.warning("run %s did not reach its checkpoint in time; its last periodic checkpoint stays", job.label)
    return len(waiting)
