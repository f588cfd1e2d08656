"""What a study needs before it starts: its models, how many images, and what must be downloaded first.

:func:`study_needs` answers from a built :class:`~uap_core.studies.Study` (its settings checked) without opening a
URL or decoding an image: each model's :func:`~uap_core.models.model_status` (the CIFAR-10 ResNets' weights file
and its size when it must be downloaded), the number of images the settings split the source into
(:meth:`Study.images_required`) against the number the source holds (a folder's or ``.npz``'s count, the 25
embedded samples, the 10,000 CIFAR-10 test images), and whether ``cifar10-test`` is cached or a 170 MB download.
:func:`fetch_needs` then downloads what is missing, reporting bytes through a callback (the Studies page's
``st.progress``, the terminal's tqdm): everything through :mod:`uap_core.download` (checksum, resume, retries, no
partial file left). Offline it raises a one-line :class:`~uap_core.download.DownloadError`, and nothing fetched
before is lost (each file lands whole in the cache or not at all).

    needs = study_needs(get_study("images_needed")(settings={"fit_sizes": [10, 100]}))
    print("\\n".join(needs.lines()))   # model cifar_resnet20: weights download 1.1 MB (once) …
    if needs.ready: fetch_needs(needs, progress=lambda what, done, total: ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..datasets import CIFAR10_TEST
from ..download import CIFAR10_BINARY, Remote
from ..errors import UAPError
from .base import Study

CIFAR10_TEST_IMAGES = 10_000  # the CIFAR-10 test set's images

# (what is downloaded, bytes done, bytes in all): one callback for every file fetched
FetchProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Need:
    """One thing a study needs. kind: "model" | "images"; state: "ready" | "download" (fetched on start) |
    "missing" (cannot start: text says why and what to do); text: one line for a person; download: the pinned
    file fetched before the start (None: nothing, or a library that fetches its own, e.g. torchvision)."""

    kind: str
    name: str
    state: str
    text: str
    download: Remote | None = None


@dataclass
class StudyNeeds:
    """Everything a study needs; ``images``: how many images its settings split the source into."""

    study: str
    images: int
    items: list[Need] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """True when nothing is missing (downloads may still be due: :attr:`downloads`)."""
        return not any(item.state == "missing" for item in self.items)

    @property
    def downloads(self) -> list[Need]:
        return [item for item in self.items if item.state == "download"]

    @property
    def download_bytes(self) -> int:
        """Bytes to fetch before the start (the pinned files only; torchvision's own downloads are not counted)."""
        return sum(item.download.size or 0 for item in self.downloads if item.download is not None)

    def problems(self) -> list[str]:
        return [item.text for item in self.items if item.state == "missing"]

    def lines(self) -> list[str]:
        return [item.text for item in self.items]


def _model_need(name: str) -> Need:
    from ..models import model_status
    from ..models.builtin import weights_remote

    status = model_status(name)
    if status.available:
        return Need("model", name, "ready", f"model {name}: ready (offline)")
    if status.state == "needs download":
        remote = weights_remote(name)
        if remote is not None:
            return Need("model", name, "download", f"model {name}: weights {remote.name}, {remote.size_text}, "
                                                   "downloaded once on start", remote)
        return Need("model", name, "download", f"model {name}: downloaded once on start ({status.detail})")
    return Need("model", name, "missing", f"model {name}: {status.state}: {status.detail}")


def source_count(source: str, input_size: int = 32) -> int:
    """How many images ``source`` holds, listed without decoding (a folder's image files, a ``.npz``'s arrays,
    the embedded samples); ``cifar10-test``: 10,000 whether cached or not. Raises a one-line UAPError for a
    source that cannot be read."""
    if source.strip() == CIFAR10_TEST:
        return CIFAR10_TEST_IMAGES
    from ..images import open_stream

    return len(open_stream(source.strip(), input_size, input_size))


def _images_need(source: str, required: int, input_size: int) -> Need:
    from ..datasets import find_cifar10_test

    if source.strip() == CIFAR10_TEST:
        found = find_cifar10_test(CIFAR10_BINARY)
        have = f"{required:,} of the {CIFAR10_TEST_IMAGES:,} CIFAR-10 test images"
        if required > CIFAR10_TEST_IMAGES:
            return Need("images", source, "missing", f"images: {required:,} needed but the CIFAR-10 test set has "
                                                     f"{CIFAR10_TEST_IMAGES:,}: lower the counts")
        if found is not None:
            return Need("images", source, "ready", f"images: {have} (cached: {found})")
        return Need("images", source, "download", f"images: {have}: the archive {CIFAR10_BINARY.name}, "
                                                  f"{CIFAR10_BINARY.size_text}, downloaded once on start",
                    CIFAR10_BINARY)
    try:
        count = source_count(source, input_size)
    except UAPError as exc:
        return Need("images", source, "missing", f"images: {exc}")
    if count < required:
        return Need("images", source, "missing", f"images: {required:,} needed but {source.strip()} holds {count:,}: "
                                                 "lower the counts or add images")
    where = "the embedded samples" if source.strip() == "samples" else source
    return Need("images", source, "ready", f"images: {required:,} of the {count:,} in {where}")


def study_needs(study: Study) -> StudyNeeds:
    """What ``study`` (built, so its settings are checked) needs: its models, then its images. Opens no URL."""
    from ..models import get_spec

    models = study.models_used()
    needs = StudyNeeds(study.name, study.images_required())
    needs.items.extend(_model_need(name) for name in models)
    source = str(getattr(study.settings, "images", CIFAR10_TEST))
    input_size = get_spec(models[0]).input_size if models else 32
    needs.items.append(_images_need(source, needs.images, input_size))
    return needs


def fetch_needs(needs: StudyNeeds, progress: FetchProgress | None = None) -> None:
    """Download every pinned file ``needs`` lists as due (the CIFAR-10 ResNet weights, the CIFAR-10 test set),
    one after the other, calling ``progress(what, done_bytes, total_bytes)``. Raises DownloadError (one line:
    the file, where it is looked for, how to put it there) when one cannot be fetched; the others stay cached."""
    from .. import datasets
    from ..download import fetch
    from ..models.builtin import weights_dirs

    for item in needs.downloads:
        if item.download is None:
            continue  # torchvision / timm fetch their own weights when the study loads the model
        report = None if progress is None else (lambda done, total, what=item.name: progress(what, done, total))
        if item.kind == "images":
            datasets.cifar10_test_npz(progress=report)
        else:
            fetch(item.download, search_dirs=weights_dirs(), progress=report,
                  manual_hint="or set UAP_WEIGHTS_DIR to its folder, or pass --weights FILE")


__all__ = ["CIFAR10_TEST_IMAGES", "FetchProgress", "Need", "StudyNeeds", "fetch_needs", "source_count",
           "study_needs"]
