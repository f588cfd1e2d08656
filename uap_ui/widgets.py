"""Widgets shared by the pages: model picker, image source picker, hyperparameter form, image grid, histogram.

Every widget has a stable key; the settings of the Generate form persist across page switches
(``persist_state="session"``). Errors a user can cause are shown with ``st.error`` and never as a traceback.
"""

from __future__ import annotations

import html
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import streamlit as st
import torch

from uap_core.algorithms import ALGORITHMS
from uap_core.artifacts import perturbation_png
from uap_core.errors import UAPError
from uap_core.images import IMAGE_EXTENSIONS, ImageSet
from uap_core.models import ModelStatus, get_spec, load_model
from uap_core.params import describe
from uap_core.report import PerturbationReport, perturbed_pixels

from . import cache, charts, spaces
from .analysis import to_pil

STATE_LABELS = {"available": "available offline", "needs download": "needs a one-time download",
                "needs package": "needs a pip package", "needs weights file": "needs its weights file"}
DEFAULT_MODEL = "efficientnet_lite0"


# ---------------------------------------------------------------------------------------------- models
def model_picker(key: str, label: str = "Model", default: str | None = DEFAULT_MODEL,
                 persist: bool = True, help: str | None = None) -> ModelStatus:
    """A selectbox of every registry model, each labelled with whether it can be loaded offline now."""
    statuses = cache.model_statuses()
    names = [s.spec.name for s in statuses]
    by_name = {s.spec.name: s for s in statuses}
    index = names.index(default) if default in names else 0
    name = st.selectbox(
        label, names + [CUSTOM_MODEL], index=index, key=key,
        format_func=lambda n: CUSTOM_LABEL if n == CUSTOM_MODEL else
        f"{by_name[n].spec.title} — {STATE_LABELS.get(by_name[n].state, by_name[n].state)}",
        help=help or "Every model of the registry; the ones marked 'available offline' load without a network. "
                     "The last entry takes your own classifier: any timm model, or a TorchScript / torch.export "
                     "file.",
        persist_state="session" if persist else None)
    if name == CUSTOM_MODEL:
        return custom_model(f"{key}_custom", persist)
    return by_name[name]


CUSTOM_MODEL = "__custom__"
CUSTOM_LABEL = "Your own model… (timm:NAME, or a TorchScript / torch.export file)"


def custom_model(key: str, persist: bool = True) -> ModelStatus:
    """A text field for a timm model or a classifier file; the page stops with a clear message until the name
    describes a model that can be loaded (a visitor of a class server may only name files in shared folders)."""
    text = st.text_input(
        "Model name", key=key, persist_state="session" if persist else None,
        placeholder="timm:convnext_tiny   or   file:/path/net.pt?size=224&mean=0.485/0.456/0.406&std=0.229/0.224/0.225",
        help="`timm:NAME` — any timm model, with timm's own preprocessing (weights from its hub when online, or "
             "from timm's cache). `file:PATH?size=S&mean=a/b/c&std=a/b/c` — a TorchScript (torch.jit.save) or "
             "torch.export (.pt2) classifier taking RGB images in [0, 1] normalised by mean/std at S×S pixels; "
             "add `&labels=imagenet` or `&labels=cifar10` for class names.").strip()
    if not text:
        st.info("Type a model name to use your own classifier.", icon=":material/edit:")
        st.stop()
    try:
        spaces.check_model_name(text)  # a file: model, alone or inside an ensemble
        status = cache.custom_model_status(text)
    except UAPError as exc:
        st.error(f"This model cannot be used: {exc}", icon=":material/error:")
        st.stop()
    return status


