"""The class server's scheduler and background jobs (uap_ui.scheduler, uap_ui.jobs), without Streamlit: at most N
jobs at once first come first served, places and expected waits in the queue, a run's time limit counting from
its start (not from its place in the queue), one GPU job at a time, shared identical runs with per-page Stop, the
Task API the Transfer and Studies pages use. Toy model and functions: the whole file takes a few seconds."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from uap_core.images import ImageSet
from uap_core.run import Run, RunConfig
from uap_ui import jobs, scheduler
from uap_ui.scheduler import QueuePlace, Scheduler, ordinal

from toys import toy_model


def wait_until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def toy_run(max_seconds: float | None = None, epochs: int = 2, seed: int = 0) -> Run:
    """A run of SGD-UAP on 20 random 4×4 images against a linear toy classifier (milliseconds per step)."""
    generator = torch.Generator().manual_seed(seed)
    images = ImageSet(torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8, generator=generator),
                      torch.randint(0, 10, (20,), generator=generator), [f"img{i}" for i in range(20)])
    config = RunConfig(model="cifar_resnet20", algorithm="sgd_uap", images="toy", device="cpu", epochs=epochs,
                       seed=seed, params={"batch_size": 2}, max_seconds=max_seconds, keep="last")
    return Run(config, model=toy_model(10), images=images)


class Gate:
    """A job function that blocks until released, recording how many gated functions run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.order: list[str] = []

    def fn(self, name: str, seconds: float | None = None):
        def work(report, stopped):
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
                self.order.append(name)
            try:
                if seconds is not None:
                    time.sleep(seconds)
                else:
                    while not self.release.wait(0.01):
                        if stopped():
                            return None
                return name
            finally:
                with self.lock:
                    self.now -= 1
        return work


# ---------------------------------------------------------------------------------------------- the scheduler
def test_queue_is_first_come_first_served_with_places_and_expected_waits():
    sched = Scheduler(max_runs=2)
    tickets = [sched.submit(f"t{i}", expected=10.0) for i in range(5)]
    assert [t.running for t in tickets] == [True, True, False, False, False]
    assert sched.place(tickets[0]) is None, "a running ticket has no place in the queue"
    places = [sched.place(t) for t in tickets[2:]]
    assert [p.position for p in places] == [1, 2, 3]
    # two slots each free in about 10 s: the 1st and 2nd waiting start then, the 3rd after one of them (≈ 20 s)
    assert places[0].seconds == pytest.approx(10, abs=0.5) and places[1].seconds == pytest.approx(10, abs=0.5)
    assert places[2].seconds == pytest.approx(20, abs=0.5)
    assert places[2].describe() == "in queue: 3rd, about 20 s"

    assert sched.cancel(tickets[3]) and sched.place(tickets[4]).position == 2
    sched.release(tickets[1])
    assert tickets[2].running and not tickets[4].running, "the head of the queue gets the free slot"
    sched.release(tickets[0])
    assert tickets[4].running
    assert [(p.capacity, p.running, p.waiting) for p in sched.status() if p.name == "cpu"] == [(2, 2, 0)]


def test_expected_wait_learns_from_finished_durations():
    sched = Scheduler(max_runs=1)
    first = sched.submit("a", kind="table")
    time.sleep(0.3)
    sched.release(first)
    assert sched.expected_seconds("table") == pytest.approx(0.3, abs=0.15)
    assert sched.expected_seconds("never seen") == scheduler.DEFAULT_SECONDS
    running = sched.submit("b", kind="table")
    waiting = sched.submit("c", kind="table")
    assert sched.place(waiting).seconds < 1.0, "estimated from the finished one, not the 60 s default"
    sched.release(running)
    sched.release(waiting)


def test_capacity_changes_and_settings():
    sched = Scheduler(max_runs=1)
    a, b = sched.submit("a"), sched.submit("b")
    assert not b.running
    sched.set_capacity("cpu", 2)
    assert b.running, "a grown pool starts the waiting ones"
    with pytest.raises(ValueError):
        sched.set_capacity("cpu", 0)
    with pytest.raises(ValueError):
        sched.submit("x", pool="tpu")
    assert [scheduler.default_max_runs(n) for n in (1, 2, 4, 8, 16, 64)] == [2, 2, 2, 4, 8, 8]
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"]
    assert QueuePlace(2, 0.2).describe() == "in queue: 2nd, about a moment"
    assert QueuePlace(1, 200).describe() == "in queue: 1st, about 3 min"


def test_max_runs_from_the_environment(monkeypatch):
    monkeypatch.setenv("UAP_MAX_RUNS", "3")
    assert scheduler._env_count("UAP_MAX_RUNS", 2) == 3
    for bad in ("zero", "0", "-1", "2.5"):
        monkeypatch.setenv("UAP_MAX_RUNS", bad)
        assert scheduler._env_count("UAP_MAX_RUNS", 2) == 2, bad  # logged, the default used
    monkeypatch.setattr(scheduler, "_SCHEDULER", None)
    monkeypatch.setenv("UAP_MAX_RUNS", "5")
    monkeypatch.setenv("UAP_MAX_GPU_RUNS", "2")
    assert scheduler.get().capacity("cpu") == 5 and scheduler.get().capacity("cuda") == 2


