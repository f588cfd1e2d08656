"""Recorded runs: a run's whole history saved beside its artifact, to replay on the live charts.

A recording holds

- ``events``: every "start", "step" and "eval" event of the run as :meth:`RunEvent.as_dict` gives it — whatever
  keys they carry, so measures added to the steps later are kept without a change here;
- ``checkpoints``: δ at a few steps (about evenly spaced in steps, and the last step), stored 8-bit: each δ as
  uint8 codes over [-s, s] with s = max|δ| (error at most s/255: 0.04/255 of a pixel at eps 10/255, far below
  what a screen or a classifier resolves), and the kept δ (the artifact's) as float16 (relative error 2⁻¹¹);
- ``meta``: what made it — ``machine`` (CPU, cores, GPU), ``date`` (UTC), ``seconds`` (the run's duration),
  ``command`` (the exact ``python -m uap_core generate …`` that reproduces it), ``version`` (the project's), the
  run's ``config`` and ``summary``, a ``title`` and, for a race, ``race`` (the race it belongs to).

On disk: ``NAME.recording.npz`` beside ``NAME.safetensors`` (:func:`recording_path`), a compressed NumPy archive
of plain arrays — the metadata and the events as UTF-8 JSON bytes, δ as uint8 / float16 — written atomically
(:mod:`uap_core.atomic`) and read with ``allow_pickle=False``: never pickled. A CIFAR-10 ResNet-20 run of 500
steps takes about 60 KB, an EfficientNet-Lite0 run with four 224² checkpoints a few hundred KB.

    rec = record_run(Run(config))        # runs it, δ every quarter of the run; the command from its config
    save_recording(rec, "uaps/my_run.recording.npz")
    rec = load_recording("uaps/my_run.recording.npz")
    for events in replay_frames(rec, speed=10):   # the events so far, 10× faster than recorded
        ...

A replay maps wall-clock time to recorded time (:func:`replay_seconds`) and shows the events recorded up to then
(:meth:`Recording.events_until`); several recordings of a race replay on one clock, as they ran.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .atomic import write_files_atomically
from .errors import ArtifactError
from .jsonable import jsonable
from .provenance import describe_machine, describe_version, generate_command, machine_info, now_utc, project_version

FORMAT = "uap-explorer-recording"
FORMAT_VERSION = 1
RECORDING_SUFFIX = ".recording.npz"
CHECKPOINTS = 4  # δ snapshots per run (plus the last step's)
REPLAY_SPEEDS = (1.0, 5.0, 20.0, 100.0)  # × recorded time


@dataclass
class Checkpoint:
    """δ at one moment of the run. step: updates so far; elapsed: recorded seconds since the start; delta: (3, H, W)
    float32 CPU in pixel units (decoded from its stored 8-bit / float16 form); kind: "step" or "kept" (the δ the
    run returned, the artifact's)."""

    step: int
    elapsed: float
    delta: torch.Tensor
    kind: str = "step"


@dataclass
class Recording:
    """A recorded run: ``meta`` (provenance, config, summary), ``events`` (start / step / eval dicts, in order)
    and ``checkpoints`` (δ at a few steps, in order of step; the kept δ last). ``path``: where it was loaded
    from."""

    meta: dict[str, Any]
    events: list[dict[str, Any]]
    checkpoints: list[Checkpoint] = field(default_factory=list)
    path: Path | None = None

    # ---------------------------------------------------------------------------------- what it shows
    @property
    def title(self) -> str:
        return str(self.meta.get("title") or self.meta.get("label") or "recorded run")

    @property
    def seconds(self) -> float:
        """The run's recorded duration (seconds, the last event's time)."""
        times = [float(e.get("elapsed") or 0.0) for e in self.events]
        return max([float(self.meta.get("seconds") or 0.0), *times])

    @property
    def start(self) -> dict[str, Any]:
        return next((e for e in self.events if e.get("kind") == "start"), {})

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]

    @property
    def final_fooling_ratio(self) -> float | None:
        """The last held-out fooling ratio on the charts (the last "eval" event)."""
        evals = self.of_kind("eval")
        return evals[-1].get("fooling_ratio") if evals else None

    def mean_of(self, key: str, kind: str = "step") -> float | None:
        """The mean of the finite values of ``key`` over the events of ``kind`` (e.g. the mean adjacent
        gradient cosine ``grad_cosine``), or None when there are none."""
        values = [float(e[key]) for e in self.of_kind(kind)
                  if isinstance(e.get(key), (int, float)) and math.isfinite(float(e[key]))]
        return sum(values) / len(values) if values else None

    def events_until(self, seconds: float) -> list[dict[str, Any]]:
        """The events recorded up to ``seconds`` after the start (the start event always)."""
        return [e for i, e in enumerate(self.events) if i == 0 or float(e.get("elapsed") or 0.0) <= seconds]

    def checkpoint_at(self, seconds: float) -> Checkpoint | None:
        """The latest δ recorded up to ``seconds`` (the kept δ once the replay has reached the end)."""
        steps = [c for c in self.checkpoints if c.kind == "step" and c.elapsed <= seconds]
        if seconds >= self.seconds:
            kept = [c for c in self.checkpoints if c.kind == "kept"]
            steps += kept
        return steps[-1] if steps else None

    def describe(self) -> dict[str, str]:
        """The labelling a replay shows: ``machine``, ``date``, ``duration``, ``command``, ``version``."""
        meta = self.meta
        return {"machine": describe_machine(meta.get("machine")), "date": _readable_date(meta.get("date")),
                "duration": f"{self.seconds:.0f} s" if self.seconds < 120 else f"{self.seconds / 60:.1f} min",
                "command": str(meta.get("command") or "command not recorded"),
                "version": describe_version(meta.get("version"))}


