"""One scheduler per server process: at most N pieces of background work run at once, the rest wait first come,
first served, and each waiting one knows its place and about how long it will wait.

Plain Python (no Streamlit). Every :class:`uap_ui.jobs.Job` (a generation, a transfer table, a study) takes a
:class:`Ticket` when it is started; its worker thread blocks in :meth:`Scheduler.acquire` until a slot of its pool
is free, and only then begins its work — so a run's time limit (``RunConfig.max_seconds``, measured from the first
iteration of ``Run.events()``) counts running time, never waiting time.

Two pools:

- ``"cpu"``: ``UAP_MAX_RUNS`` at once (default: half the CPU cores, at least 2, at most 8). Each CPU run uses every
  core PyTorch gives it, so more runs at once share the cores: a larger N is fairer to short runs, a smaller one
  makes each run faster.
- ``"cuda"``: ``UAP_MAX_GPU_RUNS`` at once (default 1: two runs never share one GPU's memory).

The expected wait of a waiting ticket is simulated from what runs and waits before it: each ticket's expected
duration is its own estimate (a run's time limit), else the mean duration of the last finished tickets of the same
kind, else :data:`DEFAULT_SECONDS`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

CPU, GPU = "cpu", "cuda"
DEFAULT_SECONDS = 60.0  # expected duration of a kind of work never seen finishing
HISTORY = 20  # finished durations kept per kind for the estimates
MAX_RUNS_ENV, MAX_GPU_RUNS_ENV = "UAP_MAX_RUNS", "UAP_MAX_GPU_RUNS"

_ids = itertools.count(1)
log = logging.getLogger(__name__)


def default_max_runs(cores: int | None = None) -> int:
    """CPU runs at once when ``UAP_MAX_RUNS`` is not set: half the cores, at least 2, at most 8."""
    cores = cores or os.cpu_count() or 2
    return max(2, min(8, cores // 2))


def _env_count(name: str, default: int) -> int:
    """A positive whole number from the environment; a bad value is logged and the default used."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        log.warning("%s=%r is not a whole number of at least 1; using %d", name, raw, default)
        return default
    return value


@dataclass(eq=False)
class Ticket:
    """One piece of work's place in its pool: waiting, then granted a slot, then released."""

    label: str
    kind: str = "run"
    pool: str = CPU
    expected: float | None = None  # its own estimate of its running time (seconds), if it has one
    id: int = field(default_factory=lambda: next(_ids))
    submitted: float = field(default_factory=time.monotonic)
    granted_at: float | None = None
    released_at: float | None = None
    cancelled: bool = False

    @property
    def waiting(self) -> bool:
        return self.granted_at is None and not self.cancelled

    @property
    def running(self) -> bool:
        return self.granted_at is not None and self.released_at is None

    @property
    def waited(self) -> float:
        """Seconds spent in the queue (so far, while it still waits)."""
        end = self.granted_at if self.granted_at is not None else time.monotonic()
        return end - self.submitted


@dataclass
class QueuePlace:
    """Where a waiting ticket stands: its 1-based position among the waiting ones of its pool, its expected wait
    in seconds, the pool and how many of that pool run at once."""

    position: int
    seconds: float
    pool: str = CPU
    capacity: int = 1

    def describe(self) -> str:
        """'in queue: 3rd, about 40 s'."""
        return f"in queue: {ordinal(self.position)}, about {approximate(self.seconds)}"


@dataclass
class PoolStatus:
    name: str
    capacity: int
    running: int
    waiting: int