def ensemble_picker(key: str, status: ModelStatus, algorithm: str, persist: bool = True) -> list[str]:
    """Further surrogate models to fit the same δ against (the SGA paper's ensemble setting): the available models
    with the chosen model's labels and input size. Returns their names (empty: the chosen model alone)."""
    spec = status.spec
    candidates = [s.spec.name for s in cache.model_statuses() if s.available and s.spec.name != spec.name
                  and s.spec.dataset == spec.dataset and s.spec.input_size == spec.input_size]
    supported = ALGORITHMS[algorithm].supports_ensemble
    chosen = st.multiselect(
        "Ensemble: also fit against", candidates, key=f"{key}_{spec.name}", disabled=not supported or not candidates,
        persist_state="session" if persist else None, placeholder="the chosen model alone",
        help="One δ against several models at once: the loss is the mean of each model's loss (each against its "
             "own clean prediction). Only models with the same labels and input size are offered"
             + ("" if supported else f"; {algorithm} fits one model at a time") + ".")
    return list(chosen) if supported else []


def model_ready(status: ModelStatus, key: str) -> bool:
    """True when the model can be loaded; otherwise an error with the how-to (and, for torchvision weights, a
    button that downloads them once, for machines with a network)."""
    if status.available:
        return True
    spec = status.spec
    st.error(f"**{spec.title}** is not available offline ({status.state}): {status.detail}. "
             f"Pick a model marked 'available offline', or get its weights first "
             f"(`python -m uap_core list-models --download {spec.name}` on a machine with a network).",
             icon=":material/cloud_off:")
    if status.state == "needs download":
        if st.button(f"Download the weights of {spec.name} now (needs a network)", key=f"{key}_download"):
            try:
                with st.spinner(f"Downloading {spec.weights_file}…"):
                    load_model(spec.name, "cpu", download=True)
                cache.model_statuses.clear()
                st.rerun()
            except UAPError as exc:
                st.error(str(exc))
    return False


def load_model_or_error(name: str, device: str = "auto"):
    """The cached model, or None after showing the error in the page."""
    try:
        return cache.model(name, device)
    except UAPError as exc:
        st.error(str(exc), icon=":material/error:")
        return None


def device_picker(key: str, persist: bool = True) -> str:
    """auto / cpu / cuda (cuda only offered with a GPU)."""
    options = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return st.selectbox("Device", options, key=key, persist_state="session" if persist else None,
                        help="auto = the GPU when there is one, else the CPU.")


def device_description() -> str:
    """The device 'auto' picks, in words."""
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)} (CUDA)"
    return f"CPU ({torch.get_num_threads()} threads; no CUDA GPU found)"


# ---------------------------------------------------------------------------------------------- methods
FAMILY_LABELS = {"data-driven": "Data-driven", "data-free": "Data-free", "generative": "Generative"}


def methods_in_groups() -> list[str]:
    """The registry's method names grouped by family (data-driven, data-free, generative), registry order within."""
    order = list(FAMILY_LABELS)
    return sorted(ALGORITHMS, key=lambda name: order.index(ALGORITHMS[name].family))


def method_label(name: str) -> str:
    """"Data-driven · SGA (stochastic gradient aggregation, Liu et al. 2023)": the picker's entry."""
    cls = ALGORITHMS[name]
    return f"{FAMILY_LABELS.get(cls.family, cls.family)} · {cls.title}"


def method_caption(name: str) -> str:
    """One line of what the method does, and its paper."""
    cls = ALGORITHMS[name]
    return " — ".join(part for part in (cls.summary, cls.paper and f"*{cls.paper}*") if part)


def method_fields(name: str) -> list[dict[str, Any]]:
    return describe(ALGORITHMS[name].Params)


# ---------------------------------------------------------------------------------------------- images
@dataclass
class ImageChoice:
    """What the user picked: kind "samples" | "folder" | "upload" | "npz", with its source path or uploads."""

    kind: str
    source: str | None = None
    uploads: list[tuple[str, bytes]] | None = None
    uploaded: bool = False  # the source is a stored upload (not a path the user typed)
    error: str | None = None  # why the choice cannot be used (e.g. an upload over the size limit)

    @property
    def describe(self) -> str:
        if self.kind == "samples":
            return "the embedded sample images"
        if self.kind == "upload":
            return f"{len(self.uploads or [])} uploaded file(s)"
        return str(self.source)