def _readable_date(text: Any) -> str:
    """"2026-12-07T02:55:01+00:00" → "2026-12-07 02:55 UTC"; anything else as it is."""
    if not text:
        return "date not recorded"
    text = str(text)
    if len(text) >= 16 and text[10] == "T" and text.endswith(("+00:00", "Z")):
        return f"{text[:10]} {text[11:16]} UTC"
    return text


# ---------------------------------------------------------------------------------------------- δ encoding
def encode_delta_8bit(delta: torch.Tensor) -> tuple[np.ndarray, float]:
    """(uint8 codes (3, H, W), scale s): code = round((δ/s + 1)·127.5), s = max|δ| (1 for δ = 0). Decoding
    (:func:`decode_delta_8bit`) is within s/255 of δ everywhere."""
    values = delta.detach().to("cpu", torch.float32)
    scale = float(values.abs().max()) or 1.0
    codes = torch.round((values / scale + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
    return codes.numpy(), scale


def decode_delta_8bit(codes: np.ndarray, scale: float) -> torch.Tensor:
    """The inverse of :func:`encode_delta_8bit`: float32 (3, H, W) in pixel units."""
    return (torch.from_numpy(codes.astype(np.float32)) / 127.5 - 1.0) * float(scale)


# ---------------------------------------------------------------------------------------------- recording a run
class Recorder:
    """Watches a :class:`~uap_core.run.Run` event by event and keeps what a recording needs::

        recorder = Recorder()
        for event in run.events():
            recorder.observe(event, run)
        recording = recorder.finish(run, command="python -m uap_core generate …")

    δ is copied (8-bit) at the first step at or after each of ``checkpoints`` evenly spaced targets
    (total_steps·k/checkpoints) and at the run's last step; the run itself is not changed."""

    def __init__(self, checkpoints: int = CHECKPOINTS) -> None:
        self.count = max(1, int(checkpoints))
        self.events: list[dict[str, Any]] = []
        self._targets: list[int] = []
        self._stored: list[tuple[int, float, np.ndarray, float]] = []  # step, elapsed, codes, scale
        self._last: tuple[int, float] = (0, 0.0)

    def observe(self, event: Any, run: Any) -> None:
        """Note one event (a RunEvent); copies δ from ``run.algorithm`` at the checkpoint steps."""
        if event.kind == "done":
            return
        self.events.append(jsonable(event.as_dict()))
        if event.kind == "start":
            total = int(event.data.get("total_steps") or 0)
            self._targets = sorted({max(1, round(total * k / self.count)) for k in range(1, self.count)}) if total else []
        elif event.kind == "step":
            self._last = (event.step, event.elapsed)
            if self._targets and event.step >= self._targets[0]:
                while self._targets and event.step >= self._targets[0]:
                    self._targets.pop(0)
                self._store(event.step, event.elapsed, run.algorithm.delta)

    def _store(self, step: int, elapsed: float, delta: torch.Tensor) -> None:
        codes, scale = encode_delta_8bit(delta)
        self._stored.append((step, elapsed, codes, scale))

    def finish(self, run: Any, command: str | None = None, **meta: Any) -> "Recording":
        """The recording of the finished ``run`` (its ``result`` set): events, checkpoints (+ the last step's δ
        and the kept δ), and the metadata — machine, date, seconds, command (default: :func:`generate_command`
        of its config), version, config, summary — plus ``meta`` (title, race, …)."""
        import dataclasses

        result = run.result
        if result is None:
            raise ArtifactError("the run has not finished: nothing to record")
        step, elapsed = self._last
        if not self._stored or self._stored[-1][0] != step:
            self._store(step, elapsed, result.last_delta)
        checkpoints = [Checkpoint(s, e, decode_delta_8bit(c, sc), "step") for s, e, c, sc in self._stored]
        checkpoints.append(Checkpoint(result.best_step, result.seconds, result.delta.detach().cpu().float(), "kept"))
        info = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "date": now_utc(), "seconds": round(result.seconds, 2),
            "machine": machine_info(str(result.info.get("device", "cpu"))), "version": project_version(),
            "command": command or generate_command(result.config, type(run.params)),
            "config": jsonable(dataclasses.asdict(result.config)), "summary": jsonable(result.summary()),
            "label": f"{result.config.algorithm} · {result.config.model} · seed {result.config.seed}",
            **jsonable(meta)}
        recording = Recording(info, self.events, checkpoints)
        recording._codes = list(self._stored)  # the exact 8-bit codes, so saving does not quantise twice
        return recording


def record_run(run: Any, checkpoints: int = CHECKPOINTS, command: str | None = None,
               on_event: Callable[[Any], None] | None = None, **meta: Any) -> Recording:
    """Run ``run`` to its end while recording it (see :class:`Recorder`); ``on_event`` sees every event."""
    recorder = Recorder(checkpoints)
    for event in run.events():
        recorder.observe(event, run)
        if on_event is not None:
            on_event(event)
    return recorder.finish(run, command=command, **meta)


def recording_from_artifact(metadata: dict[str, Any], delta: torch.Tensor | None = None,
                            title: str | None = None) -> Recording | None:
    """A recording made of a saved artifact's metadata (its ``history``; any run saved to the Library has one) and
    its δ as the kept δ; None when the metadata has no history. Provenance comes from the artifact's
    ``recorded`` block where it has one (artifacts saved before it existed: the date it was saved, the device)."""
    history = [e for e in (metadata.get("history") or []) if isinstance(e, dict) and e.get("kind") != "done"]
    if not history:
        return None
    recorded = dict(metadata.get("recorded") or {})
    summary = metadata.get("summary") or {}
    config = metadata.get("config") or {}
    zoo = metadata.get("zoo") or {}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "title": title or zoo.get("name") or "saved run",
        "date": recorded.get("date") or metadata.get("created"),
        "seconds": recorded.get("seconds") or summary.get("seconds") or zoo.get("seconds"),
        "machine": recorded.get("machine") or {"unrecorded": "machine not recorded" + (
            f" (device {summary['device']})" if summary.get("device") else "")},
        "version": recorded.get("version"),
        "command": recorded.get("command") or zoo.get("command"),
        "config": config, "summary": summary,
        "label": f"{config.get('algorithm', metadata.get('algorithm'))} · {config.get('model', metadata.get('model'))}"
                 f" · seed {config.get('seed', metadata.get('seed'))}"}
    checkpoints = []
    if delta is not None:
        best = int(summary.get("best_step") or 0)
        checkpoints.append(Checkpoint(best, float(meta["seconds"] or 0.0), delta.detach().cpu().float(), "kept"))
    return Recording(meta, history, checkpoints)


