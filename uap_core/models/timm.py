"""``timm:ARCH[.TAG][?classes=N]``: any timm classifier by name, with timm's own preprocessing.

:func:`uap_core.models.get_spec`, :func:`~uap_core.models.model_status` and :func:`~uap_core.models.load_model`
resolve these names through this module's row of the family table (:data:`FAMILY`: :func:`timm_spec`,
:func:`timm_status`, :func:`build_timm`), so the CLI's ``--model``, :class:`~uap_core.run.RunConfig` and ensembles
take them like registry names. The network is wrapped in :class:`~uap_core.models.spec.Classifier` by
``load_model``: input (N, 3, H, W) in [0, 1], output (N, classes) logits.

Nothing here downloads at import or listing time: timm's hub is asked only when loading ``timm:`` weights that are
neither given (``weights=``) nor in timm's cache, and only when it answers within a few seconds.
"""

from __future__ import annotations

import difflib
import math
import os
import socket
import threading
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelUnavailableError, ParameterError, first_line
from .spec import ModelFamily, ModelSpec, ModelStatus, class_labels, load_state_dict, name_options

TIMM_PREFIX = "timm:"
FORM = ("timm:ARCH[.TAG]  any timm model with timm's preprocessing, e.g. timm:convnext_tiny (weights: --weights FILE, "
        "timm's cache, or its hub when online; names: python -c \"import timm; print(timm.list_models('*convnext*', "
        "pretrained=True))\")")
_HUB_PROBE_SECONDS = 3.0


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelUnavailableError("timm: models need the timm package: pip install -r requirements.txt "
                                    "(or pip install timm)") from None
    return timm


def _timm_arch(name: str) -> tuple[str, dict[str, str]]:
    body, _, query = name[len(TIMM_PREFIX):].partition("?")
    return body.strip(), name_options(name, query, ("classes",))


def timm_spec(name: str) -> ModelSpec:
    timm = _timm()
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    arch, options = _timm_arch(name)
    if not arch or not timm.is_model(arch.partition(".")[0]):
        close = difflib.get_close_matches(arch.partition(".")[0], timm.list_models(), n=5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        family = (close[0] if close else arch or "resnet").split("_")[0]
        raise ParameterError(
            f"unknown timm model {arch!r}{hint}; list names with: python -c \"import timm; "
            f"print(timm.list_models('*{family}*', pretrained=True))\"")
    try:
        cfg = get_pretrained_cfg(arch)
    except RuntimeError:  # an unknown pretrained tag
        tags = timm.list_pretrained(arch.partition(".")[0] + ".*")
        raise ParameterError(f"timm model {arch.partition('.')[0]!r} has no pretrained tag "
                             f"{arch.partition('.')[2]!r}; its tags: {', '.join(tags) or 'none'}") from None
    cfg_dict = cfg.to_dict() if cfg is not None else {}
    data = resolve_data_config(pretrained_cfg=cfg_dict)
    _, height, width = data["input_size"]
    if height != width:
        raise ParameterError(f"timm model {arch} takes {height}×{width} inputs; only square inputs are supported")
    crop_pct = float(data.get("crop_pct") or 0.875)
    count = int(cfg_dict.get("num_classes") or 1000)
    if "classes" in options:
        count = int(options["classes"]) if options["classes"].isdigit() else -1
        if not 2 <= count <= 1_000_000:
            raise ParameterError(f"{name}: classes must be a whole number >= 2; got {options['classes']!r}")
    dataset, labels = class_labels(name, count, None)
    tag = (cfg.tag if cfg is not None else None) or "no pretrained weights"
    return ModelSpec(
        name=name, title=f"{arch.partition('.')[0]} (timm, {tag})", family="timm", dataset=dataset,
        input_size=int(height), resize_size=max(int(height), math.floor(height / crop_pct)),
        mean=tuple(float(v) for v in data["mean"]), std=tuple(float(v) for v in data["std"]),
        package="timm", weights_file=(cfg_dict.get("hf_hub_id") or cfg_dict.get("url") or None), labels=labels,
        interpolation=str(data.get("interpolation") or "bilinear"))


def _hf_cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None  # huggingface_hub's default


def _timm_cached_weights(arch: str) -> Path | None:
    """The timm weights of ``arch`` already on disk (Hugging Face cache or torch hub's), without any network."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            repo, _, revision = cfg.hf_hub_id.partition("@")
            for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else
                             ["model.safetensors", "pytorch_model.bin"]):
                found = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir(), revision=revision or None)
                if isinstance(found, str) and Path(found).is_file():
                    return Path(found)
    if cfg.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
        if candidate.is_file():
            return candidate
    return None


def _hub_offline() -> str | None:
    """Why timm's hub cannot be reached now (None when it can): HF_HUB_OFFLINE is set, or huggingface.co does not
    answer within a few seconds (checked in a thread, so a hanging DNS lookup cannot hang the caller)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host.partition(":")
    result: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, int(port or 443)), timeout=_HUB_PROBE_SECONDS).close()
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result.append(exc)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_HUB_PROBE_SECONDS + 0.5)
    if not result:
        return f"{host} did not answer within {_HUB_PROBE_SECONDS:g} s"
    if result[0] is not None:
        return f"{host} is unreachable ({type(result[0]).__name__})"
    return None


