"""Checkpoints of a running generation: everything a :class:`~uap_core.run.Run` needs to continue after its process
was killed, in a file that is never unpickled, and the checks that a checkpoint belongs to the run resuming it.

What a checkpoint holds (``format_version`` 1):

- the method's state, as its :meth:`~uap_core.algorithms.base.UAPAlgorithm.state_dict` describes it: δ, the sign
  steps, the last gradient, the momentum buffer; Adam's moments (DF-UAP, Cos-UAP, the data-free methods) and the
  data-free iteration counters; SV-UAP's iterate v; GAP's generator weights, its Adam state and its noise image;
- the run's loop: the epoch, that epoch's shuffled batches and how many of them are done, the step, the
  image-gradients spent, the seconds elapsed, the seeded generator's state (the one torch.Generator the run and
  every method draw from), the kept δ of the run's DeltaKeeper with its step and fit-set fooling ratio, and the
  history (every event so far, timings included);
- what it belongs to: the run's config, the model's name and a digest of its weights, the method, the project's
  version and the format version.

On disk it is one safetensors file, ``<artifact stem>.checkpoint`` next to the artifact (not ``.safetensors``: the
library lists those as perturbations): the tensors under their path in the state ("algorithm.optimizer.state.0.
exp_avg"), the rest as JSON in the safetensors header (key ``checkpoint``; NaN written as Python's JSON does), with a
SHA-256 of the tensors so a damaged file is refused rather than resumed. It is written whole through
:func:`uap_core.atomic.write_files_atomically`: a reader finds the previous checkpoint or the new one, never part of
one, whether the process is killed during the write or the disk fills up.

Resuming on a CPU continues bit for bit: the resumed run's δ and history (without the timings) equal an
uninterrupted run's. A checkpoint is refused with one line (:class:`~uap_core.errors.ParameterError`) when the run
asks for another config (only where and how long it runs may change: :data:`MAY_CHANGE`), the model's weights
differ, or it was written by another version of the project; a file that is not a readable checkpoint raises
:class:`~uap_core.errors.ArtifactError`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import __version__
from .algorithms import get_algorithm
from .atomic import remove_stale_temps, write_files_atomically
from .errors import ArtifactError, ParameterError, first_line
from .params import param, parse_params
from .run_types import RunConfig
from .tensor_document import NotThisDocument, decode, encode, tensor_digest

log = logging.getLogger(__name__)

FORMAT = "uap-explorer-checkpoint"
FORMAT_VERSION = 1
SUFFIX = ".checkpoint"
# settings a resumed run may change: where, how and how long it runs, not what it computes
MAY_CHANGE = ("device", "precision", "compile", "max_seconds", "stream", "workers")
# the run outcomes after which a checkpoint has nothing left to continue (it may be removed)
FINISHED = ("completed", "converged", "budget")


@dataclass
class CheckpointSettings:
    """The command line's (and later a form's) two settings of long runs."""

    checkpoint_every: str | None = param(
        None, "write a checkpoint next to the artifact every N steps, or every S seconds with an 's' (120s); "
              "a killed run then continues with --resume", flag="--checkpoint-every", form=False)
    resume: str | None = param(
        None, "continue the run saved in this .checkpoint file (other options: omit them, or give the values the "
              "checkpoint has; --device, --precision, --compile, --max-seconds, --stream, --workers may change)",
        form=False)


def parse_every(text: str | int | None) -> tuple[int | None, float | None]:
    """``"50"`` → (50 steps, None); ``"120s"`` → (None, 120.0 seconds); None → (None, None)."""
    if text is None or text == "":
        return None, None
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s?)\s*", str(text))
    if match and match.group(2) and float(match.group(1)) > 0:
        return None, float(match.group(1))
    if match and not match.group(2) and "." not in match.group(1) and int(match.group(1)) > 0:
        return int(match.group(1)), None
    raise ParameterError(f"--checkpoint-every takes a number of steps (50) or of seconds (120s), got {text!r}")


def checkpoint_path(out: Path, name: str) -> Path:
    """Where the checkpoint of the artifact ``out/name.safetensors`` goes: ``out/name.checkpoint``."""
    return Path(out) / f"{name}{SUFFIX}"


def artifact_name(path: str | Path) -> str:
    """The artifact stem a checkpoint file belongs to (``uaps/x.checkpoint`` → ``x``)."""
    name = Path(path).name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else Path(name).stem


@dataclass
class CheckpointPolicy:
    """When and where a :class:`~uap_core.run.Run` writes its checkpoint.

    path: the checkpoint file (:func:`checkpoint_path`); every_steps: after every this many steps; every_seconds:
    once this many seconds have passed since the last one (either, both or neither; a checkpoint asked for with
    :meth:`~uap_core.run.Run.request_checkpoint` and the one a stopped run writes come on top). every: the text the
    user gave (kept in the checkpoint, so a resumed run goes on checkpointing the same way). notify: called with one
    line when a checkpoint could not be written (the run goes on; the previous checkpoint stays) — default: a
    logged warning.
    """

    path: Path
    every_steps: int | None = None
    every_seconds: float | None = None
    every: str | None = None
    notify: Callable[[str], None] | None = None
    written_step: int | None = None  # the step of the checkpoint in ``path`` (a resumed run's: the resumed one)
    failing: bool = field(default=False, init=False)  # the last write failed (one warning per streak)
    _swept: bool = field(default=False, init=False)  # stale temp files of ``path`` removed
    _last_time: float = field(default_factory=lambda: time.monotonic(), init=False)  # since the start or the last one

    @classmethod
    def every_text(cls, path: str | Path, every: str | int | None, notify: Callable[[str], None] | None = None
                   ) -> "CheckpointPolicy":
        steps, seconds = parse_every(every)
        return cls(Path(path), steps, seconds, None if every is None else str(every), notify)

    def due(self, step: int) -> bool:
        """True when the step just made should be followed by a checkpoint."""
        if self.every_steps is not None and step % self.every_steps == 0:
            return True
        return self.every_seconds is not None and time.monotonic() - self._last_time >= self.every_seconds

    def write(self, data: bytes, step: int) -> bool:
        """Write the checkpoint's bytes atomically; on a file-system error (disk full, permissions) keep the
        previous checkpoint, say so once through ``notify`` and return False — the run goes on."""
        self._last_time = time.monotonic()
        try:
            if not self._swept:  # the first write: leave no temp file of a killed earlier write behind
                remove_stale_temps(self.path)
                self._swept = True
            write_files_atomically({self.path: data})
        except OSError as exc:
            if not self.failing:
                kept = (f"the checkpoint of step {self.written_step} is kept" if self.written_step is not None
                        else "no checkpoint yet")
                message = (f"checkpoint of step {step} not written ({exc.strerror or first_line(exc)}: "
                           f"{self.path}); the run goes on, {kept}")
                (self.notify or log.warning)(message)
            self.failing = True
            return False
        self.failing, self.written_step = False, step
        return True

    def remove(self) -> None:
        """Delete the checkpoint (after the run finished and its artifact was saved)."""
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- encoding
def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON data; each tensor is copied (detached, on the CPU) into ``tensors`` under its path ``key``
    and referenced as {"$tensor": key}; tuples and dicts with keys other than text are tagged so they come back
    as they were."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {"$tensor": key}
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, f"{key}.{i}", tensors) for i, item in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(item, f"{key}.{i}", tensors) for i, item in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(item, f"{key}.{k}", tensors) for k, item in value.items()}
        return {"$items": [[_encode(k, f"{key}.{i}k", tensors), _encode(item, f"{key}.{k}", tensors)]
                           for i, (k, item) in enumerate(value.items())]}
    raise TypeError(f"a checkpoint cannot hold {key} of type {type(value).__name__}")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"$tensor"}:
        return tensors[value["$tensor"]]
    if set(value) == {"$tuple"}:
        return tuple(_decode(item, tensors) for item in value["$tuple"])
    if set(value) == {"$items"}:
        return {_decode(k, tensors): _decode(item, tensors) for k, item in value["$items"]}
    return {k: _decode(item, tensors) for k, item in value.items()}


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's parameters and buffers — their names, dtypes, shapes and values —
    whatever device or memory format they are in: the same weights give the same digest everywhere."""
    return tensor_digest(dict(model.state_dict()))[:16]