# ---------------------------------------------------------------------------------------------- files
def recording_path(artifact_path: str | os.PathLike) -> Path:
    """``NAME.safetensors`` → ``NAME.recording.npz`` (beside it)."""
    path = Path(artifact_path)
    stem = path.name[:-len(".safetensors")] if path.name.endswith(".safetensors") else path.name
    return path.with_name(stem + RECORDING_SUFFIX)


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(jsonable(value), ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def recording_bytes(recording: Recording) -> bytes:
    """The ``.npz`` content of a recording (deflate-compressed; arrays only, no pickles)."""
    codes = getattr(recording, "_codes", None)
    step_checkpoints = [c for c in recording.checkpoints if c.kind == "step"]
    if codes is None or len(codes) != len(step_checkpoints):
        codes = [(c.step, c.elapsed, *encode_delta_8bit(c.delta)) for c in step_checkpoints]
    arrays: dict[str, np.ndarray] = {}
    index = []
    for i, (step, elapsed, code, scale) in enumerate(codes):
        arrays[f"delta_{i}"] = np.ascontiguousarray(code)
        index.append({"name": f"delta_{i}", "step": int(step), "elapsed": float(elapsed), "kind": "step",
                      "encoding": "uint8", "scale": float(scale)})
    for j, kept in enumerate(c for c in recording.checkpoints if c.kind == "kept"):
        arrays[f"kept_{j}"] = kept.delta.detach().cpu().to(torch.float16).numpy()
        index.append({"name": f"kept_{j}", "step": int(kept.step), "elapsed": float(kept.elapsed), "kind": "kept",
                      "encoding": "float16"})
    meta = {**recording.meta, "format": FORMAT, "format_version": FORMAT_VERSION, "checkpoints": index}
    arrays["meta"] = _json_bytes(meta)
    arrays["events"] = _json_bytes(recording.events)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def save_recording(recording: Recording, path: str | os.PathLike) -> Path:
    """Write ``recording`` to ``path`` (``.recording.npz`` appended when missing) atomically; returns the path.
    ArtifactError when the write fails (an earlier file of that name is then left as it was)."""
    path = Path(path)
    if not path.name.endswith(".npz"):
        path = path.with_name(path.name + RECORDING_SUFFIX)
    data = recording_bytes(recording)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_files_atomically({path: data})
    except OSError as e:
        raise ArtifactError(f"could not save the recording {path}: {e.strerror or e}") from e
    recording.path = path
    return path


def load_recording(path: str | os.PathLike) -> Recording:
    """Read a ``.recording.npz`` (``allow_pickle=False``). ArtifactError when it is missing, not a recording, or
    written by a newer version."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise ArtifactError(f"no such recording: {path}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{path.name} is not a readable recording: {e}") from e
    try:
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        events = json.loads(arrays["events"].tobytes().decode("utf-8"))
    except (KeyError, ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path.name} is not a recording (no readable meta / events): {e}") from e
    if meta.get("format") != FORMAT:
        raise ArtifactError(f"{path.name} is not a UAP Explorer recording")
    if int(meta.get("format_version") or 0) > FORMAT_VERSION:
        raise ArtifactError(f"{path.name} was written by a newer UAP Explorer (recording format "
                            f"{meta['format_version']}; this one reads up to {FORMAT_VERSION}); please upgrade")
    checkpoints = []
    for entry in meta.get("checkpoints") or []:
        stored = arrays.get(entry.get("name", ""))
        if stored is None:
            continue
        if entry.get("encoding") == "uint8":
            delta = decode_delta_8bit(stored, entry["scale"])
        else:
            delta = torch.from_numpy(stored.astype(np.float32))
        checkpoints.append(Checkpoint(int(entry["step"]), float(entry["elapsed"]), delta, entry.get("kind", "step")))
    return Recording(meta, events, checkpoints, path)


def list_recordings(folder: str | os.PathLike) -> list[Recording]:
    """Every readable recording in ``folder`` (not recursive), in the order of their ``rank`` then name; a file that
    cannot be read is left out."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.glob(f"*{RECORDING_SUFFIX}")) if folder.is_dir() else []:
        try:
            found.append(load_recording(path))
        except ArtifactError:
            continue
    return sorted(found, key=lambda r: (r.meta.get("rank", 1 << 30), r.path.name if r.path else ""))


def races(recordings: Sequence[Recording]) -> dict[str, list[Recording]]:
    """Recordings grouped by their ``race`` name (a recording without one is a race of its own, under its
    title), in order of first appearance."""
    grouped: dict[str, list[Recording]] = {}
    for recording in recordings:
        grouped.setdefault(str(recording.meta.get("race") or recording.title), []).append(recording)
    return grouped


SHIPPED_RECORDINGS = Path(__file__).resolve().parent.parent / "assets" / "recordings"


def shipped_recordings_dir() -> Path:
    """The shipped recorded races (``assets/recordings``, built by ``assets/make_recordings.py``);
    ``$UAP_RECORDINGS_DIR`` overrides it."""
    return Path(os.environ.get("UAP_RECORDINGS_DIR") or SHIPPED_RECORDINGS)


# ---------------------------------------------------------------------------------------------- replaying
def replay_seconds(wall_seconds: float, speed: float, start_at: float = 0.0, duration: float | None = None) -> float:
    """Recorded time shown ``wall_seconds`` after pressing play at recorded time ``start_at``, ``speed`` × faster
    than it was recorded; capped at ``duration``."""
    shown = start_at + max(0.0, wall_seconds) * max(0.0, speed)
    return min(shown, duration) if duration is not None else shown


def race_seconds(recordings: Sequence[Recording]) -> float:
    """How long a race of these recordings lasts on one clock: the longest one."""
    return max((r.seconds for r in recordings), default=0.0)


def replay_frames(recording: Recording, speed: float = 1.0, interval: float = 0.5,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> Iterator[list[dict[str, Any]]]:
    """The events recorded so far, every ``interval`` seconds of wall time at ``speed`` × the recorded pace, ending
    with all of them (for a terminal or a test; the pages draw from :func:`replay_seconds` in their polling
    fragment instead)."""
    began = clock()
    duration = recording.seconds
    while True:
        shown = replay_seconds(clock() - began, speed, 0.0, duration)
        yield recording.events_until(shown)
        if shown >= duration:
            return
        sleep(interval)


__all__ = ["CHECKPOINTS", "Checkpoint", "REPLAY_SPEEDS", "RECORDING_SUFFIX", "Recorder", "Recording",
           "decode_delta_8bit", "encode_delta_8bit", "list_recordings", "load_recording", "race_seconds", "races",
           "record_run", "recording_from_artifact", "recording_path", "replay_frames", "replay_seconds",
           "save_recording", "shipped_recordings_dir"]