SAMPLES_CHOICE = ImageChoice("samples", "samples")
IMAGE_KINDS = {"samples": "Embedded samples", "folder": "A folder on this machine", "upload": "Upload images",
               "npz": "CIFAR-style .npz"}


def image_source_picker(prefix: str, persist: bool = True, kinds: tuple[str, ...] = tuple(IMAGE_KINDS)) -> ImageChoice:
    """Radio of image sources plus the path field or uploader of the chosen one. On a class server a visitor
    reads only the folders the owner shares (none by default: no folder option then) and uploads at most
    ``spaces.upload_limit_mb()`` at once."""
    keep = "session" if persist else None
    access = spaces.folder_access()
    if access.none:
        kinds = tuple(k for k in kinds if k != "folder")
    limit_mb = spaces.upload_limit_mb()
    kind = st.radio("Images", list(kinds), format_func=IMAGE_KINDS.get, key=f"{prefix}_images_kind",
                    horizontal=True, persist_state=keep,
                    help="Embedded samples: 20 labelled ImageNet photos + 5 scikit-image photos, offline. Half are "
                         "used to fit δ, the other half to measure it (held out).")
    if kind == "samples":
        return ImageChoice("samples", "samples")
    if kind == "folder":
        path = st.text_input("Folder path", key=f"{prefix}_folder", persist_state=keep,
                             placeholder="/path/to/images (class sub-folders or <wnid>_*.JPEG names give labels)",
                             help=f"Readable from this page: {access.describe()}.")
        return ImageChoice("folder", path.strip() or None)
    if kind == "npz":
        path = "" if access.none else st.text_input(
            ".npz path", key=f"{prefix}_npz_path", persist_state=keep,
            placeholder="/path/to/cifar10-test.npz (arrays x: N×32×32×3 uint8, y: N labels)",
            help=f"Readable from this page: {access.describe()}.")
        upload = st.file_uploader("…or upload a .npz" if not access.none else "Upload a .npz", type=["npz"],
                                  key=f"{prefix}_npz_upload", max_upload_size=max(1, int(limit_mb)))
        if upload is not None:
            data = upload.getvalue()
            try:
                spaces.check_upload(len(data))
            except UAPError as exc:
                st.error(str(exc), icon=":material/error:")
                return ImageChoice("npz", error=str(exc))
            return ImageChoice("npz", cache.npz_upload_path(upload.name, data), uploaded=True)
        return ImageChoice("npz", path.strip() or None)
    files = st.file_uploader("Image files", type=None, accept_multiple_files=True, key=f"{prefix}_uploads",
                             max_upload_size=max(1, int(limit_mb)),
                             help=f"JPEG, PNG, WebP or BMP; at least 2 for a run (one to fit, one held out); at most "
                                  f"{limit_mb:g} MB " + ("per file." if spaces.is_owner() else "in all."))
    uploads = [(f.name, f.getvalue()) for f in files or []]
    try:
        spaces.check_upload(sum(len(data) for _, data in uploads))
    except UAPError as exc:
        st.error(str(exc), icon=":material/error:")
        return ImageChoice("upload", uploads=[], error=str(exc))
    return ImageChoice("upload", uploads=uploads)


def check_image_choice(choice: ImageChoice) -> None:
    """Raise a UAPError (shown by the page) when the choice cannot be used by this session: an upload over the
    limit, or a path outside the folders a visitor may read."""
    from uap_core.errors import ImageSourceError

    if choice.error:
        raise ImageSourceError(choice.error)
    if choice.kind in ("folder", "npz") and choice.source and not choice.uploaded:
        spaces.check_path(choice.source)


def load_image_choice(choice: ImageChoice, model_name: str, input_size: int | None = None,
                      limit: int | None = None) -> ImageSet:
    """Decode the chosen images for a model (cached). Raises UAPError with a message for the page."""
    from uap_core.errors import ImageSourceError

    check_image_choice(choice)
    if choice.kind == "upload":
        if not choice.uploads:
            raise ImageSourceError("no files uploaded yet: upload at least two images ("
                                   + ", ".join(IMAGE_EXTENSIONS) + ")")
        images = cache.uploaded_images(choice.uploads, model_name, input_size)
        return images.subset(range(min(limit, len(images)))) if limit else images
    if not choice.source:
        raise ImageSourceError("enter a path first" if choice.kind == "folder" else "enter or upload a .npz first")
    return cache.images(choice.source, model_name, input_size, limit)