class Scheduler:
    """First-come, first-served slots per pool (see the module docstring). Thread-safe."""

    def __init__(self, max_runs: int | None = None, max_gpu_runs: int | None = None) -> None:
        self._cond = threading.Condition()
        self._capacity = {CPU: max_runs or default_max_runs(), GPU: max_gpu_runs or 1}
        self._waiting: dict[str, deque[Ticket]] = {CPU: deque(), GPU: deque()}
        self._running: dict[str, list[Ticket]] = {CPU: [], GPU: []}
        self._durations: dict[str, deque[float]] = {}

    # ------------------------------------------------------------------------------------------ settings
    def capacity(self, pool: str = CPU) -> int:
        with self._cond:
            return self._capacity[pool]

    def set_capacity(self, pool: str, slots: int) -> None:
        """Change how many tickets of ``pool`` run at once (waiting ones start at once if the pool grew)."""
        if int(slots) < 1:
            raise ValueError(f"a pool needs at least one slot, got {slots}")
        with self._cond:
            self._capacity[pool] = int(slots)
            self._dispatch()

    # ------------------------------------------------------------------------------------------ tickets
    def submit(self, label: str, kind: str = "run", pool: str = CPU, expected: float | None = None) -> Ticket:
        """Queue a ticket (granted at once when its pool has a free slot)."""
        if pool not in self._capacity:
            raise ValueError(f"unknown pool {pool!r}; choose {CPU!r} or {GPU!r}")
        ticket = Ticket(label, kind, pool, expected)
        with self._cond:
            self._waiting[pool].append(ticket)
            self._dispatch()
        return ticket

    def acquire(self, ticket: Ticket, stopped: Callable[[], bool] | None = None, poll: float = 0.2) -> bool:
        """Block until ``ticket`` holds a slot (True), or until it is cancelled or ``stopped()`` turns True while it
        still waits (False; it then leaves the queue)."""
        with self._cond:
            while True:
                if ticket.granted_at is not None:
                    return True
                if ticket.cancelled:
                    return False
                if stopped is not None and stopped():
                    self._withdraw(ticket)
                    return False
                self._cond.wait(poll)

    def cancel(self, ticket: Ticket) -> bool:
        """Take a waiting ticket out of the queue (True); a granted one is left alone (False)."""
        with self._cond:
            if ticket.granted_at is not None:
                return False
            self._withdraw(ticket)
            return True

    def release(self, ticket: Ticket) -> None:
        """The work is over: free its slot (or leave the queue); idempotent."""
        with self._cond:
            if ticket.granted_at is None:
                self._withdraw(ticket)
                return
            if ticket.released_at is not None:
                return
            ticket.released_at = time.monotonic()
            self._running[ticket.pool].remove(ticket)
            self._durations.setdefault(ticket.kind, deque(maxlen=HISTORY)).append(
                ticket.released_at - ticket.granted_at)
            self._dispatch()

    # ------------------------------------------------------------------------------------------ reading
    def place(self, ticket: Ticket) -> QueuePlace | None:
        """Position and expected wait of a waiting ticket; None once it runs (or left)."""
        with self._cond:
            queue = self._waiting[ticket.pool]
            if ticket not in queue:
                return None
            now = time.monotonic()
            slots = [max(0.0, self._expected(t) - (now - t.granted_at)) for t in self._running[ticket.pool]]
            slots += [0.0] * max(0, self._capacity[ticket.pool] - len(slots))
            heapq.heapify(slots)
            for position, waiting in enumerate(queue, 1):
                free_at = heapq.heappop(slots)
                if waiting is ticket:
                    return QueuePlace(position, free_at, ticket.pool, self._capacity[ticket.pool])
                heapq.heappush(slots, free_at + self._expected(waiting))
            return None  # unreachable: the ticket is in the queue

    def status(self) -> list[PoolStatus]:
        with self._cond:
            return [PoolStatus(pool, self._capacity[pool], len(self._running[pool]), len(self._waiting[pool]))
                    for pool in self._capacity]

    def expected_seconds(self, kind: str) -> float:
        """The mean running time of the last finished tickets of ``kind`` (DEFAULT_SECONDS before any)."""
        with self._cond:
            return self._mean(kind)

    # ------------------------------------------------------------------------------------------ internals
    def _mean(self, kind: str) -> float:
        seen = self._durations.get(kind)
        return sum(seen) / len(seen) if seen else DEFAULT_SECONDS

    def _expected(self, ticket: Ticket) -> float:
        return ticket.expected if ticket.expected is not None else self._mean(ticket.kind)

    def _withdraw(self, ticket: Ticket) -> None:
        queue = self._waiting[ticket.pool]
        if ticket in queue:
            queue.remove(ticket)
        ticket.cancelled = ticket.granted_at is None
        self._dispatch()

    def _dispatch(self) -> None:
        """Grant free slots to the heads of the queues (lock held)."""
        for pool, queue in self._waiting.items():
            while queue and len(self._running[pool]) < self._capacity[pool]:
                ticket = queue.popleft()
                ticket.granted_at = time.monotonic()
                self._running[pool].append(ticket)
        self._cond.notify_all()


def ordinal(n: int) -> str:
    """1 → '1st', 2 → '2nd', 3 → '3rd', 11 → '11th', 22 → '22nd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def approximate(seconds: float) -> str:
    """A wait in words: '5 s', '40 s', '3 min'."""
    if seconds < 1:
        return "a moment"
    if seconds < 90:
        return f"{max(5, round(seconds / 5) * 5):.0f} s"
    return f"{round(seconds / 60):.0f} min"


_SCHEDULER: Scheduler | None = None
_SCHEDULER_LOCK = threading.Lock()


def get() -> Scheduler:
    """The process-wide scheduler, created on first use from ``UAP_MAX_RUNS`` / ``UAP_MAX_GPU_RUNS``."""
    global _SCHEDULER
    with _SCHEDULER_LOCK:
        if _SCHEDULER is None:
            _SCHEDULER = Scheduler(_env_count(MAX_RUNS_ENV, default_max_runs()), _env_count(MAX_GPU_RUNS_ENV, 1))
        return _SCHEDULER
