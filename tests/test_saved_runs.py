"""Runs kept across a restart of the server: the result file (uap_core/result_file.py), a workspace's store
(uap_ui/runstore.py) and the pages that show it again (uap_ui/saved_runs.py). CIFAR-10 ResNet-20, 40 fit / 20
held-out images, SGD-UAP with batches of 10: 8 steps, about a second.

- a result read back equals the original (δ, summary, metadata but its date, the evaluations' tensors); a damaged
  or truncated file is refused with one line;
- a finished run and a run whose process ended without a word (SIGKILL: no end of work, the last periodic
  checkpoint stays) are found by a new store on the same folder: the finished one with its result, the other as
  interrupted at its checkpoint's step; Resume continues from that step to the δ of the uninterrupted run; a run the
  server's shutdown ends (SIGTERM's path) keeps its record "running" and a checkpoint of the step it reached;
- SIGTERM through the wrapped signal handler (uap_ui/shutdown.py) interrupts the run at once;
- on the Generate page of a visitor (AppTest, classroom mode): their own runs only, a damaged record as one line
  with the others shown, Clear finished deleting the files on disk (another visitor's stay); the Home demo's result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from ui_helpers import PAGES, status_lines
from uap_core.checkpoint import CheckpointPolicy
from uap_core.errors import ArtifactError
from uap_core.result_file import load_result, result_from_bytes, result_to_bytes, save_result
from uap_core.run import Run, RunConfig
from uap_ui import jobs, saved_runs, shutdown
from uap_ui.runstore import RunStore
from uap_ui.scheduler import Scheduler

TIMEOUT = 120


def config(images: Path, epochs: int = 2) -> RunConfig:
    return RunConfig(model="cifar_resnet20", algorithm="sgd_uap", eps=8 / 255, images=str(images), fit=40, holdout=20,
                     seed=1, device="cpu", epochs=epochs, eval_every=2, params={"batch_size": 10})


def images_record(images: Path) -> dict:
    return {"kind": "npz", "source": str(images), "uploaded": False}


@pytest.fixture(scope="module")
def uninterrupted(cifar_npz):
    """The finished job of the whole run (8 steps), for comparisons and as a kept run."""
    job = jobs.Job(Run(config(cifar_npz)), kind="generate").start()
    assert job.join(120) and job.state == jobs.DONE
    return job


def without_date(metadata: dict) -> str:
    metadata = {**metadata, "recorded": {k: v for k, v in metadata["recorded"].items() if k != "date"}}
    return json.dumps(metadata, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------- the result file
def test_a_result_read_back_equals_the_original_and_a_damaged_file_is_one_line(uninterrupted, tmp_path):
    result = uninterrupted.snapshot().result
    path = tmp_path / "run.result"
    save_result(path, result, {"label": "mine"})
    back, extra = load_result(path)
    assert extra == {"label": "mine"}
    assert torch.equal(back.delta, result.delta) and torch.equal(back.last_delta, result.last_delta)
    assert back.summary() == result.summary()
    assert without_date(back.metadata()) == without_date(result.metadata())
    for name in ("clean_labels", "perturbed_labels", "clean_confidence", "perturbed_confidence"):
        assert torch.equal(getattr(back.evaluation, name), getattr(result.evaluation, name))
    assert json.dumps(back.history) == json.dumps(result.history)  # NaN kept (and written alike)
    assert [p.name for p in tmp_path.iterdir()] == ["run.result"]  # no temp file left
    for last in (result.delta.clone(), torch.zeros_like(result.delta)):  # the last δ stored once where it is the kept
        assert torch.equal(result_from_bytes(result_to_bytes(dataclasses.replace(result, last_delta=last)))[0]
                           .last_delta, last)

    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # a flipped bit in the last tensor
    with pytest.raises(ArtifactError, match="damaged") as damaged:
        result_from_bytes(bytes(data), "run.result")
    with pytest.raises(ArtifactError, match="not a readable saved result") as truncated:
        result_from_bytes(bytes(data[: len(data) // 2]), "run.result")
    for error in (damaged, truncated):
        assert "\n" not in str(error.value) and str(error.value).startswith("run.result")


# ---------------------------------------------------------------------------------------------- the store
def test_finished_and_killed_runs_come_back_and_resume_continues_to_the_same_delta(uninterrupted, cifar_npz,
                                                                                   tmp_path):
    folder = tmp_path / "runs"
    store = RunStore(folder)
    workspace = jobs.Workspace("store-test")
    workspace.store = store
    workspace.add_run(uninterrupted)  # kept at once: it has finished
    full = Scheduler(max_runs=1)
    full.acquire(full.submit("another run"))  # its one slot taken
    never = jobs.Job(Run(config(cifar_npz)), kind="generate", scheduler=full)  # stopped in the queue: no δ
    workspace.add_run(never.start())
    never.stop()
    assert never.join(30) and never.state == jobs.STOPPED
    time.sleep(0.2)
    # a run whose process is killed after step 5 (every 2 steps a checkpoint): its generator is abandoned, as a
    # SIGKILL would leave it — no stop checkpoint, no end of work
    name = store.new_name()
    killed = jobs.Job(Run(config(cifar_npz), checkpoints=CheckpointPolicy(store.path(name, ".checkpoint"),
                                                                          every_steps=2)), kind="generate")
    store.begin(killed, name, images_record(cifar_npz))
    events = killed.run.events()
    for event in events:
        if event.kind == "step" and event.step == 5:
            break
    events.close()
    assert sorted(p.suffix for p in folder.iterdir()) == [".checkpoint", ".json", ".json", ".json", ".result"]

    restarted = RunStore(folder)  # a new server process on the same folder
    restored = restarted.load()
    assert not restarted.damaged
    done, stopped, interrupted = (item.job.snapshot() for item in restored)
    assert stopped.state == jobs.STOPPED and stopped.result is None
    assert done.state == jobs.DONE and done.label == uninterrupted.label
    assert done.result.summary() == uninterrupted.snapshot().result.summary()
    assert [e["step"] for e in done.events if e["kind"] == "step"] == list(range(1, 9))
    assert interrupted.state == jobs.INTERRUPTED and interrupted.last_step["step"] == 4  # the last checkpoint's
    assert restarted.record(restored[2].job)["checkpoint_step"] == 4

    # Resume, as the page does it: the run from its checkpoint, in the interrupted one's place and record
    again = jobs.Workspace("store-test-2")
    again.store = restarted
    for item in restored:
        again.add_run(item.job)
    saved = restarted.path(name, ".checkpoint")
    from uap_core.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(saved)
    run = Run(checkpoint.resumed_config(), checkpoints=restarted.checkpoint_policy(name), resume=checkpoint)
    resumed = again.replace_run(restored[2].job, jobs.Job(run, label=interrupted.label, kind="generate").start())
    assert resumed.join(120)
    snap = resumed.snapshot()
    assert snap.state == jobs.DONE and snap.start_info["resumed_from_step"] == 4
    assert [e["step"] for e in snap.events if e["kind"] == "step"] == list(range(1, 9))  # 5…8 continue 1…4
    assert torch.equal(snap.result.delta, uninterrupted.snapshot().result.delta)
    time.sleep(0.2)  # the end-of-work save runs after the job's state is set
    assert not saved.exists(), "a finished run's checkpoint is removed"
    assert json.loads(restarted.path(name, ".run.json").read_text())["state"] == jobs.DONE
    assert [j.snapshot().state for j in again.runs_list()] == [jobs.DONE, jobs.STOPPED, jobs.DONE]

    again.clear_finished()  # Clear finished: every file of those runs deleted on disk
    assert list(folder.iterdir()) == []


def test_shutdown_checkpoints_a_running_run_and_keeps_its_record_running(cifar_npz, tmp_path):
    """SIGTERM (uap_ui/shutdown.py: the wrapped signal handler, then the exit hook): the run ends after its current
    step with a fresh checkpoint; its record stays "running", so the next server shows it interrupted there."""
    store = RunStore(tmp_path / "runs", checkpoint_seconds=3600)  # no periodic checkpoint: only the shutdown's
    workspace = jobs.workspace("shutdown-test")
    workspace.store = store
    name = store.new_name()
    job = jobs.Job(Run(config(cifar_npz, epochs=10_000), checkpoints=store.checkpoint_policy(name)), kind="generate")
    store.begin(job, name, images_record(cifar_npz))
    workspace.add_run(job.start())
    deadline = time.monotonic() + 60
    while (job.snapshot().last_step or {}).get("step", 0) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # the signal: the wrapped handler (Streamlit's, here a stand-in) starts interrupting, then does what it did
    handled: list[int] = []
    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    for number in before:  # stand-ins for both (an xdist worker ignores SIGINT: SIG_IGN is not wrapped)
        signal.signal(number, lambda number, frame: handled.append(number))
    try:
        assert shutdown.wrap_signal_handlers() == ["SIGTERM", "SIGINT"]
        assert shutdown.wrap_signal_handlers() == [], "wrapped once"
        os.kill(os.getpid(), signal.SIGTERM)
        while not (handled and job.interrupted):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)
    assert handled == [signal.SIGTERM]
    assert shutdown.checkpoint_running(timeout=60) >= 1  # the exit hook's part: waits for it
    reached = job.snapshot().last_step["step"]
    assert not job.active and job.interrupted
    time.sleep(0.2)
    item = RunStore(tmp_path / "runs").load()[0]
    assert item.job.snapshot().state == jobs.INTERRUPTED
    assert item.record["checkpoint_step"] == reached >= 3
    with workspace.lock:
        workspace.runs.clear()


# ---------------------------------------------------------------------------------------------- the pages
@pytest.fixture
def visitors(tmp_path, monkeypatch):
    """Classroom mode forced (every browser a visitor), an empty library, no shipped zoo."""
    monkeypatch.setenv("UAP_LIBRARY_DIR", str(tmp_path / "library"))
    monkeypatch.setenv("UAP_SHIPPED_DIR", str(tmp_path / "no-shipped-zoo"))
    monkeypatch.setenv("UAP_CLASSROOM", "1")
    return tmp_path


def test_a_visitor_sees_their_own_kept_runs_a_damaged_one_as_one_line_and_clear_deletes_them(visitors,
                                                                                           uninterrupted):
    mine, theirs = "visitor-a-token-1234", "visitor-b-token-5678"
    my_folder, their_folder = (saved_runs.store_folder(t, owner=False) for t in (mine, theirs))
    assert my_folder != their_folder and my_folder.parent.parent == their_folder.parent.parent  # both visitors'
    for folder, label in ((my_folder, "mine"), (their_folder, "theirs")):
        store = RunStore(folder)
        job = jobs.Job.restored(f"SGD-UAP · cifar_resnet20 · seed 1 ({label})", "generate", jobs.DONE,
                                uninterrupted.snapshot().events, result=uninterrupted.snapshot().result)
        store.keep(job, "run")
        if label == "mine":
            store.keep(job, "demo")
    broken = my_folder / "20000101-000000-00000000.run.json"  # a record whose result file is damaged
    broken.write_text('{"format": "uap-explorer-run-record", "role": "run", "label": "x", "state": "done"}')
    broken.with_name(broken.name.replace(".run.json", ".result")).write_bytes(b"\x10\x00\x00\x00not a result")
    assert len(list(my_folder.iterdir())) == 6

    at = AppTest.from_file(str(PAGES["generate"]), default_timeout=TIMEOUT)
    at.query_params["ws"] = mine
    at.run()
    assert not at.exception
    lines = status_lines(at)
    assert len(lines) == 1 and "(mine)" in lines[0] and "finished" in lines[0]
    assert [m.label for m in at.metric][:1] == ["Held-out fooling ratio"]  # its result panel
    warnings = [w.value for w in at.warning if "could not be read" in w.value]
    assert len(warnings) == 1 and "20000101-000000-00000000.result is not a readable saved result" in warnings[0]
    assert str(my_folder) not in warnings[0]  # the file's name, not the server's folders

    [b for b in at.button if b.label == "Clear finished runs"][0].click().run()
    assert not at.exception and not status_lines(at)
    left = sorted(p.name for p in my_folder.iterdir())  # the damaged run and the kept demo (.run.json, .result)
    assert len(left) == 4 and broken.name in left and sum(n.endswith(".result") for n in left) == 2
    assert len(list(their_folder.iterdir())) == 2, "another visitor's kept run stays"
    [b for b in at.button if b.label == "Discard"][0].click().run()  # the damaged run's own Discard
    assert not at.exception and not [w for w in at.warning if "could not be read" in w.value]
    assert len(list(my_folder.iterdir())) == 2 and not broken.exists()

    home = AppTest.from_file(str(PAGES["home"]), default_timeout=TIMEOUT)
    home.query_params["ws"] = mine
    home.run()
    assert not home.exception
    assert any("What the perturbation does" in h.value for h in home.subheader)
    assert any("kept across a restart" in c.value for c in home.caption)
