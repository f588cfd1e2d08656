"""A workspace's runs on disk, so that they survive a restart of the server (plain Python, no Streamlit).

One folder per workspace, in its owner's or visitor's space (chosen by :mod:`uap_ui.saved_runs`); one record per run
shown on the Generate page (role "run") or as the Home demo (role "demo"), all written atomically
(:mod:`uap_core.atomic`), never pickled:

- ``NAME.run.json``: the label, the role, the state, the config, the images it ran on (to resume it) and when it
  was started;
- ``NAME.result``: a finished run's result (δ, history, settings, evaluations: :mod:`uap_core.result_file`), written
  together with its record;
- ``NAME.checkpoint``: while a run started from this workspace goes on, its checkpoint (:mod:`uap_core.checkpoint`,
  every :data:`DEFAULT_CHECKPOINT_SECONDS` and when the server shuts down); removed when the run ends.

A record whose state is still "running" when the store is loaded belongs to a server process that ended: the run is
restored as *interrupted* (its events up to the checkpoint), to be resumed from the checkpoint or discarded. A
record that cannot be read is listed in :attr:`RunStore.damaged` with one line and left on disk; the others load.
Dropping a run from the workspace (Clear finished, Discard, the oldest of too many) deletes its files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uap_core.atomic import remove_stale_temps, write_files_atomically
from uap_core.checkpoint import CheckpointPolicy, load_checkpoint
from uap_core.errors import UAPError, first_line
from uap_core.jsonable import jsonable
from uap_core.result_file import load_result, save_result
from uap_core.run_types import RunConfig

from .jobs import DONE, FAILED, INTERRUPTED, STOPPED, Job

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".run.json"
RESULT_SUFFIX = ".result"
CHECKPOINT_SUFFIX = ".checkpoint"
FORMAT = "uap-explorer-run-record"
DEFAULT_CHECKPOINT_SECONDS = 60.0  # a run started from the app writes its checkpoint at least this often
RUNNING = "running"  # a record's state while its run goes on (and after a restart: interrupted)


@dataclass
class Damaged:
    """A record that could not be read: its name and the one line that says why."""

    name: str
    role: str
    line: str


@dataclass
class Restored:
    """A run read back from the store: its role ("run" or "demo"), the job drawn for it and its record."""

    role: str
    job: Job
    record: dict[str, Any]


class RunStore:
    """The runs of one workspace in ``folder`` (created on the first write). ``checkpoint_seconds``: how often a
    run started here writes its checkpoint."""

    def __init__(self, folder: str | Path, checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS) -> None:
        self.folder = Path(folder)
        self.checkpoint_seconds = float(checkpoint_seconds)
        self.damaged: list[Damaged] = []
        self._names: dict[tuple[int, str], str] = {}  # (job id, role) → its record's name
        self._records: dict[str, dict[str, Any]] = {}  # name → record
        self._settled: set[str] = set()  # records read back from disk (their job never runs: nothing to save)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------------------ files
    def path(self, name: str, suffix: str) -> Path:
        return self.folder / f"{name}{suffix}"

    def _files(self, name: str) -> list[Path]:
        return [self.path(name, suffix) for suffix in (RECORD_SUFFIX, RESULT_SUFFIX, CHECKPOINT_SUFFIX)]

    def _write_record(self, name: str, record: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_files_atomically({self.path(name, RECORD_SUFFIX): _record_bytes(record)})

    def _delete(self, name: str) -> None:
        for path in self._files(name):
            try:
                path.unlink(missing_ok=True)
                remove_stale_temps(path)
            except OSError as exc:
                log.warning("could not delete %s: %s", path, exc)

    @staticmethod
    def new_name() -> str:
        """A fresh record name: the start time (so names sort by it) and a random suffix."""
        return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(4)

    # ------------------------------------------------------------------------------------------ runs going
    def checkpoint_policy(self, name: str) -> CheckpointPolicy:
        """Where and how often the run of record ``name`` writes its checkpoint."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return CheckpointPolicy(self.path(name, CHECKPOINT_SUFFIX), every_seconds=self.checkpoint_seconds,
                                every=f"{self.checkpoint_seconds:g}s")

    def begin(self, job: Job, name: str, images: dict[str, Any] | None, role: str = "run") -> None:
        """``job`` was started here with :meth:`checkpoint_policy` of ``name``: write its record now (state running),
        so that a restart finds it however the process ends; ``images``: the image choice to resume it with (None:
        it cannot be resumed, e.g. uploads)."""
        record = _new_record(job, role, images, checkpoint=True)
        with self._lock:
            self._names[job.id, role], self._records[name] = name, record
            self._write_record(name, record)

    def keep(self, job: Job, role: str) -> None:
        """The workspace shows ``job``: once it has ended, its result is saved (at once if it has ended already)."""
        with self._lock:
            name = self._names.get((job.id, role))
            if name is None:
                name = self._names[job.id, role] = self.new_name()
                self._records[name] = _new_record(job, role, None, checkpoint=False)
            elif name in self._settled:
                return
        job.when_finished(lambda ended: self._ended(ended, role, name))

    def replace(self, old: Job, new: Job, role: str = "run") -> None:
        """``new`` (a resumed run) takes over ``old``'s record; its end is saved there."""
        with self._lock:
            name = self._names.pop((old.id, role), None)
            if name is None:
                return
            self._names[new.id, role] = name
            self._records[name]["state"] = RUNNING
            self._settled.discard(name)
        new.when_finished(lambda ended: self._ended(ended, role, name))

    def forget(self, job: Job, role: str) -> None:
        """The workspace dropped ``job`` from ``role``: delete its files."""
        with self._lock:
            name = self._names.pop((job.id, role), None)
            if name is not None:
                self._records.pop(name, None)
                self._delete(name)

    def record(self, job: Job, role: str = "run") -> dict[str, Any] | None:
        """The record of ``job`` in ``role`` (a copy), or None when the store does not keep it."""
        with self._lock:
            name = self._names.get((job.id, role))
            return None if name is None else {**self._records[name], "name": name}

    def _ended(self, job: Job, role: str, name: str) -> None:
        """In the job's thread when its work ended: save its result and drop its checkpoint — unless the server's
        shutdown ended it (its record stays "running", its checkpoint stays) or the workspace dropped it meanwhile
        (its files, a checkpoint written since included, are deleted)."""
        with self._lock:
            if self._names.get((job.id, role)) != name:
                if name not in self._records:
                    self._delete(name)
                return
            if job.interrupted:
                return
            snap = job.snapshot()
            record = {**self._records[name], "state": snap.state, "error": snap.error, "label": snap.label,
                      "result": snap.result is not None}
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                if snap.result is not None:
                    save_result(self.path(name, RESULT_SUFFIX), snap.result, {"record": name},
                                companions={self.path(name, RECORD_SUFFIX): _record_bytes(record)})
                else:
                    self._write_record(name, record)
            except OSError as exc:
                log.warning("the run %s could not be kept on disk (%s): it is shown until the server restarts",
                            snap.label, exc.strerror or exc)
                return
            self._records[name] = record
            self.path(name, CHECKPOINT_SUFFIX).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ after a restart
    def load(self) -> list[Restored]:
        """Every readable record as a job, oldest first: finished runs with their results, runs the restart
        interrupted with their events up to their checkpoint. Unreadable ones go to :attr:`damaged`."""
        restored, damaged = [], []
        try:
            paths = sorted(self.folder.glob(f"*{RECORD_SUFFIX}")) if self.folder.is_dir() else []
        except OSError as exc:  # an unreadable folder: nothing shown, one line
            self.damaged = [Damaged("", "run", f"The saved runs could not be read ({exc.strerror or exc}).")]
            return []
        for path in paths:
            if path.name.startswith("."):
                continue  # a temp file of an interrupted write
            name = path.name[: -len(RECORD_SUFFIX)]
            role = "run"
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(record, dict) or record.get("format") != FORMAT:
                    raise ValueError("it is not a run record of UAP Explorer")
                role = record.get("role", "run")
                job = self._job(name, record)
            except (UAPError, OSError, ValueError, KeyError, TypeError) as exc:
                reason = str(exc) if isinstance(exc, UAPError) else f"{path.name}: {first_line(exc)}"
                reason = reason.replace(f"{self.folder}{os.sep}", "")  # the file's name, not the server's folders
                damaged.append(Damaged(name, role, f"A saved run could not be read and was left on disk as it is "
                                                   f"({reason})."))
                continue
            restored.append(Restored(role, job, record))
        with self._lock:
            for item in restored:
                name = item.record["name"]
                self._names[item.job.id, item.role] = name
                self._settled.add(name)
                self._records[name] = {k: v for k, v in item.record.items() if k != "name"}
            self.damaged = damaged
        return sorted(restored, key=lambda item: item.record.get("created", 0.0))

    def _job(self, name: str, record: dict[str, Any]) -> Job:
        record["name"] = name
        label, kind, state = str(record["label"]), str(record.get("kind", "generate")), str(record["state"])
        created = float(record.get("created", 0.0)) or None
        if state in (DONE, STOPPED) and record.get("result") is False:  # stopped before it had a δ (in the queue)
            return Job.restored(label, kind, state, [], config=_config(record), created=created)
        if state in (DONE, STOPPED):
            result, _ = load_result(self.path(name, RESULT_SUFFIX))
            return Job.restored(label, kind, state, [*result.history, _done_event(result)], result=result,
                                created=created)
        if state == FAILED:
            return Job.restored(label, kind, FAILED, [], error=record.get("error") or "the run failed",
                                config=_config(record), created=created)
        if state != RUNNING:
            raise ValueError(f"unknown state {state!r}")
        checkpoint = self.path(name, CHECKPOINT_SUFFIX)
        if record.get("checkpoint") and checkpoint.is_file():
            saved = load_checkpoint(checkpoint)
            record["checkpoint_step"] = saved.step
            return Job.restored(label, kind, INTERRUPTED, saved.state["history"],
                                delta=saved.state["run"]["keeper"]["delta"], config=saved.config, created=created)
        record["checkpoint_step"] = None  # stopped before its first checkpoint: it can only start again
        return Job.restored(label, kind, INTERRUPTED, [], config=_config(record), created=created)

    def discard_damaged(self, name: str) -> None:
        """Delete the files of a damaged record."""
        with self._lock:
            self._delete(name)
            self.damaged = [d for d in self.damaged if d.name != name]


# ---------------------------------------------------------------------------------------------- records
def _new_record(job: Job, role: str, images: dict[str, Any] | None, checkpoint: bool) -> dict[str, Any]:
    config = job.config
    return {"format": FORMAT, "role": role, "label": job.label, "kind": job.kind, "state": RUNNING,
            "created": job.created, "checkpoint": checkpoint, "images": images,
            "config": jsonable(dataclasses.asdict(config)) if config is not None else None}


def _record_bytes(record: dict[str, Any]) -> bytes:
    return json.dumps(jsonable({k: v for k, v in record.items() if k != "name"}), indent=1).encode("utf-8")


def _config(record: dict[str, Any]) -> RunConfig | None:
    return RunConfig(**record["config"]) if record.get("config") else None


def _done_event(result) -> dict[str, Any]:
    """The "done" event the run yielded last (its summary), as a job's events end."""
    epoch = max((int(e.get("epoch", 0)) for e in result.history), default=0)
    return {"kind": "done", "step": result.steps, "epoch": epoch, "elapsed": result.seconds, **result.summary()}


__all__ = ["DEFAULT_CHECKPOINT_SECONDS", "Damaged", "Restored", "RunStore"]