def image_key(choice: ImageChoice, model_name: str, input_size: int | None = None, limit: int | None = None) -> str:
    """A string that identifies the decoded images (for caching what is computed from them)."""
    if choice.kind == "upload":
        what = "upload:" + cache.upload_digest(choice.uploads or [])
    else:
        what = f"{choice.kind}:{choice.source}:{cache.folder_stamp(choice.source or '')}"
    return f"{what}|{model_name}|{input_size}|{limit}"


def show_skipped(images: ImageSet) -> None:
    """A warning listing the files that could not be decoded (the rest are used)."""
    if images.skipped:
        lines = "\n".join(f"- `{s.name}`: {s.reason}" for s in images.skipped[:10])
        more = f"\n- … and {len(images.skipped) - 10} more" if len(images.skipped) > 10 else ""
        st.warning(f"{len(images.skipped)} file(s) skipped (not usable images):\n{lines}{more}",
                   icon=":material/warning:")


# ---------------------------------------------------------------------------------------------- algorithm form
def eps_input(prefix: str, norm: str, persist: bool = True) -> float:
    """eps entered as n/255 (L∞ default 10, the papers'; L2 default 2000, the UAP paper's at 224 px)."""
    default = 10.0 if norm == "linf" else 2000.0
    return st.number_input(
        "eps (n / 255)", min_value=0.1, max_value=255.0 if norm == "linf" else 255_000.0, value=default, step=1.0,
        format="%g", key=f"{prefix}_eps_{norm}", persist_state="session" if persist else None,
        help="The budget: each pixel may move by at most n/255 (L∞), or the whole perturbation has Euclidean "
             "norm n/255 (L2). 10/255 is the standard L∞ budget on ImageNet.")


def algorithm_params(algorithm: str, eps_255: float, prefix: str, persist: bool = True) -> dict[str, Any]:
    """A form of the algorithm's hyperparameters with the paper defaults and help texts (from ``describe``).

    Returns the values that differ from the defaults (step size in pixel units)."""
    keep = "session" if persist else None
    values: dict[str, Any] = {}
    fields = describe(ALGORITHMS[algorithm].Params)
    columns = st.columns(3)
    for i, field in enumerate(fields):
        name, default, label = field["name"], field["default"], field["label"].capitalize()
        key = f"{prefix}_{algorithm}_{name}"
        with columns[i % 3]:
            if name == "step_size":
                implied = round(0.1 * eps_255, 6)
                chosen = st.number_input(
                    "Step size (n / 255)", min_value=1e-4, max_value=max(255.0, implied), value=implied, step=0.1,
                    format="%g",
                    key=f"{key}_{eps_255:g}", persist_state=keep,
                    help=f"{field['help']} Default 0.1·eps = {implied:g}/255 at eps {eps_255:g}/255.")
                if abs(chosen - implied) > 1e-9:
                    values[name] = chosen / 255
            elif field["choices"]:
                options = list(field["choices"])
                chosen = st.selectbox(label, options, index=options.index(default), key=key, help=field["help"],
                                      persist_state=keep)
                if chosen != default:
                    values[name] = chosen
            elif field["type"] == "int":
                chosen = st.number_input(label, min_value=int(field["min"]) if field["min"] is not None else None,
                                         max_value=int(field["max"]) if field["max"] is not None else None,
                                         value=None if default is None else int(default), step=1, key=key,
                                         help=field["help"], persist_state=keep, placeholder="default")
                if chosen is not None and chosen != default:
                    values[name] = int(chosen)
            else:
                chosen = st.number_input(label, min_value=float(field["min"]) if field["min"] is not None else None,
                                         max_value=float(field["max"]) if field["max"] is not None else None,
                                         value=None if default is None else float(default), step=0.01,
                                         format="%g", key=key, help=field["help"], persist_state=keep,
                                         placeholder="default")
                if chosen is not None and chosen != default:
                    values[name] = float(chosen)
    return values