def _config_json(config: RunConfig) -> dict[str, Any]:
    return {spec.name: getattr(config, spec.name) for spec in dataclasses.fields(RunConfig)}


def encode_checkpoint(config: RunConfig, state: dict[str, Any], model_digest: str, every: str | None = None) -> bytes:
    """The checkpoint file's bytes: ``state`` (the run's: see :meth:`uap_core.run.Run.checkpoint_state`) with what it
    belongs to."""
    tensors: dict[str, torch.Tensor] = {}
    document = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__, "method": config.algorithm,
        "model": config.model, "model_digest": model_digest, "config": _config_json(config), "every": every,
        "step": state["run"]["step"], "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "state": _encode(state, "state", tensors),
    }
    return encode(tensors, document, FORMAT, FORMAT_VERSION, "checkpoint")


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class RunCheckpoint:
    """A checkpoint read back: the config it was written for, what it belongs to and the state to continue from
    (tensors on the CPU). step: the steps done; every: the ``--checkpoint-every`` it was written with."""

    path: Path
    config: RunConfig
    model: str
    model_digest: str
    method: str
    version: str
    step: int
    every: str | None
    state: dict[str, Any]

    def differences(self, config: RunConfig) -> list[str]:
        """The settings of ``config`` that differ from the checkpoint's, as "name saved → asked" (the ones in
        :data:`MAY_CHANGE` left out; the method's parameters compared with their defaults filled in)."""
        ours = self.config
        if config.algorithm != ours.algorithm:  # another method: its parameters are not comparable
            ours, config = dataclasses.replace(ours, params={}), dataclasses.replace(config, params={})
        saved, asked = _comparable(ours), _comparable(config)
        saved.update(saved.pop("params"))  # the method's parameters by their own names
        asked.update(asked.pop("params"))
        return [f"{name} {_shown(saved[name])} → {_shown(asked.get(name))}" for name in saved
                if name not in MAY_CHANGE and saved[name] != asked.get(name)]

    def check_config(self, config: RunConfig) -> None:
        """ParameterError, one line, when ``config`` asks for another run than the one saved."""
        differs = self.differences(config)
        if differs:
            raise ParameterError(f"the checkpoint {self.path.name} is of another run: {'; '.join(differs)} — leave "
                                 f"these settings out (or give the checkpoint's) to resume it")

    def check_model(self, digest: str) -> None:
        if digest != self.model_digest:
            raise ParameterError(f"the checkpoint {self.path.name} was written with other weights of {self.model} "
                                 f"(weights digest {self.model_digest}, now {digest})")

    def resumed_config(self, changes: dict[str, Any] | None = None) -> RunConfig:
        """The checkpoint's config with ``changes`` applied (a setting's value, or the method's parameters under
        "params", merged into the saved ones); ParameterError when a change asks for another run."""
        changes = dict(changes or {})
        params = {**self.config.params, **(changes.pop("params", None) or {})}
        unknown = set(changes) - {f.name for f in dataclasses.fields(RunConfig)}
        if unknown:
            raise ParameterError(f"unknown setting(s) {', '.join(sorted(unknown))}")
        config = dataclasses.replace(self.config, **changes, params=params)
        self.check_config(config)
        return config


