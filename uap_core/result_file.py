"""A finished run's result as one file, to keep it across a restart: :class:`~uap_core.run_types.RunResult` ↔
bytes.

The file is a safetensors file (never unpickled): the tensors — the kept δ and the last δ (where it differs), (3, H, W)
float32 in pixel units, and the held-out and random-noise evaluations' per-image labels and top-1 confidences, (N,) — and, as JSON in
its header (key ``result``), everything else: the run's config, the history (every event, NaN kept as Python's JSON
writes it), the info, the evaluations' figures and label histograms, the steps, seconds, the outcome, and a
caller's ``extra`` dict (the app keeps a run's label and state there), with a SHA-256 of the tensors so that a damaged
file is refused with one line (:class:`~uap_core.errors.ArtifactError`) instead of being read wrong.

Read back, the result is the same: its ``summary()`` and ``metadata()`` (but for the provenance's date) and its
tensors equal the original's. :func:`save_result` writes it through :func:`uap_core.atomic.write_files_atomically`
(with any companion files, all or nothing).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .atomic import write_files_atomically
from .errors import ArtifactError, first_line
from .evaluation import Evaluation
from .metrics import LabelCount, LabelHistogram
from .run_types import RunConfig, RunResult
from .tensor_document import NotThisDocument, decode, encode

FORMAT = "uap-explorer-result"
FORMAT_VERSION = 1
SUFFIX = ".result"
_EVALUATION_TENSORS = ("clean_labels", "perturbed_labels", "clean_confidence", "perturbed_confidence")


def _plain(value: Any) -> Any:
    """json.dumps' fallback: tensors and NumPy values as numbers or lists, anything else (paths) as text."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.detach().cpu().tolist() if hasattr(value, "detach") else value.tolist()
    return str(value)


def _histogram(histogram: LabelHistogram) -> dict[str, Any]:
    return {"over": histogram.over, "total": histogram.total,
            "counts": [[c.label, c.name, c.count, c.share] for c in histogram.counts]}


def _histogram_from(data: dict[str, Any]) -> LabelHistogram:
    return LabelHistogram([LabelCount(int(label), str(name), int(count), float(share))
                           for label, name, count, share in data["counts"]], int(data["total"]), str(data["over"]))


def _evaluation(evaluation: Evaluation, key: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    for name in _EVALUATION_TENSORS:
        value = getattr(evaluation, name)
        if value is not None:
            tensors[f"{key}.{name}"] = value.detach().to("cpu", copy=True).contiguous()
    return {"count": evaluation.count, "fooling_ratio": evaluation.fooling_ratio,
            "clean_accuracy": evaluation.clean_accuracy, "attacked_accuracy": evaluation.attacked_accuracy,
            "target_success": evaluation.target_success, "labelled": evaluation.labelled,
            "histogram": _histogram(evaluation.histogram), "histogram_fooled": _histogram(evaluation.histogram_fooled)}


def _evaluation_from(data: dict[str, Any], key: str, tensors: dict[str, torch.Tensor]) -> Evaluation:
    return Evaluation(count=int(data["count"]), fooling_ratio=float(data["fooling_ratio"]),
                      clean_accuracy=data["clean_accuracy"], attacked_accuracy=data["attacked_accuracy"],
                      target_success=data["target_success"], histogram=_histogram_from(data["histogram"]),
                      histogram_fooled=_histogram_from(data["histogram_fooled"]), labelled=int(data["labelled"]),
                      **{name: tensors.get(f"{key}.{name}") for name in _EVALUATION_TENSORS})


def result_to_bytes(result: RunResult, extra: dict[str, Any] | None = None) -> bytes:
    """The file's bytes for ``result``; ``extra``: JSON data of the caller's, read back beside the result."""
    tensors = {"delta": result.delta.detach().to("cpu", copy=True).contiguous()}
    if not torch.equal(result.last_delta.cpu(), tensors["delta"]):  # else (keep="last", or the best was the last)
        tensors["last_delta"] = result.last_delta.detach().to("cpu", copy=True).contiguous()  # stored once
    document = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "version": __version__,
        "config": {spec.name: getattr(result.config, spec.name) for spec in dataclasses.fields(RunConfig)},
        "best_step": result.best_step, "steps": result.steps, "seconds": result.seconds, "reason": result.reason,
        "evaluation": _evaluation(result.evaluation, "evaluation", tensors),
        "random_evaluation": _evaluation(result.random_evaluation, "random_evaluation", tensors),
        "history": result.history, "info": result.info, "extra": extra or {},
    }
    return encode(tensors, document, FORMAT, FORMAT_VERSION, "result", default=_plain)


def result_from_bytes(data: bytes, name: str = "the result") -> tuple[RunResult, dict[str, Any]]:
    """(the result, the caller's ``extra``) from a file's bytes; ArtifactError, one line naming ``name``, when they
    are not a readable result (damaged, cut short, another format)."""
    try:
        document, tensors = decode(data, FORMAT, FORMAT_VERSION, "result", "a saved UAP Explorer result")
        result = RunResult(
            config=RunConfig(**document["config"]), delta=tensors["delta"],
            last_delta=tensors.get("last_delta", tensors["delta"]),
            best_step=int(document["best_step"]),
            evaluation=_evaluation_from(document["evaluation"], "evaluation", tensors),
            random_evaluation=_evaluation_from(document["random_evaluation"], "random_evaluation", tensors),
            steps=int(document["steps"]), seconds=float(document["seconds"]), reason=str(document["reason"]),
            history=list(document["history"]), info=dict(document["info"]))
        return result, dict(document.get("extra") or {})
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with the bytes, the answer is one line
        reason = first_line(exc) if isinstance(exc, NotThisDocument) else f"{type(exc).__name__}: {first_line(exc)}"
        raise ArtifactError(f"{name} is not a readable saved result ({reason})") from None


def save_result(path: str | Path, result: RunResult, extra: dict[str, Any] | None = None,
                companions: dict[Path, bytes] | None = None) -> None:
    """Write ``result`` to ``path`` atomically, together with ``companions`` (path → bytes; all or nothing)."""
    write_files_atomically({Path(path): result_to_bytes(result, extra), **(companions or {})})


def load_result(path: str | Path) -> tuple[RunResult, dict[str, Any]]:
    """(the result, its ``extra``) saved at ``path``; ArtifactError, one line, when it is missing or unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read the saved result {path}: {exc.strerror or first_line(exc)}") from None
    return result_from_bytes(data, path.name)


__all__ = ["SUFFIX", "load_result", "result_from_bytes", "result_to_bytes", "save_result"]