def _read_state_dict(path: Path) -> dict:
    """A state dict from a .safetensors file (by content) or a torch.save file (``weights_only=True``)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    if head[8:9] == b"{" and n > 1:
        try:
            import safetensors.torch

            return dict(safetensors.torch.load_file(str(path), device="cpu"))
        except Exception as exc:
            raise ModelUnavailableError(f"cannot read safetensors weights {path}: {exc}") from None
    state = load_state_dict(path)
    for key in ("state_dict_ema", "model_ema", "model"):  # timm training checkpoints
        if isinstance(state.get(key), dict):
            return {k.removeprefix("module."): v for k, v in state[key].items()}
    return state


def timm_status(spec: ModelSpec) -> ModelStatus:
    try:
        _timm()
    except ModelUnavailableError:
        return ModelStatus(spec, "needs package", "pip install timm")
    arch, options = _timm_arch(spec.name)
    if "classes" in options:
        return ModelStatus(spec, "needs weights file", f"a {spec.num_classes}-class head: pass a local weights file")
    found = _timm_cached_weights(arch)
    if found:
        return ModelStatus(spec, "available", f"weights: {found}")
    if not spec.weights_file:
        return ModelStatus(spec, "needs weights file", "timm has no pretrained weights for it: pass a local file")
    return ModelStatus(spec, "needs download", f"{spec.weights_file} (timm downloads it on first load when online), "
                                               f"or pass a local weights file")


def build_timm(spec: ModelSpec, weights: Path | None, pretrained: bool, download: bool) -> nn.Module:
    timm = _timm()
    arch, options = _timm_arch(spec.name)
    kwargs: dict = {"num_classes": spec.num_classes}
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    source = weights or _timm_cached_weights(arch)
    if source is None and "classes" in options:
        raise ModelUnavailableError(f"{spec.name}: a {spec.num_classes}-class head has no hub weights; pass a local "
                                    f"weights file (--weights FILE)")
    if source is not None:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(arch)
        if cfg is not None and cfg.custom_load and weights is None:  # a foreign format (JAX .npz): timm reads it
            overlay = {"file": str(source), "source": None}
        else:
            overlay = {"state_dict": _read_state_dict(source), "source": None, "num_classes": spec.num_classes}
        try:
            return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelUnavailableError(f"the weights {source} do not fit {spec.name}: "
                                        f"{first_line(exc)}") from None
    hint = (f"pass a local weights file (--weights FILE / weights=FILE: a state dict or .safetensors), or load "
            f"{spec.name} once on a machine with a network so timm caches it")
    if not spec.weights_file:
        raise ModelUnavailableError(f"timm has no pretrained weights for {arch}; {hint}")
    if not download:
        raise ModelUnavailableError(f"the weights of {spec.name} ({spec.weights_file}) are not cached and "
                                    f"downloading is off; {hint}")
    offline = _hub_offline()
    if offline:
        raise ModelUnavailableError(f"the weights of {spec.name} ({spec.weights_file}) are not cached and the hub "
                                    f"cannot be reached ({offline}): no network and no file; {hint}")
    try:
        return timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as exc:  # network errors, hub errors, ...
        raise ModelUnavailableError(f"could not download the weights of {spec.name} ({type(exc).__name__}: "
                                    f"{first_line(exc)}); {hint}") from None


FAMILY = ModelFamily("timm", build=build_timm, status=timm_status, prefix=TIMM_PREFIX, spec_of=timm_spec)

__all__ = ["FAMILY", "FORM", "TIMM_PREFIX", "build_timm", "timm_spec", "timm_status"]