def _comparable(config: RunConfig) -> dict[str, Any]:
    cfg = config.validated()
    values = dataclasses.asdict(cfg)
    values["params"] = dataclasses.asdict(parse_params(get_algorithm(cfg.algorithm).Params, cfg.params))
    return values


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def load_checkpoint(path: str | Path) -> RunCheckpoint:
    """Read a checkpoint (never unpickles: safetensors and JSON). ArtifactError when the file is missing, damaged or
    not a checkpoint; ParameterError when it was written by another version of the project."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read the checkpoint {path}: {exc.strerror or first_line(exc)}") from None
    try:
        document, tensors = decode(data, FORMAT, FORMAT_VERSION, "checkpoint", "a UAP Explorer checkpoint")
    except NotThisDocument as exc:
        raise ArtifactError(f"{path} is not a readable checkpoint ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the bytes, the answer is one line
        raise ArtifactError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {first_line(exc)})") from None
    if document.get("version") != __version__:
        raise ParameterError(f"the checkpoint {path.name} was written by UAP Explorer {document.get('version')}, this "
                             f"is {__version__}: resume it with that version")
    try:
        config = RunConfig(**document["config"])
        state = _decode(document["state"], tensors)
        return RunCheckpoint(path=path, config=config, model=document["model"], model_digest=document["model_digest"],
                             method=document["method"], version=document["version"], step=int(document["step"]),
                             every=document.get("every"), state=state)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a readable checkpoint (missing or malformed {first_line(exc)})") from None


__all__ = ["CheckpointPolicy", "CheckpointSettings", "FINISHED", "MAY_CHANGE", "RunCheckpoint", "SUFFIX",
           "artifact_name", "checkpoint_path", "encode_checkpoint", "load_checkpoint", "model_digest", "parse_every"]
