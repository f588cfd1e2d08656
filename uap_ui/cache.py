"""Cached expensive objects, shared by all sessions: models, decoded image sets, clean predictions.

``st.cache_resource`` returns the same object on every call (no copy), so switching pages never reloads a model.
Errors (a model without weights offline, a folder without images) are raised as :class:`UAPError` and not cached:
the page shows them and the next attempt tries again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from uap_core.models.ensemble import Ensemble, member_names
from uap_core.evaluation import predict_logits
from uap_core.images import ImageSet, load_images, load_uploads, model_geometry
from uap_core.models import Classifier, ModelStatus, get_spec, list_models, load_model, resolve_device
from uap_core.models import model_status as core_model_status


@st.cache_resource(ttl=30, show_spinner=False)
def model_statuses() -> list[ModelStatus]:
    """Every registry model with whether it can be loaded offline now (re-checked every 30 s)."""
    return list_models()


def model_status(name: str) -> ModelStatus:
    return next(s for s in model_statuses() if s.spec.name == name)


@st.cache_resource(ttl=30, max_entries=16, show_spinner="Looking at the model…")
def custom_model_status(name: str) -> ModelStatus:
    """The status of a user's own model (``timm:NAME``, ``file:PATH?…``), re-checked every 30 s; ParameterError /
    ModelUnavailableError for a name that cannot be a model."""
    return core_model_status(name)


@st.cache_resource(max_entries=6, show_spinner="Loading the model…")
def _model(name: str, device: str) -> Classifier:
    return load_model(name, device, download=False)


def model(name: str, device: str = "auto") -> Classifier:
    """Model ``name`` on ``device`` ("auto" = CUDA when present), in eval mode with gradients off. Never downloads:
    a model without its weights offline raises ModelUnavailableError with the how-to. "a,b" is an ensemble of the
    cached models a and b (no second copy of their weights)."""
    names = member_names(name)
    if len(names) > 1:
        get_spec(name)  # the members fit together (labels, input size), else a clear error
        return Ensemble([_model(n, str(resolve_device(device))) for n in names])
    return _model(name, str(resolve_device(device)))


def input_geometry(model_name: str, input_size: int | None = None) -> tuple[int, int]:
    """(size, resize) of the images a model takes (resize: the shorter side before the centre crop)."""
    spec = get_spec(model_name)
    return model_geometry(spec.input_size, spec.resize_size, input_size)


def folder_stamp(source: str) -> int:
    """A cheap change marker for a folder / file source (its modification time), so a changed folder reloads."""
    try:
        return Path(source).expanduser().stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_resource(max_entries=8, ttl=3600, show_spinner="Decoding images…")
def _images(source: str, model_name: str, size: int, resize: int, limit: int | None, stamp: int) -> ImageSet:
    spec = get_spec(model_name)
    return load_images(source, size, resize, list(spec.class_names), limit=limit)


def images(source: str, model_name: str, input_size: int | None = None, limit: int | None = None) -> ImageSet:
    """Images of ``source`` ("samples", a folder, a .npz or an image file) decoded for ``model_name``."""
    size, resize = input_geometry(model_name, input_size)
    stamp = 0 if source == "samples" else folder_stamp(source)
    return _images(source, model_name, size, resize, limit, stamp)


@st.cache_resource(max_entries=4, ttl=3600, show_spinner="Decoding the uploads…")
def _uploads(digest: str, model_name: str, size: int, resize: int, _files: tuple[tuple[str, bytes], ...]) -> ImageSet:
    spec = get_spec(model_name)
    return load_uploads(list(_files), size, resize, list(spec.class_names))


def upload_digest(files: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode("utf-8", "replace") + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


def uploaded_images(files: list[tuple[str, bytes]], model_name: str, input_size: int | None = None) -> ImageSet:
    """Uploaded image files decoded for ``model_name`` (files that are not images are listed as skipped)."""
    size, resize = input_geometry(model_name, input_size)
    return _uploads(upload_digest(files), model_name, size, resize, tuple(files))


def npz_upload_path(name: str, data: bytes) -> str:
    """Store an uploaded .npz in the temp folder (the core reads .npz from a path); same content → same path."""
    digest = hashlib.sha256(data).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / "uap_explorer_uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.npz"
    if not path.is_file():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path)


def upload_folder(files: list[tuple[str, bytes]]) -> str:
    """Store uploaded image files in a folder of the temp folder (a study reads its images from a source string);
    the same uploads → the same folder. File names are reduced to their last part (no path can escape it)."""
    folder = Path(tempfile.gettempdir()) / "uap_explorer_uploads" / upload_digest(files)[:24]
    if not folder.is_dir():
        staging = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
        staging.mkdir(parents=True, exist_ok=True)
        for i, (name, data) in enumerate(files):
            (staging / f"{i:05d}_{Path(name).name or 'image'}").write_bytes(data)
        try:
            staging.replace(folder)
        except OSError:  # another session stored the same uploads meanwhile
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return str(folder)


@dataclass
class CleanPredictions:
    logits: torch.Tensor  # (N, C) on the model's device


@st.cache_resource(max_entries=8, show_spinner="Classifying the clean images…")
def _clean_logits(model_name: str, device: str, image_key: str, _model: Classifier,
                  _pixels: torch.Tensor) -> CleanPredictions:
    return CleanPredictions(predict_logits(_model, _pixels))


def clean_logits(model_name: str, device: str, image_key: str, model_: Classifier,
                 pixels: torch.Tensor) -> torch.Tensor:
    """The clean logits of an image set on a model, computed once (they do not depend on δ or its strength)."""
    return _clean_logits(model_name, device, image_key, model_, pixels).logits