# ---------------------------------------------------------------------------------------------- jobs
def test_jobs_never_exceed_the_slots_and_start_in_order():
    sched = Scheduler(max_runs=2)
    gate = Gate()
    started = [jobs.Task(gate.fn(f"j{i}", seconds=0.15), f"j{i}", scheduler=sched).start() for i in range(6)]
    assert all(job.join(timeout=20) for job in started)
    assert gate.most == 2
    # slots are granted first come first served; two jobs granted together may reach their first line in either
    # order (thread scheduling), so the order is read from the grants, not from inside the jobs
    grants = [job._ticket.granted_at for job in started]
    assert all(g is not None for g in grants) and grants == sorted(grants)
    assert sorted(gate.order) == [f"j{i}" for i in range(6)]
    assert [job.snapshot().state for job in started] == [jobs.DONE] * 6
    assert [job.snapshot().result for job in started] == [f"j{i}" for i in range(6)]


def test_two_gpu_jobs_never_run_at_once_while_cpu_jobs_go_on():
    sched = Scheduler(max_runs=4)
    gpu, cpu = Gate(), Gate()
    on_gpu = [jobs.Task(gpu.fn(f"g{i}", seconds=0.2), f"g{i}", uses_gpu=True, scheduler=sched).start()
              for i in range(3)]
    on_cpu = [jobs.Task(cpu.fn(f"c{i}", seconds=0.2), f"c{i}", scheduler=sched).start() for i in range(3)]
    assert all(job.join(timeout=20) for job in on_gpu + on_cpu)
    assert gpu.most == 1 and cpu.most == 3


def test_a_queued_job_shows_its_place_and_a_stopped_one_never_starts():
    sched = Scheduler(max_runs=1)
    gate = Gate()
    first = jobs.Task(gate.fn("first"), "first", scheduler=sched).start()
    wait_until(lambda: first.state == jobs.RUNNING, what="the first job to run")
    second = jobs.Task(gate.fn("second"), "second", scheduler=sched).start()
    third = jobs.Task(gate.fn("third"), "third", scheduler=sched).start()
    snap = third.snapshot()
    assert snap.state == jobs.QUEUED and snap.queue.position == 2
    assert snap.message.startswith("in queue: 2nd, about ")
    second.stop()
    assert second.join(timeout=5)
    assert second.snapshot().state == jobs.STOPPED and "second" not in gate.order
    assert third.snapshot().queue.position == 1
    gate.release.set()
    assert first.join(timeout=5) and third.join(timeout=5)
    assert gate.order == ["first", "third"]
    assert third.snapshot().queue is None and third.snapshot().state == jobs.DONE


def test_a_runs_time_limit_counts_from_its_start_not_from_the_queue():
    """A run with a 0.5 s limit waits 1.5 s behind another job; its clock starts when it leaves the queue, so it
    still makes steps (had it started at construction, it would end at once with no step)."""
    sched = Scheduler(max_runs=1)
    gate = Gate()
    blocker = jobs.Task(gate.fn("blocker"), "blocker", scheduler=sched).start()
    wait_until(lambda: blocker.state == jobs.RUNNING, what="the blocker to run")
    job = jobs.Job(toy_run(max_seconds=0.5, epochs=1_000_000), scheduler=sched).start()
    time.sleep(1.5)
    snap = job.snapshot()
    assert snap.state == jobs.QUEUED and snap.queue.position == 1 and not snap.events
    assert snap.queue.seconds > 0
    gate.release.set()
    assert job.join(timeout=30)
    result = job.snapshot().result
    assert result.reason == "time limit" and result.steps > 10
    assert 0.5 <= result.seconds < 1.4, "the run's own time, without the 1.5 s in the queue"
    assert job.run is None, "a finished job lets go of its run"