def settings_form(settings_class: type, prefix: str, columns: int = 4, keys: dict[str, str] | None = None,
                  defaults: dict[str, Any] | None = None, persist: bool = True) -> dict[str, Any]:
    """One input per setting that ``settings_class`` declares for a form (``param(form=True)``, see
    uap_core.params), in declaration order, in rows of ``columns``. ``keys`` / ``defaults``: a setting's widget key
    / shown default instead of ``{prefix}_{name}`` / the declared one. Returns name → value."""
    specs = [spec for spec in describe(settings_class) if spec["form"]]
    keys, defaults = keys or {}, defaults or {}
    values: dict[str, Any] = {}
    for start in range(0, len(specs), columns):
        for column, spec in zip(st.columns(columns), specs[start:start + columns]):
            with column:
                name = spec["name"]
                values[name] = setting_input(spec, keys.get(name, f"{prefix}_{name}"),
                                             defaults.get(name, spec["default"]), persist)
    return values


def setting_input(spec: dict[str, Any], key: str, default: Any, persist: bool = True) -> Any:
    """The input of one declared setting (a ``describe`` entry): a select box for choices (their
    ``choice_labels``), a check box for a bool, a text field for text (empty: None), else a number input; an
    optional number (None allowed) shows None as 0 and returns None for 0."""
    keep = "session" if persist else None
    label = spec["label"][:1].upper() + spec["label"][1:]
    if spec["choices"]:
        options = list(spec["choices"])
        shown = spec["choice_labels"] or {}
        return st.selectbox(label, options, index=options.index(default), key=key, help=spec["hint"],
                            format_func=lambda option: shown.get(option, str(option)), persist_state=keep)
    if spec["type"] == "bool":
        return st.checkbox(label, value=bool(default), key=key, help=spec["hint"], persist_state=keep)
    if spec["type"] not in ("int", "float"):
        return st.text_input(label, value="" if default is None else str(default), key=key, help=spec["hint"],
                             persist_state=keep).strip() or None
    whole = spec["type"] == "int"
    number = int if whole else float
    low = 0 if spec["optional"] or spec["min"] is None else spec["min"]
    high = spec["max"]
    step = spec["step"] or (1 if whole else 0.1)
    chosen = st.number_input(label, min_value=number(low), max_value=None if high is None else number(high),
                             value=number(default or 0), step=number(step), format="%d" if whole else "%g", key=key,
                             help=spec["hint"], persist_state=keep)
    chosen = number(chosen)
    return (chosen or None) if spec["optional"] else chosen


def target_picker(key: str, model_name: str, enabled: bool, persist: bool = True) -> int | None:
    """Optional target class (None = untargeted: any wrong label counts)."""
    names = get_spec(model_name).class_names
    options: list[int | None] = [None, *range(len(names))]
    choice = st.selectbox("Target class (optional)", options, key=f"{key}_{model_name}", disabled=not enabled,
                          format_func=lambda i: "— none (untargeted) —" if i is None else f"{i}: {names[i]}",
                          persist_state="session" if persist else None,
                          help="Targeted: push every image to this class. Untargeted: any label change counts."
                          + ("" if enabled else " (this algorithm is untargeted only)"))
    return choice if enabled else None


# ---------------------------------------------------------------------------------------------- pictures
_PNG_CACHE: "OrderedDict[int, tuple[torch.Tensor, int, bytes, float]]" = OrderedDict()
_PNG_LOCK = threading.Lock()
PNG_CACHE_SIZE = 32


