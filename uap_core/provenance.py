"""Where and how a run was made: the machine, the project version and the command that reproduces it.

A recorded run (:mod:`uap_core.recording`) and a saved artifact carry this, so a replay can say plainly on what
machine, when, in how long and by which command it was made. Plain data only; no Streamlit, no run import.

    >>> from uap_core.algorithms import get_algorithm
    >>> from uap_core.run_types import RunConfig
    >>> config = RunConfig(model="cifar_resnet20", algorithm="sga", eps=8 / 255, images="x.npz", epochs=5,
    ...                    params={"batch_size": 50})
    >>> generate_command(config, get_algorithm("sga").Params)
    'python -m uap_core generate --model cifar_resnet20 --algorithm sga --eps 8/255 --norm linf --images x.npz --seed 0 --device auto --epochs 5 --batch-size 50'
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import platform
import shlex
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .params import describe

PROGRAM = "python -m uap_core generate"
# always written, even at their defaults: what a reader needs to see to know what the command does
ALWAYS = ("model", "algorithm", "eps", "norm", "images", "seed", "device")
_REPO = Path(__file__).resolve().parent.parent


def _cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """What the run ran on: ``cpu`` (model name), ``cores`` (logical CPUs of this machine), ``threads`` (torch's
    intra-op threads), ``gpu`` (the CUDA device's name when ``device`` is a CUDA one, else None), ``os``,
    ``python``, ``torch`` and ``description`` (one line of all that, for a caption)."""
    import torch

    gpu = None
    if str(device).startswith("cuda") and torch.cuda.is_available():
        try:
            gpu = torch.cuda.get_device_name(torch.device(device))
        except (RuntimeError, AssertionError, ValueError):
            gpu = "CUDA GPU"
    cores = os.cpu_count() or 1
    cpu = _cpu_name()
    info = {"cpu": cpu, "cores": cores, "threads": torch.get_num_threads(), "gpu": gpu,
            "os": platform.platform(terse=True), "python": platform.python_version(), "torch": torch.__version__}
    info["description"] = describe_machine(info)
    return info


def describe_machine(info: dict[str, Any] | None) -> str:
    """One line: "NVIDIA H100 (GPU) · AMD EPYC 7B13, 2 cores" or "AMD EPYC 7B13, 2 cores (CPU only)"."""
    if not info:
        return "machine not recorded"
    if info.get("unrecorded"):  # an artifact saved before machines were recorded: what it says of its device
        return str(info["unrecorded"])
    cpu = f"{info.get('cpu') or 'unknown CPU'}, {info.get('cores') or '?'} cores"
    return f"{info['gpu']} (GPU) · {cpu}" if info.get("gpu") else f"{cpu} (CPU only)"


@functools.lru_cache(maxsize=1)
def project_version() -> dict[str, Any]:
    """``{"uap_explorer": "0.4.0", "git": "f24e97f" | None, "dirty": bool | None}``: the package version and,
    in a git checkout, the commit (and whether tracked files differed from it)."""
    from . import __version__

    version: dict[str, Any] = {"uap_explorer": __version__, "git": None, "dirty": None}
    if not (_REPO / ".git").exists():
        return version
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_REPO, capture_output=True, text=True,
                                timeout=5)
        if commit.returncode == 0:
            version["git"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_REPO,
                                    capture_output=True, text=True, timeout=5)
            version["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def describe_version(version: dict[str, Any] | None) -> str:
    """"UAP Explorer 0.4.0 (git f24e97f)"."""
    if not version:
        return "version not recorded"
    text = f"UAP Explorer {version.get('uap_explorer', '?')}"
    if version.get("git"):
        text += f" (git {version['git']}{', modified' if version.get('dirty') else ''})"
    return text


def now_utc() -> str:
    """The current time, ISO-8601 UTC to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _shown(value: Any) -> str:
    """A value as the command line takes it: k/255 for such fractions, lists comma-separated."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float):
        if 0 < abs(value) < 1 and math.isclose(value * 255, round(value * 255), rel_tol=0, abs_tol=1e-9):
            return f"{round(value * 255)}/255"
        return repr(value)
    return str(value)


def generate_command(config: Any, params_class: type | None = None, images: str | None = None,
                     extra: tuple[str, ...] = ()) -> str:
    """The ``python -m uap_core generate …`` command that makes the run of ``config`` (a RunConfig): every
    command-line setting that differs from its default (and always model, algorithm, eps, norm, images, seed,
    device), then the hyperparameters in ``config.params`` that ``params_class`` (the algorithm's Params) declares.
    ``images`` replaces the image source as written (e.g. a path relative to the repository); ``extra``: options
    appended as they are. Runs on uploaded images cannot be repeated from a command line: the command then names
    ``uploads``."""
    values = dataclasses.asdict(config)
    parts = [PROGRAM]
    for spec in describe(type(config)):
        if not spec["cli"]:
            continue
        value = values.get(spec["name"], spec["default"])
        if spec["name"] == "images" and images is not None:
            value = images
        if value is None or (spec["name"] not in ALWAYS and value == spec["default"]):
            continue
        parts += [spec["flag"], shlex.quote(_shown(value))]
    flags = {f["name"]: f["flag"] for f in describe(params_class)} if params_class is not None else {}
    for name, value in sorted((values.get("params") or {}).items()):
        if value is not None and name in flags:
            parts += [flags[name], shlex.quote(_shown(value))]
    if values.get("stream") == "on":
        parts += ["--stream", "on"]
    return " ".join(parts + list(extra))


def run_provenance(config: Any, params_class: type | None, device: str, seconds: float) -> dict[str, Any]:
    """What a saved run records of where it came from (an artifact's ``recorded`` block): ``date`` (now, UTC),
    ``seconds``, ``machine`` (:func:`machine_info`), ``version`` (:func:`project_version`) and ``command``
    (:func:`generate_command`)."""
    return {"date": now_utc(), "seconds": round(float(seconds), 2), "machine": machine_info(str(device)),
            "version": project_version(), "command": generate_command(config, params_class)}


__all__ = ["describe_machine", "describe_version", "generate_command", "machine_info", "now_utc", "project_version", "run_provenance"]