# ---------------------------------------------------------------------------------------------- shared runs
def test_identical_requests_share_one_job_created_once(monkeypatch):
    monkeypatch.setattr(jobs, "_SHARED", {})
    sched = Scheduler(max_runs=2)
    calls = []

    def create():
        calls.append(1)
        time.sleep(0.2)  # loading the model and images: other identical requests arrive meanwhile
        return jobs.Job(toy_run(epochs=2), scheduler=sched).start()

    found: list = []
    threads = [threading.Thread(target=lambda: found.append(jobs.shared_job("same", create))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(calls) == 1 and len({id(job) for job, _ in found}) == 1
    assert sorted(reused for _, reused in found) == [False] + [True] * 7
    job = found[0][0]
    assert job.join(timeout=30) and job.state == jobs.DONE
    again, reused = jobs.shared_job("same", create)
    assert again is job and reused and len(calls) == 1, "a finished identical run is reused"
    mine = jobs.Workspace("mine-token")
    mine.set_demo(job)
    replay, reused = jobs.shared_job("same", create, own=mine)
    assert replay is not job and not reused and len(calls) == 2, "the page that shows it finished runs it again"
    assert replay.join(timeout=30)
    theirs, reused = jobs.shared_job("same", create, own=jobs.Workspace("their-token"))
    assert theirs is replay and reused, "another page gets the latest finished one"
    other, reused = jobs.shared_job("other", create)
    assert other is not job and not reused and len(calls) == 3

    monkeypatch.setattr(jobs, "SHARED_KEEP_SECONDS", 0.0)
    later, reused = jobs.shared_job("same", create)
    assert later is not job and not reused, "after the keeping time a new run starts"
    later.join(timeout=30)
    other.join(timeout=30)


def test_stop_from_one_watcher_detaches_it_only_the_last_one_stops_the_run(monkeypatch):
    monkeypatch.setattr(jobs, "_SHARED", {})
    sched = Scheduler(max_runs=2)
    job, _ = jobs.shared_job("demo", lambda: jobs.Job(toy_run(epochs=1_000_000), scheduler=sched).start())
    alice, bob = jobs.Workspace("alice-token"), jobs.Workspace("bob-token")
    alice.set_demo(job)
    bob.add_run(job)
    bob.add_run(job)
    assert bob.runs_list() == [job], "a shared run is shown once"
    wait_until(lambda: job.snapshot().last_step is not None, what="a first step")
    assert job.snapshot().watchers == 2

    assert alice.stop_job(job) is False, "others watch: alice only leaves"
    assert alice.demo is None and job.active and not job.stop_requested
    time.sleep(0.2)
    assert job.active
    assert bob.stop_job(job) is True, "the last watcher's Stop stops the run"
    assert job.join(timeout=30)
    snap = job.snapshot()
    assert snap.state == jobs.STOPPED and snap.result.reason == "stopped" and bob.runs_list() == [job]
    replacement, reused = jobs.shared_job("demo", lambda: jobs.Job(toy_run(epochs=1), scheduler=sched).start())
    assert replacement is not job and not reused, "a stopped run is never handed to a new request"
    replacement.join(timeout=30)


def test_an_abandoned_shared_run_with_a_short_limit_finishes_an_unbounded_one_stops(monkeypatch):
    monkeypatch.setattr(jobs, "_SHARED", {})
    sched = Scheduler(max_runs=2)
    bounded, _ = jobs.shared_job("bounded", lambda: jobs.Job(toy_run(max_seconds=1.0, epochs=1_000_000),
                                                             scheduler=sched).start())
    unbounded, _ = jobs.shared_job("unbounded", lambda: jobs.Job(toy_run(epochs=1_000_000),
                                                                 scheduler=sched).start())
    token = "abandoned-token"
    workspace = jobs.attach(token, "session-1")
    workspace.set_demo(bounded)
    workspace.add_run(unbounded)
    wait_until(lambda: bounded.state == unbounded.state == jobs.RUNNING, what="both to run")
    jobs.detach(token, "session-1", grace=0.05)
    assert unbounded.join(timeout=30) and bounded.join(timeout=30)
    assert unbounded.snapshot().result.reason == "stopped"
    assert bounded.snapshot().result.reason == "time limit" and bounded.state == jobs.DONE
    assert jobs.find_shared("bounded") is bounded, "finished: kept for later identical requests"


# ---------------------------------------------------------------------------------------------- the Task API
def test_task_api_of_the_transfer_and_studies_pages():
    sched = Scheduler(max_runs=1)

    def table(report, stopped):
        for i in range(4):
            report(i / 4, f"model {i + 1}/4")
            time.sleep(0.02)
        return {"rows": 4}

    task = jobs.Task(table, "transfer table", uses_gpu=False, scheduler=sched)
    workspace = jobs.Workspace("task-token")
    assert workspace.set_task("transfer", task.start()) is task and workspace.task("transfer") is task
    assert task.join(timeout=10)
    snap = task.snapshot()
    assert isinstance(snap, jobs.TaskSnapshot) and not snap.active
    assert (snap.state, snap.progress, snap.result, snap.error) == (jobs.DONE, 1.0, {"rows": 4}, None)

    def broken(report, stopped):
        raise ValueError("bad table")

    failed = jobs.Task(broken, "broken", scheduler=sched).start()
    replaced = workspace.set_task("transfer", failed)
    assert replaced is failed and failed.join(timeout=10)
    assert failed.snapshot().state == jobs.FAILED and "bad table" in failed.snapshot().error
    with pytest.raises(TypeError):
        jobs.Task("not a function", "x")