def delta_png(delta: torch.Tensor) -> tuple[bytes, float]:
    """``perturbation_png`` of δ, remembered for the same tensor: a live δ shown by many pages (a shared run, each
    page redrawing every few seconds) is encoded once per version, not once per redraw (about 0.1 s each on a CPU:
    the noise-like pattern compresses slowly)."""
    with _PNG_LOCK:
        hit = _PNG_CACHE.get(id(delta))
        if hit is not None and hit[0] is delta and hit[1] == delta._version:
            _PNG_CACHE.move_to_end(id(delta))
            return hit[2], hit[3]
    png, scale = perturbation_png(delta.detach().float().cpu())
    with _PNG_LOCK:
        _PNG_CACHE[id(delta)] = (delta, delta._version, png, scale)  # holding δ keeps its id from being reused
        while len(_PNG_CACHE) > PNG_CACHE_SIZE:
            _PNG_CACHE.popitem(last=False)
    return png, scale


def perturbation_image(delta: torch.Tensor, caption: str | None = None, width: int | str = "stretch") -> float:
    """Show δ amplified so its largest entry reaches black/white (grey = 0). Returns the amplification."""
    png, scale = delta_png(delta)
    linf = float(delta.abs().max()) * 255
    text = caption or f"δ amplified ×{scale:.1f} (grey = 0), max |δ| = {linf:.1f}/255"
    st.image(png, caption=text, output_format="PNG", width=width)
    return scale


def _caption(label: str, confidence: float) -> str:
    return f"{label} ({confidence:.0%})"


def prediction_grid(images: ImageSet, report: PerturbationReport, count: int = 8, fooled_first: bool = True,
                    columns: int = 4, only_fooled: bool = False) -> None:
    """Pairs of clean / perturbed pictures with top-1 label and confidence before and after; fooled ones marked."""
    rows = list(report.predictions)
    if only_fooled:
        rows = [p for p in rows if p.fooled]
    if fooled_first:
        rows.sort(key=lambda p: (not p.fooled, p.index))
    rows = rows[:count]
    if not rows:
        st.info("No image to show" + (" (none is fooled at this strength)." if only_fooled else "."))
        return
    pictures = _pair_pngs(images, report.delta, [p.index for p in rows])
    grid = st.columns(columns)
    for slot, (p, (a, b)) in enumerate(zip(rows, pictures)):
        with grid[slot % columns]:
            with st.container(border=True):
                mark = ":red[**fooled**]" if p.fooled else ":green[not fooled]"
                st.markdown(f"{mark} · `{html.escape(p.name.split('/')[-1])}`")
                left, right = st.columns(2)
                left.image(a, caption="clean: " + _caption(p.clean_name, p.clean_confidence),
                           output_format="PNG", width="stretch")
                right.image(b, caption="perturbed: " + _caption(p.perturbed_name, p.perturbed_confidence),
                            output_format="PNG", width="stretch")


_PAIRS: "OrderedDict[tuple, tuple]" = OrderedDict()
PAIRS_KEPT = 16


def _pair_pngs(images: ImageSet, delta: torch.Tensor, indices: list[int]) -> list[tuple[bytes, bytes]]:
    """Clean / perturbed PNGs of some images, encoded once for the same images and δ (the pages that watched one
    shared run all draw the same pairs when it ends: 20 pages at once must not encode 240 PNGs)."""
    key = (id(images.pixels), id(delta), delta._version, tuple(indices))
    with _PNG_LOCK:
        hit = _PAIRS.get(key)
        if hit is not None and hit[0] is images.pixels and hit[1] is delta:
            _PAIRS.move_to_end(key)
            return hit[2]
    clean = images.pixels[torch.tensor(indices)]
    perturbed = perturbed_pixels(clean, delta)
    pictures = [(_png_bytes(a), _png_bytes(b)) for a, b in zip(clean, perturbed)]
    with _PNG_LOCK:
        _PAIRS[key] = (images.pixels, delta, pictures)  # holding both keeps their ids from being reused
        while len(_PAIRS) > PAIRS_KEPT:
            _PAIRS.popitem(last=False)
    return pictures


def _png_bytes(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def histogram_chart(histogram: dict[str, Any], key: str, title: str = "Dominant labels under the perturbation",
                    height: int = 320) -> None:
    st.plotly_chart(charts.histogram_figure(histogram, title=title, height=height), key=key, width="stretch")


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"
