"""Background work for the pages: a worker thread owns each ``uap_core`` run; the page only polls.

Plain Python (no Streamlit import): a :class:`Job` wraps one :class:`uap_core.run.Run` and is driven by a daemon
thread that iterates ``run.events()`` and writes into the job under a lock (events so far, a CPU copy of the
current δ, the state, the error message, the result). A :class:`Task` does the same for any other long
computation (the transfer table). Pages read :meth:`Job.snapshot` / :meth:`Task.snapshot` and never block.

Jobs live in a :class:`Workspace`, one per browser session, kept in a process-wide registry keyed by a random
token (the page keeps it in the URL, so a refresh finds the same workspace). When the last browser session of a
workspace goes away, its running jobs are stopped after a short grace period (a refresh re-attaches in time).

Several workspaces run at once. CPU jobs run side by side; CUDA jobs take a process-wide semaphore so that two
sessions never fight over one GPU's memory (the second waits in the state "queued").
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from uap_core.algorithms import ALGORITHMS
from uap_core.errors import UAPError
from uap_core.images import ImageSet
from uap_core.models import Classifier
from uap_core.run import Run, RunResult

log = logging.getLogger(__name__)

RUNNING, QUEUED, DONE, FAILED, STOPPED = "running", "queued", "done", "failed", "stopped"
ACTIVE_STATES = (RUNNING, QUEUED)
DELTA_COPY_INTERVAL = 0.25  # seconds between CPU copies of the current δ during a run
GRACE_SECONDS = 15.0  # how long a workspace without any browser session keeps its jobs running
IDLE_WORKSPACE_SECONDS = 3600.0  # detached workspaces with nothing running are forgotten after this
MAX_RUNS_SHOWN = 12  # finished runs kept for the comparison charts (oldest dropped first)
HOLDOUT_KEPT = 64  # held-out images a finished job keeps for pictures

_GPU_SEMAPHORE = threading.BoundedSemaphore(1)
_ids = itertools.count(1)


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
    """A consistent, read-only view of a job at one moment (what a page draws)."""

    id: int
    label: str
    state: str
    events: list[dict[str, Any]]
    delta: torch.Tensor | None
    error: str | None
    result: RunResult | None
    start_info: dict[str, Any]
    created: float
    stop_requested: bool

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


class Job:
    """One UAP generation running in a daemon thread.

    The run is built (and its configuration validated) by the caller, so a bad parameter is reported in the
    page before anything starts. ``model`` / ``images`` given to the Run are the page's cached ones.
    """

    def __init__(self, run: Run, label: str | None = None, kind: str = "generate") -> None:
        self.id = next(_ids)
        self.run: Run | None = run  # dropped when the run ends (it holds the images on the device)
        self.config = run.config
        self.kind = kind
        self.label = label or run_label(run.config.algorithm, run.config.model, run.config.seed)
        self.created = time.time()
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._delta: torch.Tensor | None = None
        self._state = QUEUED
        self._error: str | None = None
        self._result: RunResult | None = None
        self._start_info: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self.holdout: ImageSet | None = None  # the held-out images, once the run has prepared them
        self.model: Classifier | None = None  # the model the run used

    # -------------------------------------------------------------------------------------- control
    def start(self) -> "Job":
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"uap-job-{self.id}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the run to end after its current step; the best δ so far is kept. Thread-safe, idempotent."""
        with self._lock:
            self._stop_requested = True
            run = self.run
        if run is not None:
            run.stop()

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
        with self._lock:
            return JobSnapshot(self.id, self.label, self._state, list(self._events), self._delta, self._error,
                               self._result, dict(self._start_info), self.created, self._stop_requested)

    # -------------------------------------------------------------------------------------- the worker
    def _set(self, **values: Any) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self, f"_{name}", value)

    def _copy_delta(self, run: Run) -> None:
        algorithm = run.algorithm
        if algorithm is None:
            return
        copy = algorithm.delta.detach().to("cpu", copy=True)
        with self._lock:
            self._delta = copy

    def _work(self) -> None:
        uses_gpu = False
        run = self.run
        assert run is not None
        try:
            from uap_core.models import resolve_device

            uses_gpu = resolve_device(self.config.device).type == "cuda"
            if uses_gpu:
                while not _GPU_SEMAPHORE.acquire(timeout=0.2):
                    if run.stop_requested:
                        self._set(state=STOPPED, error="stopped before it could start (the GPU was busy)")
                        uses_gpu = False
                        return
            self._set(state=RUNNING)
            last_copy = 0.0
            for event in run.events():
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
                        self._delta = result.delta if result is not None else self._delta  # the kept (best) δ
                with self._lock:
                    self._events.append(record)
            result = run.result
            self._set(state=STOPPED if result is not None and result.reason == "stopped" else DONE)
        except UAPError as exc:
            self._set(state=FAILED, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a page must show it, the server must survive it
            log.error("job %s failed:\n%s", self.id, traceback.format_exc())
            self._set(state=FAILED, error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.run = None  # frees the fit / held-out tensors on the device
            del run
            if uses_gpu:
                _GPU_SEMAPHORE.release()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- tasks
@dataclass
class TaskSnapshot:
    id: int
    label: str
    state: str
    progress: float
    message: str
    error: str | None
    result: Any
    created: float

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


class Task:
    """Any long computation in a daemon thread: ``fn(report, stopped)`` returns the result.

    ``report(fraction, message)`` publishes progress; ``stopped()`` is True once :meth:`stop` was called.
    """

    def __init__(self, fn: Callable[[Callable[[float, str], None], Callable[[], bool]], Any], label: str,
                 uses_gpu: bool = False) -> None:
        self.id = next(_ids)
        self.label = label
        self.created = time.time()
        self._fn = fn
        self._uses_gpu = uses_gpu
        self._lock = threading.Lock()
        self._state = QUEUED
        self._progress = 0.0
        self._message = "waiting to start"
        self._error: str | None = None
        self._result: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Task":
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"uap-task-{self.id}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def active(self) -> bool:
        with self._lock:
            return self._state in ACTIVE_STATES

    def snapshot(self) -> TaskSnapshot:
        with self._lock:
            return TaskSnapshot(self.id, self.label, self._state, self._progress, self._message, self._error,
                                self._result, self.created)

    def _report(self, fraction: float, message: str) -> None:
        with self._lock:
            self._progress = max(0.0, min(1.0, float(fraction)))
            self._message = message

    def _work(self) -> None:
        acquired = False
        try:
            if self._uses_gpu:
                while not _GPU_SEMAPHORE.acquire(timeout=0.2):
                    if self._stop.is_set():
                        raise _Stopped
                acquired = True
            with self._lock:
                self._state = RUNNING
            result = self._fn(self._report, self._stop.is_set)
            with self._lock:
                self._result = result
                self._state = STOPPED if self._stop.is_set() else DONE
                self._progress = 1.0 if not self._stop.is_set() else self._progress
        except _Stopped:
            with self._lock:
                self._state = STOPPED
        except UAPError as exc:
            with self._lock:
                self._state, self._error = FAILED, str(exc)
        except Exception as exc:  # noqa: BLE001
            log.error("task %s failed:\n%s", self.id, traceback.format_exc())
            with self._lock:
                self._state, self._error = FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            if acquired:
                _GPU_SEMAPHORE.release()


class _Stopped(Exception):
    pass


# ---------------------------------------------------------------------------------------------- workspaces
@dataclass
class Workspace:
    """Everything one browser session has running or kept: Generate runs (kept for the comparison charts
    until cleared), the Home demo, and named tasks (e.g. the transfer table)."""

    token: str
    runs: list[Job] = field(default_factory=list)
    demo: Job | None = None
    tasks: dict[str, Task] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)
    detached_since: float | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def add_run(self, job: Job) -> Job:
        with self.lock:
            self.runs.append(job)
            finished = [j for j in self.runs if not j.active]
            while len(self.runs) > MAX_RUNS_SHOWN and finished:
                self.runs.remove(finished.pop(0))
        return job

    def runs_list(self) -> list[Job]:
        with self.lock:
            return list(self.runs)

    def running(self) -> list[Job]:
        return [j for j in self.runs_list() if j.active]

    def clear_finished(self) -> None:
        """Drop the finished runs from the charts (running ones stay)."""
        with self.lock:
            self.runs = [j for j in self.runs if j.active]

    def remove_run(self, job_id: int) -> None:
        with self.lock:
            self.runs = [j for j in self.runs if j.id != job_id or j.active]

    def set_demo(self, job: Job) -> Job:
        with self.lock:
            if self.demo is not None and self.demo.active:
                self.demo.stop()
            self.demo = job
        return job

    def set_task(self, name: str, task: Task) -> Task:
        with self.lock:
            old = self.tasks.get(name)
            if old is not None and old.active:
                old.stop()
            self.tasks[name] = task
        return task

    def task(self, name: str) -> Task | None:
        with self.lock:
            return self.tasks.get(name)

    def anything_active(self) -> bool:
        with self.lock:
            jobs = list(self.runs) + ([self.demo] if self.demo else [])
            tasks = list(self.tasks.values())
        return any(j.active for j in jobs) or any(t.active for t in tasks)

    def stop_all(self) -> None:
        with self.lock:
            jobs = list(self.runs) + ([self.demo] if self.demo else [])
            tasks = list(self.tasks.values())
        for job in jobs:
            if job.active:
                job.stop()
        for task in tasks:
            if task.active:
                task.stop()


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
    """A browser session went away; if no other session shows the workspace within ``grace`` seconds, its running
    jobs are stopped (their best δ so far is kept)."""
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
