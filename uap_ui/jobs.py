"""Background work for the pages: a worker thread does the work; the page only polls.

Plain Python (no Streamlit import). One kind of background work, :class:`Job`, for everything long: a
``uap_core`` :class:`~uap_core.run.Run` (events so far, a CPU copy of the current δ, the result) or any function
``fn(report, stopped)`` (the transfer table, a study). Every job waits for a slot of the process-wide
:mod:`uap_ui.scheduler` before it begins, so a server shared by a class runs at most N jobs at once (one at a time
on a GPU) and a run's time limit counts its running time only. Pages read :meth:`Job.snapshot` and never block;
a waiting job's snapshot carries its place in the queue. :class:`Task` is the same job built from a function (the
name the Transfer and Studies pages use).

Shared runs: identical requests (the same validated RunConfig on the same images, hence the same δ) share one job
(:func:`shared_job`): every page that asked for it watches it live from the step it has reached, a finished one is
reused for :data:`SHARED_KEEP_SECONDS`. Each workspace that shows a job is one of its *watchers*: a Stop from one
watcher only detaches that watcher while others still watch (:meth:`Workspace.stop_job`); the last watcher's Stop
stops the run (its δ so far kept).

Jobs live in a :class:`Workspace`, one per browser session, kept in a process-wide registry keyed by a random
token (the page keeps it in the URL, so a refresh finds the same workspace). When the last browser session of a
workspace goes away, it stops watching its jobs after a short grace period (a refresh re-attaches in time): a job
nobody watches any more is stopped, except a run with a time limit of at most :data:`UNWATCHED_FINISH_SECONDS`
(the Home demo), which finishes so that a later identical request reuses its result.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import torch

from uap_core.algorithms import ALGORITHMS
from uap_core.errors import UAPError
from uap_core.images import ImageSet
from uap_core.models import Classifier
from uap_core.run import Run

from . import scheduler as scheduling

log = logging.getLogger(__name__)

RUNNING, QUEUED, DONE, FAILED, STOPPED = "running", "queued", "done", "failed", "stopped"
INTERRUPTED = "interrupted"  # a run the server's restart ended, restored from its checkpoint (uap_ui.runstore)
ACTIVE_STATES = (RUNNING, QUEUED)
DELTA_COPY_INTERVAL = 0.25  # seconds between CPU copies of the current δ during a run
GRACE_SECONDS = 15.0  # how long a workspace without any browser session keeps watching its jobs
IDLE_WORKSPACE_SECONDS = 3600.0  # detached workspaces with nothing running are forgotten after this
MAX_RUNS_SHOWN = 12  # finished runs kept for the comparison charts (oldest dropped first)
HOLDOUT_KEPT = 64  # held-out images a finished job keeps for pictures
SHARED_KEEP_SECONDS = float(os.environ.get("UAP_SHARED_KEEP_SECONDS") or 900.0)  # a finished shared run is
# reused by identical requests from other workspaces for this long (0: only runs still going are shared)
SHARED_MAX = 32  # shared runs remembered at most (the oldest finished ones are forgotten first)
UNWATCHED_FINISH_SECONDS = 600.0  # a run nobody watches still finishes when its time limit is at most this
SETUP_SECONDS = 5.0  # added to a run's time limit for its expected duration (model, images, baseline)

_ids = itertools.count(1)

Work = Union[Run, Callable[[Callable[[float, str], None], Callable[[], bool]], Any]]


def short_algorithm_name(name: str) -> str:
    """"sga" → "SGA", "sgd_uap" → "SGD-UAP", "uap" → "UAP" (the title up to its parenthesis)."""
    cls = ALGORITHMS.get(name)
    return cls.title.split(" (")[0] if cls else name


def run_label(algorithm: str, model: str, seed: int) -> str:
    """The legend entry of a run: algorithm + model + seed."""
    return f"{short_algorithm_name(algorithm)} · {model} · seed {seed}"


# ---------------------------------------------------------------------------------------------- jobs
@dataclass
class JobSnapshot:
    """A consistent, read-only view of a job at one moment (what a page draws).

    For a run: ``events`` (start / step / eval / done records), ``delta`` (the current δ, CPU), ``start_info``;
    for any job: ``progress`` (0…1), ``message``, ``result``, ``error``; while it waits: ``queue`` (its place and
    expected wait)."""

    id: int
    label: str
    state: str
    events: list[dict[str, Any]]
    delta: torch.Tensor | None
    error: str | None
    result: Any
    start_info: dict[str, Any]
    created: float
    stop_requested: bool
    progress: float = 0.0
    message: str = ""
    queue: scheduling.QueuePlace | None = None
    kind: str = "generate"
    watchers: int = 0
    delta_version: int = 0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def finished(self) -> bool:
        return not self.active

    @property
    def last_step(self) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e["kind"] == "step"), None)

    @property
    def last_eval(self) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e["kind"] == "eval"), None)

    @property
    def total_steps(self) -> int | None:
        return self.start_info.get("total_steps")

    @property
    def elapsed(self) -> float:
        return self.events[-1]["elapsed"] if self.events else 0.0


TaskSnapshot = JobSnapshot  # the name the Transfer / Studies pages used


class Job:
    """One piece of background work in a daemon thread, started when the scheduler gives it a slot.

    ``work`` is a :class:`~uap_core.run.Run` — built (and its configuration validated) by the caller, so a bad
    parameter is reported in the page before anything starts; ``model`` / ``images`` given to the Run are the
    page's cached ones — or a function ``fn(report, stopped)`` returning the result, where
    ``report(fraction, message)`` publishes progress and ``stopped()`` turns True once :meth:`stop` was called.
    ``uses_gpu``: which scheduler pool it waits in (for a run: from its device).
    """

    def __init__(self, work: Work, label: str | None = None, kind: str | None = None, uses_gpu: bool | None = None,
                 expected_seconds: float | None = None, scheduler: scheduling.Scheduler | None = None) -> None:
        self.id = next(_ids)
        self.created = time.time()
        if isinstance(work, Run):
            self.run: Run | None = work  # dropped when the run ends (it holds the images on the device)
            self.config = work.config
            self._fn = None
            self.kind = kind or "generate"
            self.label = label or run_label(work.config.algorithm, work.config.model, work.config.seed)
            if uses_gpu is None:
                from uap_core.models import resolve_device

                uses_gpu = resolve_device(work.config.device).type == "cuda"
            if expected_seconds is None and work.config.max_seconds is not None:
                expected_seconds = work.config.max_seconds + SETUP_SECONDS
        elif callable(work):
            self.run = None
            self.config = None
            self._fn = work
            self.kind = kind or "task"
            self.label = label or "background task"
        else:
            raise TypeError(f"a job runs a uap_core Run or a function, not {type(work).__name__}")
        self.uses_gpu = bool(uses_gpu)
        self.expected_seconds = expected_seconds
        self.key: str | None = None  # set when the job is shared (see shared_job)
        self._scheduler = scheduler
        self._ticket: scheduling.Ticket | None = None
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._delta: torch.Tensor | None = None
        self._delta_version = 0
        self._state = QUEUED
        self._error: str | None = None
        self._result: Any = None
        self._start_info: dict[str, Any] = {}
        self._progress = 0.0
        self._message = "waiting to start"
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._watchers: set[str] = set()
        self.finished_at: float | None = None  # time.monotonic() when the work ended
        self.holdout: ImageSet | None = None  # the held-out images, once the run has prepared them
        self.model: Classifier | None = None  # the model the run used
        self.interrupted = False  # ended by the server's shutdown (see interrupt): not a finished run
        self._on_end: list[Callable[["Job"], None]] = []

    @classmethod
    def restored(cls, label: str, kind: str, state: str, events: list[dict[str, Any]], result: Any = None,
                 delta: torch.Tensor | None = None, error: str | None = None, config: Any = None,
                 created: float | None = None) -> "Job":
        """A job that ended in an earlier server process, as it was saved (uap_ui.runstore): a finished run
        (``result``: its RunResult) or one the restart interrupted (its events up to its last checkpoint). It never
        runs; it is drawn like any finished job."""
        job = cls(lambda report, stopped: result, label=label, kind=kind)
        job.config = config if config is not None else getattr(result, "config", None)
        start = next((e for e in events if e.get("kind") == "start"), None)
        last_step = next((e for e in reversed(events) if e.get("kind") == "step"), None)
        total = (start or {}).get("total_steps")
        job._state, job._events, job._result, job._error = state, list(events), result, error
        job._delta = delta if delta is not None else getattr(result, "delta", None)
        job._start_info = {k: v for k, v in (start or {}).items() if k not in ("kind", "step", "epoch", "elapsed")}
        job._progress = 1.0 if state == DONE else min(1.0, last_step["step"] / total) if last_step and total else 0.0
        job._message = state
        job.created = created if created is not None else job.created
        job.finished_at = time.monotonic()
        return job

    def when_finished(self, callback: Callable[["Job"], None]) -> None:
        """Call ``callback(job)`` once the work has ended (in the worker thread, after its slot is released; at
        once when it has ended already)."""
        with self._lock:
            if self.finished_at is None:
                self._on_end.append(callback)
                return
        callback(self)

    def interrupt(self) -> None:
        """The server is shutting down: end the work after its current step as :meth:`stop` does (a run with a
        checkpoint policy writes its checkpoint), marked ``interrupted`` so that it is not kept as finished."""
        self.interrupted = True
        self.stop()

    # -------------------------------------------------------------------------------------- control
    @property
    def scheduler(self) -> scheduling.Scheduler:
        return self._scheduler or scheduling.get()

    def start(self) -> "Job":
        """Queue the job with the scheduler and start its worker thread (once)."""
        if self._thread is None:
            pool = scheduling.GPU if self.uses_gpu else scheduling.CPU
            self._ticket = self.scheduler.submit(self.label, self.kind, pool, self.expected_seconds)
            self._thread = threading.Thread(target=self._work, name=f"uap-job-{self.id}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """End the work after its current step (a run keeps its best δ so far) or leave the queue. Thread-safe,
        idempotent."""
        self._stop.set()
        with self._lock:
            run = self.run
        if run is not None:
            run.stop()
        if self._ticket is not None:
            self.scheduler.cancel(self._ticket)

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker thread to end; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def snapshot(self) -> JobSnapshot:
        ticket = self._ticket
        with self._lock:
            state = self._state
        place = self.scheduler.place(ticket) if ticket is not None and state == QUEUED else None
        with self._lock:
            message = place.describe() if place is not None and self._state == QUEUED else self._message
            return JobSnapshot(self.id, self.label, self._state, list(self._events), self._delta, self._error,
                               self._result, dict(self._start_info), self.created, self._stop.is_set(),
                               self._progress, message, place, self.kind, len(self._watchers), self._delta_version)

    # -------------------------------------------------------------------------------------- watchers
    def watch(self, token: str) -> None:
        """Workspace ``token`` shows this job."""
        with self._lock:
            self._watchers.add(token)

    def watchers(self) -> int:
        with self._lock:
            return len(self._watchers)

    def leave(self, token: str, abandoned: bool = False) -> bool:
        """Workspace ``token`` stops showing this job. When nobody else watches an active job, it is stopped —
        unless ``abandoned`` (the browser went away, no Stop was pressed) and it is a running run with a short time
        limit, which finishes for later identical requests. True when the job was stopped because of this."""
        with self._lock:
            self._watchers.discard(token)
            if self._watchers or self._state not in ACTIVE_STATES:
                return False
            finishes = (abandoned and self._state == RUNNING and self.config is not None and self.key is not None
                        and self.config.max_seconds is not None
                        and self.config.max_seconds <= UNWATCHED_FINISH_SECONDS)
        if finishes:
            return False
        self.stop()
        return True

    # -------------------------------------------------------------------------------------- the worker
    def _set(self, **values: Any) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self, f"_{name}", value)

    def _report(self, fraction: float, message: str) -> None:
        with self._lock:
            self._progress = max(0.0, min(1.0, float(fraction)))
            self._message = message

    def _copy_delta(self, run: Run) -> None:
        algorithm = run.algorithm
        if algorithm is None:
            return
        copy = algorithm.delta.detach().to("cpu", copy=True)
        with self._lock:
            self._delta = copy
            self._delta_version += 1

    def _work(self) -> None:
        ticket = self._ticket
        assert ticket is not None
        try:
            if not self.scheduler.acquire(ticket, self._stop.is_set):
                self._set(state=STOPPED, message="stopped while waiting in the queue")
                return
            with self._lock:
                self._state, self._message = RUNNING, "starting"
            if self._fn is not None:
                self._work_fn()
            else:
                self._work_run()
        except UAPError as exc:
            self._set(state=FAILED, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a page must show it, the server must survive it
            log.error("job %s failed:\n%s", self.id, traceback.format_exc())
            self._set(state=FAILED, error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.run = None  # frees the fit / held-out tensors on the device
                self.finished_at = time.monotonic()
                callbacks, self._on_end = self._on_end, []
            self.scheduler.release(ticket)
            if self.uses_gpu and torch.cuda.is_available():
                torch.cuda.empty_cache()
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:  # noqa: BLE001 - a failed save must not take the server down
                    log.error("job %s: end of work callback failed:\n%s", self.id, traceback.format_exc())

    def _work_fn(self) -> None:
        assert self._fn is not None
        result = self._fn(self._report, self._stop.is_set)
        with self._lock:
            self._result = result
            stopped = self._stop.is_set()
            self._state = STOPPED if stopped else DONE
            self._progress = self._progress if stopped else 1.0

    def _work_run(self) -> None:
        run = self.run
        assert run is not None
        last_copy = 0.0
        for event in run.events():  # the run's clock (max_seconds) starts here, after the queue
            record = event.as_dict()
            now = time.monotonic()
            if event.kind == "start":
                self.model = run.model
                holdout = run.holdout_set  # CPU; a few of them are shown as pictures afterwards
                self.holdout = holdout.subset(range(min(len(holdout), HOLDOUT_KEPT)))
                with self._lock:
                    self._start_info = dict(event.data)
            if event.kind == "eval" or (event.kind == "step" and now - last_copy >= DELTA_COPY_INTERVAL):
                self._copy_delta(run)
                last_copy = now
            if event.kind == "done":
                result = run.result
                with self._lock:
                    self._result = result
                    if result is not None:  # the kept (best) δ
                        self._delta = result.delta
                        self._delta_version += 1
            with self._lock:
                self._events.append(record)
                total = self._start_info.get("total_steps")
                if event.kind == "step" and total:
                    self._progress = min(1.0, event.step / total)
                    self._message = f"step {event.step}/{total}"
        result = run.result
        self._set(state=STOPPED if result is not None and result.reason == "stopped" else DONE)


class Task(Job):
    """A job built from a function ``fn(report, stopped)`` (the transfer table, a study): see :class:`Job`."""

    def __init__(self, fn: Callable[[Callable[[float, str], None], Callable[[], bool]], Any], label: str,
                 uses_gpu: bool = False, kind: str = "task", expected_seconds: float | None = None,
                 scheduler: scheduling.Scheduler | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"a Task runs a function, not {type(fn).__name__}")
        super().__init__(fn, label=label, kind=kind, uses_gpu=uses_gpu, expected_seconds=expected_seconds,
                         scheduler=scheduler)


# ---------------------------------------------------------------------------------------------- shared runs
_SHARED: dict[str, Job] = {}
_SHARED_LOCK = threading.Lock()
_GATES: dict[str, threading.Lock] = {}


def _reusable(job: Job, now: float) -> bool:
    state = job.state
    if state in ACTIVE_STATES:
        return not job.stop_requested
    return state == DONE and job.finished_at is not None and now - job.finished_at <= SHARED_KEEP_SECONDS


def find_shared(key: str) -> Job | None:
    """The active or recently finished job of ``key`` that an identical request can watch, else None."""
    with _SHARED_LOCK:
        job = _SHARED.get(key)
        return job if job is not None and _reusable(job, time.monotonic()) else None


def shared_job(key: str, create: Callable[[], Job | None], own: Workspace | None = None) -> tuple[Job | None, bool]:
    """The job of ``key``: an identical one still going, or one finished lately for another workspace (reused:
    True), else ``create()``'s (reused: False; None when it could not be created). A workspace that already shows
    the finished identical run (``own``) gets a fresh one: asking again there means seeing it run again (a
    replayed demo, a race against an earlier run). Two identical requests at the same moment get one job:
    ``create`` runs once per key at a time."""
    def usable(found: Job | None) -> bool:
        return found is not None and (found.active or own is None or found not in own.jobs())

    job = find_shared(key)
    if usable(job):
        return job, True
    with _SHARED_LOCK:
        gate = _GATES.setdefault(key, threading.Lock())
    with gate:
        job = find_shared(key)
        if usable(job):
            return job, True
        job = create()
        if job is None:
            return None, False
        job.key = key
        with _SHARED_LOCK:
            _SHARED[key] = job
            _forget_shared_locked()
        return job, False


def _forget_shared_locked() -> None:
    now = time.monotonic()
    for key, job in list(_SHARED.items()):
        if not _reusable(job, now):
            del _SHARED[key]
            _GATES.pop(key, None)
    finished = sorted((job.finished_at or 0.0, key) for key, job in _SHARED.items() if not job.active)
    while len(_SHARED) > SHARED_MAX and finished:
        _, key = finished.pop(0)
        del _SHARED[key]
        _GATES.pop(key, None)


def shared_jobs() -> list[Job]:
    with _SHARED_LOCK:
        return list(_SHARED.values())


# ---------------------------------------------------------------------------------------------- workspaces
@dataclass
class Workspace:
    """Everything one browser session has running or kept: Generate runs (kept for the comparison charts
    until cleared), the Home demo, and named tasks (e.g. the transfer table, a study).

    ``store``: where the runs and the demo are kept across a restart (a :class:`uap_ui.runstore.RunStore`, set by
    the page's setup; None: in memory only): told of every run shown (``keep``) and every run dropped
    (``forget``)."""

    token: str
    runs: list[Job] = field(default_factory=list)
    demo: Job | None = None
    tasks: dict[str, Job] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)
    detached_since: float | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    store: Any = None

    def _forget(self, dropped: list[Job], role: str = "run") -> None:
        for job in dropped:
            if self.store is not None:
                self.store.forget(job, role)
            job.leave(self.token)

    def add_run(self, job: Job) -> Job:
        """Show ``job`` on the charts (once: a shared run already shown is not added twice)."""
        job.watch(self.token)
        dropped = []
        with self.lock:
            added = job not in self.runs
            if added:
                self.runs.append(job)
            finished = [j for j in self.runs if not j.active and j.state != INTERRUPTED]
            while len(self.runs) > MAX_RUNS_SHOWN and finished:
                old = finished.pop(0)
                self.runs.remove(old)
                dropped.append(old)
        if added and self.store is not None:
            self.store.keep(job, "run")
        self._forget(dropped)
        return job

    def replace_run(self, old: Job, new: Job) -> Job:
        """Show ``new`` where ``old`` was (a resumed run in place of its interrupted one; the same saved record)."""
        new.watch(self.token)
        with self.lock:
            self.runs = [new if j is old else j for j in self.runs]
            if new not in self.runs:
                self.runs.append(new)
        if self.store is not None:
            self.store.replace(old, new)
        old.leave(self.token)
        return new

    def runs_list(self) -> list[Job]:
        with self.lock:
            return list(self.runs)

    def running(self) -> list[Job]:
        return [j for j in self.runs_list() if j.active]

    def clear_finished(self) -> None:
        """Drop the finished runs from the charts and from the store (running and interrupted ones stay)."""
        with self.lock:
            dropped = [j for j in self.runs if not j.active and j.state != INTERRUPTED]
            self.runs = [j for j in self.runs if j not in dropped]
        self._forget(dropped)

    def remove_run(self, job_id: int) -> None:
        """Drop the finished (or interrupted) run ``job_id`` from the charts and from the store (Discard)."""
        with self.lock:
            dropped = [j for j in self.runs if j.id == job_id and not j.active]
            self.runs = [j for j in self.runs if j not in dropped]
        self._forget(dropped)

    def set_demo(self, job: Job) -> Job:
        job.watch(self.token)
        with self.lock:
            old, self.demo = self.demo, job
        if old is not job:
            if self.store is not None:
                self.store.keep(job, "demo")
            if old is not None:
                self._forget([old], "demo")
        return job

    def set_task(self, name: str, task: Job) -> Job:
        task.watch(self.token)
        with self.lock:
            old = self.tasks.get(name)
            self.tasks[name] = task
        if old is not None and old is not task:
            old.leave(self.token)
        return task

    def task(self, name: str) -> Job | None:
        with self.lock:
            return self.tasks.get(name)

    def stop_job(self, job: Job) -> bool:
        """The Stop button for ``job``: stops it when this workspace is its only watcher (True; the run keeps its δ
        so far and stays shown), else this workspace alone stops watching it — it disappears from here and goes on
        for the others (False)."""
        if job.leave(self.token) or job.watchers() == 0:
            return True
        with self.lock:
            self.runs = [j for j in self.runs if j is not job]
            if self.demo is job:
                self.demo = None
            for name, task in list(self.tasks.items()):
                if task is job:
                    del self.tasks[name]
        if self.store is not None:
            self.store.forget(job, "run")
            self.store.forget(job, "demo")
        return False

    def jobs(self) -> list[Job]:
        with self.lock:
            return list(self.runs) + ([self.demo] if self.demo else []) + list(self.tasks.values())

    def anything_active(self) -> bool:
        return any(j.active for j in self.jobs())

    def stop_all(self) -> None:
        """The workspace was abandoned (no browser shows it): stop watching its active jobs (see Job.leave)."""
        for job in self.jobs():
            if job.active:
                job.leave(self.token, abandoned=True)


_REGISTRY: dict[str, Workspace] = {}
_REGISTRY_LOCK = threading.Lock()


def workspace(token: str) -> Workspace:
    """The workspace of ``token``, created on first use."""
    with _REGISTRY_LOCK:
        _forget_idle_locked()
        found = _REGISTRY.get(token)
        if found is None:
            found = _REGISTRY[token] = Workspace(token)
        return found


def attach(token: str, session_id: str) -> Workspace:
    """Record that a browser session shows ``token``'s workspace (keeps its jobs alive)."""
    ws = workspace(token)
    with ws.lock:
        ws.sessions.add(session_id)
        ws.detached_since = None
    return ws


def detach(token: str, session_id: str, grace: float = GRACE_SECONDS) -> None:
    """A browser session went away; if no other session shows the workspace within ``grace`` seconds, it stops
    watching its jobs (a job nobody watches is stopped, its best δ so far kept; see :meth:`Job.leave`)."""
    with _REGISTRY_LOCK:
        ws = _REGISTRY.get(token)
    if ws is None:
        return
    with ws.lock:
        ws.sessions.discard(session_id)
        if ws.sessions:
            return
        ws.detached_since = time.monotonic()

    def expire() -> None:
        with ws.lock:
            abandoned = not ws.sessions and ws.detached_since is not None
        if abandoned:
            ws.stop_all()

    timer = threading.Timer(grace, expire)
    timer.daemon = True
    timer.start()


def _forget_idle_locked() -> None:
    now = time.monotonic()
    for token, ws in list(_REGISTRY.items()):
        if ws.detached_since is not None and now - ws.detached_since > IDLE_WORKSPACE_SECONDS \
                and not ws.anything_active():
            del _REGISTRY[token]


def all_workspaces() -> list[Workspace]:
    with _REGISTRY_LOCK:
        return list(_REGISTRY.values())


def live_sessions() -> int:
    """Browser sessions that show a workspace with active work (they poll while it runs)."""
    return sum(len(ws.sessions) for ws in all_workspaces() if ws.anything_active())
